# SPEC §4: LARS, base lr 4.8 per 256 images (lr = 4.8 * total_batch / 256, applied by
# auto_scale_lr from the real total batch = GPUs x batch_size), weight decay 1e-6, momentum 0.9,
# trust coefficient 0.001, biases/norm parameters excluded; 10 warm-up epochs, then cosine.
# Both schedulers step per iteration (convert_to_iter_based=True).
max_epochs = 500
warmup_epochs = 10

optim_wrapper = dict(
    type="OptimWrapper",
    optimizer=dict(
        type="LARS",
        lr=4.8,
        momentum=0.9,
        weight_decay=1e-6,
        trust_coefficient=0.001,
        exclude_1d=True,
    ),
)
auto_scale_lr = dict(enable=True, base_batch_size=256)
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
