# Fine-tuning on cub200 (SPEC §4), after pretext or after BiSSL (model.backbone_checkpoint);
# lr and weight decay from the random search.
_base_ = [
    "./_base_/models/classifier_resnet50.py",
    "./_base_/datasets/cub200.py",
    "./_base_/schedules/finetune.py",
    "./_base_/default_runtime.py",
]
model = dict(num_classes={{_base_.num_classes}}, multilabel={{_base_.multilabel}})
