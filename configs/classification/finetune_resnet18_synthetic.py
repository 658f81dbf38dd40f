# Fine-tuning on the generated data (after pretext or after BiSSL: the backbone file decides):
#   bissl train configs/classification/finetune_resnet18_synthetic.py \
#       --cfg-options model.backbone_checkpoint=<...>_lower_backbone_id-<id>.pth
_base_ = [
    "./_base_/models/classifier_resnet50.py",
    "./_base_/datasets/imagefolder_synthetic.py",
    "./_base_/schedules/finetune.py",
    "./_base_/default_runtime.py",
]
model = dict(
    num_classes={{_base_.num_classes}},
    multilabel={{_base_.multilabel}},
    backbone=dict(arch="resnet18"),
)
max_epochs = 5
param_scheduler = [
    dict(type="CosineAnnealingLR", eta_min=0.0, by_epoch=True, begin=0, end=max_epochs,
         convert_to_iter_based=True),
]  # fmt: skip
train_cfg = dict(max_epochs=max_epochs)
env_cfg = dict(cudnn_benchmark=False, dist_cfg=dict(backend="gloo"))
default_hooks = dict(logger=dict(interval=5), checkpoint=dict(interval=20))
