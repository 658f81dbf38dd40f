# Fine-tuning, paper recipe (SPEC §4, §5): SGD momentum 0.9, cosine to zero, validation (mIoU on
# the held-out split) after every epoch, the best-validation checkpoint kept and tested
# (results.json). lr and weight decay come from the random search; the epoch count is not in
# SPEC (the paper's number is not legible in our copy) — set it per data set.
max_epochs = 30
optim_wrapper = dict(
    type="PrecisionOptimWrapper",  # bissl_dense.engine.optim: OptimWrapper for dtype=None
    dtype=None,  # mixed precision (GPUs): --cfg-options optim_wrapper.dtype=bfloat16
    optimizer=dict(type="SGD", lr=0.01, momentum=0.9, weight_decay=5e-4),
)
param_scheduler = [
    dict(type="CosineAnnealingLR", eta_min=0.0, by_epoch=True, begin=0, end=max_epochs,
         convert_to_iter_based=True),
]  # fmt: skip
train_cfg = dict(type="ResumableTrainLoop", max_epochs=max_epochs, val_interval=1)
val_cfg = dict(type="ValLoop")
test_cfg = dict(type="TestLoop")
custom_hooks = [dict(type="BestCheckpointHook", metric="mIoU", rule="greater")]
