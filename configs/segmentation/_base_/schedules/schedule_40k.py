# The standard SSL transfer schedule for Cityscapes (mmselfsup / mmseg schedule_40k): 40k
# iterations, otherwise as schedule_20k.py; validation every 10 epochs.
_base_ = ["./schedule_20k.py"]
max_iters = 40000
param_scheduler = [
    dict(type="PolyLR", eta_min=1e-4, power=0.9, begin=0, end=max_iters, by_epoch=False),
]
train_cfg = dict(max_iters=max_iters, val_interval=10)
