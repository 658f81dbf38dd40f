# BiSSL (SimCLR lower level) on the generated data, ResNet-18 at 32 px, a short schedule:
#   bissl train configs/classification/bissl_simclr_resnet18_synthetic.py --cfg-options \
#       model.pretext.backbone_checkpoint=<...>_backbone_id-<id>.pth \
#       model.pretext.head_checkpoint=<...>_head_id-<id>.pth \
#       model.task.head_checkpoint=<warm-up work_dir>/export/head.pth
_base_ = [
    "./_base_/models/bissl_simclr_resnet50.py",
    "./_base_/datasets/imagefolder_synthetic.py",
    "./_base_/datasets/pretext_synthetic.py",
    "./_base_/schedules/bissl.py",
]
model = dict(
    pretext=dict(backbone=dict(arch="resnet18")),
    task=dict(
        num_classes={{_base_.num_classes}},
        multilabel={{_base_.multilabel}},
        backbone=dict(arch="resnet18"),
    ),
)
train_cfg = dict(
    bissl=dict(alternations=10, lower_steps=4, upper_steps=2, residual_every=2), val_interval=5
)
env_cfg = dict(cudnn_benchmark=False, dist_cfg=dict(backend="gloo"))
default_hooks = dict(logger=dict(interval=6), checkpoint=dict(interval=12))
custom_hooks = [dict(type="ExportBiSSLHook", downstream="classification", dataset="synthetic")]
