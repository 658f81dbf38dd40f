# Published SimCLR pretext setting (SPEC §4): ResNet-50, 96 px, min scale 0.5, batch 1024
# (8 GPUs x 128), 500 epochs, LARS peak lr 4.8 at that batch (not rescaled), wd 1e-6, temp. 0.5,
# 10 warm-up epochs. Everything else is in the bases.
#   torchrun --nproc_per_node=8 tools/pretrain.py configs/pretext/simclr_resnet50_imagenet1k.py \
#       --launcher pytorch --cfg-options train_dataloader.dataset.data_root=/data/imagenet/train
_base_ = [
    "./_base_/models/simclr_resnet50.py",
    "./_base_/datasets/imagenet1k_pretext.py",
    "./_base_/schedules/lars_500e.py",
    "./_base_/default_runtime.py",
]

# Multi-GPU runs convert every BatchNorm to SyncBatchNorm, as the reference does: batch
# statistics over the whole 1024 images, not 128 per GPU (mmengine's Runner does the conversion
# when launched distributed; single-process runs keep plain BatchNorm).
sync_bn = "torch"
