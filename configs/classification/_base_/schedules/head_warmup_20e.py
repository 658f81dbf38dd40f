# Head warm-up (SPEC §1 step 2, §4): only the linear head on the frozen backbone, 20 epochs at a
# constant learning rate. The paper tunes lr and weight decay per data set (its Table 6); BiSSL's
# upper level reuses them (train_cfg of the BiSSL configs).
optim_wrapper = dict(
    type="PrecisionOptimWrapper",  # bissl_dense.engine.optim: OptimWrapper for dtype=None
    dtype=None,  # mixed precision (GPUs): --cfg-options optim_wrapper.dtype=bfloat16
    optimizer=dict(type="SGD", lr=0.03, momentum=0.9, weight_decay=1e-4),
)
param_scheduler = []
train_cfg = dict(type="ResumableTrainLoop", max_epochs=20, val_interval=1)
val_cfg = dict(type="ValLoop")
test_cfg = dict(type="TestLoop")
custom_hooks = [dict(type="ExportHeadHook", out_subdir="export")]
