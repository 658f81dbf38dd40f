# Fine-tuning FCN-16 on Cityscapes in the standard SSL transfer recipe (mmselfsup / mmseg):
# 40k iterations on 512x1024 crops, batch 8 (4 GPUs x 2), SGD lr 0.01, wd 5e-4, poly 0.9, SyncBN.
#   torchrun --nproc_per_node=4 tools/train.py \
#       configs/segmentation/finetune_fcn_r50_cityscapes_40k.py \
#       --launcher pytorch --cfg-options model.backbone.init_cfg.checkpoint=<backbone>.pth
_base_ = [
    "./_base_/models/fcn_d6_r50_d16.py",
    "./_base_/datasets/cityscapes_512x1024.py",
    "./_base_/schedules/schedule_40k.py",
    "./_base_/default_runtime.py",
]
model = dict(
    data_preprocessor=dict(size=(512, 1024), size_divisor=None),
    backbone=dict(init_cfg=dict(type="Pretrained", checkpoint=None)),
    decode_head=dict(num_classes={{_base_.num_classes}}),
)
