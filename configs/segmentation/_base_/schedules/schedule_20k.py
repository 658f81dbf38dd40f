# The standard SSL transfer schedule for VOC aug (mmselfsup / mmseg schedule_20k): 20k iterations,
# SGD lr 0.01, momentum 0.9, weight decay 5e-4, poly decay (power 0.9, to 1e-4). Validation every
# epoch, the best-validation checkpoint tested (results.json).
max_iters = 20000
optim_wrapper = dict(
    type="PrecisionOptimWrapper",  # bissl_dense.engine.optim: OptimWrapper for dtype=None
    dtype=None,  # mixed precision (GPUs): --cfg-options optim_wrapper.dtype=bfloat16
    optimizer=dict(type="SGD", lr=0.01, momentum=0.9, weight_decay=5e-4),
)
param_scheduler = [
    dict(type="PolyLR", eta_min=1e-4, power=0.9, begin=0, end=max_iters, by_epoch=False),
]
train_cfg = dict(type="ResumableTrainLoop", max_iters=max_iters, val_interval=1)
val_cfg = dict(type="ValLoop")
test_cfg = dict(type="TestLoop")
custom_hooks = [dict(type="BestCheckpointHook", metric="mIoU", rule="greater")]
