# BiSSL on aircraft with a SimCLR lower level, the published setting (SPEC §4): 8 GPUs,
# pretext batch 8 x 128 = 1024, downstream batch 8 x 32 = 256. Warm the head up first with
# warmup_simclr_resnet50_aircraft.py (the same lr and weight decay as the upper level here).
#   torchrun --nproc_per_node=8 tools/train.py \
#       configs/classification/bissl_simclr_resnet50_aircraft.py \
#       --launcher pytorch --cfg-options model.pretext.backbone_checkpoint=... \
#       model.pretext.head_checkpoint=... \
#       model.task.head_checkpoint=work_dirs/warmup_simclr_resnet50_aircraft/export/head.pth
_base_ = [
    "./_base_/models/bissl_simclr_resnet50.py",
    "./_base_/datasets/aircraft.py",
    "./_base_/datasets/pretext_imagenet1k.py",
    "./_base_/schedules/bissl.py",
]
model = dict(task=dict(num_classes={{_base_.num_classes}}, multilabel={{_base_.multilabel}}))
train_dataloader = dict(batch_size=32)
custom_hooks = [dict(type="ExportBiSSLHook", downstream="classification", dataset="aircraft")]
# Upper level (and head warm-up): the published lr and weight decay for aircraft with SimCLR,
# d_lr / d_wd of BiSSL_simclr_classification_aircrafts_arch-resnet50_config_id-lseiyad6.json
# (models/ of the authors' repository NIPS25-16372/NIPS25_16372_BiSSL).
optim_wrapper = dict(upper=dict(optimizer=dict(lr=0.03, weight_decay=0.005)))
