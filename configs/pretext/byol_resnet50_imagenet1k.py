# Published BYOL pretext setting (SPEC §4): as SimCLR's, with projector + predictor and a
# constant target EMA rate 0.9995.
_base_ = [
    "./_base_/models/byol_resnet50.py",
    "./_base_/datasets/imagenet1k_pretext.py",
    "./_base_/schedules/lars_500e.py",
    "./_base_/default_runtime.py",
]

# Multi-GPU runs convert every BatchNorm to SyncBatchNorm, as the reference does: batch
# statistics over the whole 1024 images, not 128 per GPU (mmengine's Runner does the conversion
# when launched distributed; single-process runs keep plain BatchNorm).
sync_bn = "torch"
