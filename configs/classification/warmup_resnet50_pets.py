# Head warm-up on pets (SPEC §4: 20 epochs, frozen backbone, constant lr; set the lr and
# weight decay found for this data set with --cfg-options optim_wrapper.optimizer.lr=...).
_base_ = [
    "./_base_/models/classifier_resnet50.py",
    "./_base_/datasets/pets.py",
    "./_base_/schedules/head_warmup_20e.py",
    "./_base_/default_runtime.py",
]
model = dict(
    num_classes={{_base_.num_classes}}, multilabel={{_base_.multilabel}}, freeze_backbone=True
)
