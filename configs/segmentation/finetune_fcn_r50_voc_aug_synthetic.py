# Fine-tuning FCN-16 on the generated voc_aug data (paper recipe, small images, BatchNorm), e.g.
#   after
# bissl_simclr_fcn_r50_voc_aug_synthetic.py; also the head warm-up with --cfg-options
# model.backbone.frozen_stages=4 model.backbone.norm_eval=True.
_base_ = [
    "./_base_/models/fcn_d6_r50_d16.py",
    "./_base_/datasets/voc_aug_synthetic.py",
    "./_base_/schedules/finetune.py",
    "./_base_/default_runtime.py",
]
norm_cfg = dict(type="BN", requires_grad=True)
model = dict(
    backbone=dict(norm_cfg=norm_cfg, init_cfg=dict(type="Pretrained", checkpoint=None)),
    decode_head=dict(num_classes={{_base_.num_classes}}, norm_cfg=norm_cfg, dropout_ratio=0.0),
)
max_epochs = 2
param_scheduler = [
    dict(type="CosineAnnealingLR", eta_min=0.0, by_epoch=True, begin=0, end=max_epochs,
         convert_to_iter_based=True),
]  # fmt: skip
train_cfg = dict(max_epochs=max_epochs)
env_cfg = dict(cudnn_benchmark=False, dist_cfg=dict(backend="gloo"))
default_hooks = dict(logger=dict(interval=1), checkpoint=dict(interval=4),
                     visualization=dict(draw=False))  # fmt: skip
