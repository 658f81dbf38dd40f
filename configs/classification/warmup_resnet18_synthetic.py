# Head warm-up on the generated ImageFolder data, ResNet-18 at 32 px (minutes on 2 CPU cores):
#   bissl train configs/classification/warmup_resnet18_synthetic.py \
#       --cfg-options model.backbone_checkpoint=<pretext export>/Pretext_simclr_arch-resnet18_backbone_id-<id>.pth
_base_ = [
    "./_base_/models/classifier_resnet50.py",
    "./_base_/datasets/imagefolder_synthetic.py",
    "./_base_/schedules/head_warmup_20e.py",
    "./_base_/default_runtime.py",
]
model = dict(
    num_classes={{_base_.num_classes}},
    multilabel={{_base_.multilabel}},
    backbone=dict(arch="resnet18"),
    freeze_backbone=True,
)
train_cfg = dict(max_epochs=5)
env_cfg = dict(cudnn_benchmark=False, dist_cfg=dict(backend="gloo"))
default_hooks = dict(logger=dict(interval=5), checkpoint=dict(interval=20))
