# BiSSL on cityscapes with a SIMCLR lower level (SPEC §3-§5); the output is the lower backbone θ_L
# (<work_dir>/export/BiSSL_simclr_segmentation_cityscapes_arch-resnet50_lower_backbone_id-<id>.pth).
# 8 GPUs: pretext batch 8 x 128 = 1024, downstream batch 8 x 2 = 16.
#   torchrun --nproc_per_node=8 tools/train.py \
#       configs/segmentation/bissl_simclr_fcn_r50_cityscapes.py \
#       --launcher pytorch --cfg-options model.pretext.backbone_checkpoint=... \
#       model.pretext.head_checkpoint=... model.task.head_checkpoint=<warm-up work_dir>/iter_<n>.pth
_base_ = [
    "./_base_/models/bissl_simclr_fcn.py",
    "./_base_/datasets/cityscapes.py",
    "../classification/_base_/datasets/pretext_imagenet1k.py",
    "./_base_/schedules/bissl.py",  # includes the runtime
]
model = dict(task=dict(segmentor=dict(decode_head=dict(num_classes={{_base_.num_classes}}))))
train_dataloader = dict(batch_size=2)
custom_hooks = [dict(type="ExportBiSSLHook", downstream="segmentation", dataset="cityscapes")]
