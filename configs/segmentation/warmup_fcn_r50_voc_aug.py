# Head warm-up of FCN-16 on voc_aug (SPEC §1 step 2): 5 epochs, frozen pretext backbone.
#   python tools/train.py configs/segmentation/warmup_fcn_r50_voc_aug.py --cfg-options \
#       model.backbone.init_cfg.checkpoint=<...>_backbone_id-<id>.pth
_base_ = [
    "./_base_/models/fcn_d6_r50_d16.py",
    "./_base_/datasets/voc_aug.py",
    "./_base_/schedules/head_warmup_5e.py",
    "./_base_/default_runtime.py",
]
model = dict(
    # the pretext backbone, frozen with its BatchNorm statistics
    backbone=dict(
        init_cfg=dict(type="Pretrained", checkpoint=None), frozen_stages=4, norm_eval=True
    ),
    decode_head=dict(num_classes={{_base_.num_classes}}),
)
