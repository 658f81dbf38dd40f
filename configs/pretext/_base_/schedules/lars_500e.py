# SPEC §4 (corrected): LARS with peak lr 4.8 at the published total batch of 1024 (8 GPUs x 128);
# the reference does not rescale it by batch/256. Weight decay 1e-6, momentum 0.9, trust
# coefficient 0.001, biases/norm parameters excluded; 10 warm-up epochs, then cosine to 0.
# Both schedulers step per iteration (convert_to_iter_based=True).
#
# Another total batch: opt into linear scaling from the published point with
#   --cfg-options auto_scale_lr.enable=True      (lr = 4.8 * GPUs * batch_size / 1024)
# Mixed precision on GPUs (bf16 autocast; LARS and the weights stay float32), and channels-last:
#   --cfg-options optim_wrapper.dtype=bfloat16 model.backbone.channels_last=True
max_epochs = 500
warmup_epochs = 10

optim_wrapper = dict(
    type="PrecisionOptimWrapper",  # bissl_dense.engine.optim
    dtype=None,  # None: float32; "bfloat16" or "float16": autocast mixed precision (GPU only)
    optimizer=dict(
        type="LARS",
        lr=4.8,
        momentum=0.9,
        weight_decay=1e-6,
        trust_coefficient=0.001,
        exclude_1d=True,
    ),
)
auto_scale_lr = dict(enable=False, base_batch_size=1024)
param_scheduler = [
    dict(
        type="LinearLR",
        start_factor=1e-4,
        end_factor=1.0,
        by_epoch=True,
        begin=0,
        end=warmup_epochs,
        convert_to_iter_based=True,
    ),
    dict(
        type="CosineAnnealingLR",
        eta_min=0.0,
        by_epoch=True,
        begin=warmup_epochs,
        end=max_epochs,
        convert_to_iter_based=True,
    ),
]
# Step-counting loop: resumes mid-epoch at the exact step (bissl_dense.engine.loops).
train_cfg = dict(type="ResumableTrainLoop", max_epochs=max_epochs, max_iters=None)
