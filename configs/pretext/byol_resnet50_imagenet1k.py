# Published BYOL pretext setting (SPEC §4): as SimCLR's, with projector + predictor and a
# constant target EMA rate 0.9995.
_base_ = [
    "./_base_/models/byol_resnet50.py",
    "./_base_/datasets/imagenet1k_pretext.py",
    "./_base_/schedules/lars_500e.py",
    "./_base_/default_runtime.py",
]
