# Head warm-up (SPEC §1 step 2, §4): only the FCN head on the frozen backbone (the configs set
# backbone.frozen_stages=4 and norm_eval=True), 5 epochs at a constant learning rate. BiSSL's
#   upper level
# reuses this lr and weight decay, and its checkpoint's decode_head.* (model.task.head_checkpoint).
optim_wrapper = dict(
    type="PrecisionOptimWrapper",  # bissl_dense.engine.optim: OptimWrapper for dtype=None
    dtype=None,  # mixed precision (GPUs): --cfg-options optim_wrapper.dtype=bfloat16
    optimizer=dict(type="SGD", lr=0.01, momentum=0.9, weight_decay=5e-4),
)
param_scheduler = []
train_cfg = dict(type="ResumableTrainLoop", max_epochs=5, val_interval=5)
val_cfg = dict(type="ValLoop")
test_cfg = dict(type="TestLoop")
