# Fine-tuning FCN-16 on VOC aug in the standard SSL transfer recipe (mmselfsup / mmseg):
# 20k iterations at 512x512, batch 16 (4 GPUs x 4), SGD lr 0.01, wd 5e-4, poly 0.9, SyncBN.
#   torchrun --nproc_per_node=4 tools/train.py \
#       configs/segmentation/finetune_fcn_r50_voc_aug_20k.py \
#       --launcher pytorch --cfg-options model.backbone.init_cfg.checkpoint=<backbone>.pth
_base_ = [
    "./_base_/models/fcn_d6_r50_d16.py",
    "./_base_/datasets/voc_aug_512x512.py",
    "./_base_/schedules/schedule_20k.py",
    "./_base_/default_runtime.py",
]
model = dict(
    data_preprocessor=dict(size=(512, 512), size_divisor=None),
    backbone=dict(init_cfg=dict(type="Pretrained", checkpoint=None)),
    decode_head=dict(num_classes={{_base_.num_classes}}),
)
