# BiSSL on cars with a BYOL lower level, the published setting (SPEC §4): 8 GPUs,
# pretext batch 8 x 128 = 1024, downstream batch 8 x 32 = 256. Warm the head up first with
# warmup_byol_resnet50_cars.py (the same lr and weight decay as the upper level here).
#   torchrun --nproc_per_node=8 tools/train.py \
#       configs/classification/bissl_byol_resnet50_cars.py \
#       --launcher pytorch --cfg-options model.pretext.backbone_checkpoint=... \
#       model.pretext.head_checkpoint=... \
#       model.task.head_checkpoint=work_dirs/warmup_byol_resnet50_cars/export/head.pth
_base_ = [
    "./_base_/models/bissl_byol_resnet50.py",
    "./_base_/datasets/cars.py",
    "./_base_/datasets/pretext_imagenet1k.py",
    "./_base_/schedules/bissl.py",
]
model = dict(task=dict(num_classes={{_base_.num_classes}}, multilabel={{_base_.multilabel}}))
train_dataloader = dict(batch_size=32)
custom_hooks = [dict(type="ExportBiSSLHook", downstream="classification", dataset="cars")]
# Upper level (and head warm-up): the published lr and weight decay for cars with BYOL,
# d_lr / d_wd of BiSSL_byol_classification_cars_arch-resnet50_config_id-x94znlbw.json
# (models/ of the authors' repository NIPS25-16372/NIPS25_16372_BiSSL).
optim_wrapper = dict(upper=dict(optimizer=dict(lr=0.04, weight_decay=0.002)))
