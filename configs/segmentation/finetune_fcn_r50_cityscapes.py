# Fine-tuning FCN-16 on cityscapes, paper recipe (short side resized, flip 0.5), after pretext or
#   after
# BiSSL (the backbone file decides); the best-validation checkpoint is tested (results.json).
#   python tools/train.py configs/segmentation/finetune_fcn_r50_cityscapes.py --cfg-options \
#       model.backbone.init_cfg.checkpoint=<...>_lower_backbone_id-<id>.pth
_base_ = [
    "./_base_/models/fcn_d6_r50_d16.py",
    "./_base_/datasets/cityscapes.py",
    "./_base_/schedules/finetune.py",
    "./_base_/default_runtime.py",
]
model = dict(
    backbone=dict(init_cfg=dict(type="Pretrained", checkpoint=None)),  # pretext or BiSSL backbone
    decode_head=dict(num_classes={{_base_.num_classes}}),
)
