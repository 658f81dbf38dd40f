# The published LARS schedule shortened to 20 epochs (2 warm-up), for runs on generated data.
_base_ = ["./lars_500e.py"]

max_epochs = 20
warmup_epochs = 2
param_scheduler = [
    dict(type="LinearLR", start_factor=1e-4, end_factor=1.0, by_epoch=True, begin=0,
         end=warmup_epochs, convert_to_iter_based=True),
    dict(type="CosineAnnealingLR", eta_min=0.0, by_epoch=True, begin=warmup_epochs,
         end=max_epochs, convert_to_iter_based=True),
]  # fmt: skip
train_cfg = dict(max_epochs=max_epochs)
# Small CPU runs on generated data (not a published setting) scale the lr linearly per 256
# images, as these configs always did: 4.8 * 64 / 256 = 1.2 at their batch of 64.
auto_scale_lr = dict(enable=True, base_batch_size=256)
