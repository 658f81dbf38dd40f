# BiSSL on flowers with a BYOL lower level, the published setting (SPEC §4): 8 GPUs,
# pretext batch 8 x 128 = 1024, downstream batch 8 x 32 = 256; the upper lr and weight decay are
# the head warm-up's (optim_wrapper.upper.optimizer).
#   torchrun --nproc_per_node=8 tools/train.py configs/classification/bissl_byol_resnet50_flowers.py \
#       --launcher pytorch --cfg-options model.pretext.backbone_checkpoint=... \
#       model.pretext.head_checkpoint=... model.task.head_checkpoint=<warm-up>/export/head.pth
_base_ = [
    "./_base_/models/bissl_byol_resnet50.py",
    "./_base_/datasets/flowers.py",
    "./_base_/datasets/pretext_imagenet1k.py",
    "./_base_/schedules/bissl.py",
]
model = dict(task=dict(num_classes={{_base_.num_classes}}, multilabel={{_base_.multilabel}}))
train_dataloader = dict(batch_size=32)
custom_hooks = [dict(type="ExportBiSSLHook", downstream="classification", dataset="flowers")]
