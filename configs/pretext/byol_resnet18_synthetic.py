# BYOL with ResNet-18 on generated 32 px images: a few minutes on 2 CPU cores. The run is
# short, so the target follows the online network faster than the published constant 0.9995:
# BYOL's cosine schedule from 0.99 to 1.
_base_ = [
    "./_base_/models/byol_resnet50.py",
    "./_base_/datasets/synthetic_pretext.py",
    "./_base_/schedules/lars_20e.py",
    "./_base_/default_runtime.py",
]

model = dict(backbone=dict(arch="resnet18"), base_momentum=0.99, momentum_schedule="cosine")
env_cfg = dict(cudnn_benchmark=False, dist_cfg=dict(backend="gloo"))
default_hooks = dict(logger=dict(interval=10), checkpoint=dict(interval=50))
