# Head warm-up on flowers (SPEC §4: 20 epochs, frozen backbone, constant lr). Its lr and weight
# decay are the schedule's generic 0.03 / 1e-4; before BiSSL use the published pair of the
# pretext (this file + lr, wd): warmup_simclr_resnet50_flowers.py or
# warmup_byol_resnet50_flowers.py.
_base_ = [
    "./_base_/models/classifier_resnet50.py",
    "./_base_/datasets/flowers.py",
    "./_base_/schedules/head_warmup_20e.py",
    "./_base_/default_runtime.py",
]
model = dict(
    num_classes={{_base_.num_classes}}, multilabel={{_base_.multilabel}}, freeze_backbone=True
)
