# SimCLR with ResNet-18 on generated 32 px images: a few minutes on 2 CPU cores.
#   python -m bissl_dense.datasets.synthetic --out data/synthetic/unlabeled --kind unlabeled \
#       --n 512 --size 48
#   bissl pretrain configs/pretext/simclr_resnet18_synthetic.py
_base_ = [
    "./_base_/models/simclr_resnet50.py",
    "./_base_/datasets/synthetic_pretext.py",
    "./_base_/schedules/lars_20e.py",
    "./_base_/default_runtime.py",
]

model = dict(backbone=dict(arch="resnet18"))
env_cfg = dict(cudnn_benchmark=False, dist_cfg=dict(backend="gloo"))
default_hooks = dict(logger=dict(interval=10), checkpoint=dict(interval=50))
