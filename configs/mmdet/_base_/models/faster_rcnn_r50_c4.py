# Faster R-CNN R50-C4 on mmdet (SPEC §5): mmdet's faster-rcnn_r50-caffe-c4 with a torchvision-style
# ResNet-50 (style="pytorch", RGB input with ImageNet mean/std): res2-res4 in the backbone, res5
# in roi_head.shared_head.layer4 followed by global pooling; anchors 32-512 px (stride 16 x
# scales 2-32), aspect ratios 0.5/1/2. Nothing frozen, trainable (Sync)BN. The caffe init_cfg of
# the base is removed: res2-res5 come from our backbone (BiSSL: the pretext backbone; fine-tuning:
# `bissl export BACKBONE --to mmdet`, loaded with prefix="backbone." by both parts).
_base_ = ["mmdet::_base_/models/faster-rcnn_r50-caffe-c4.py"]
norm_cfg = dict(type="SyncBN", requires_grad=True)
model = dict(
    data_preprocessor=dict(mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375],
                           bgr_to_rgb=True),
    backbone=dict(frozen_stages=-1, norm_cfg=norm_cfg, norm_eval=False, style="pytorch",
                  init_cfg=None),
    roi_head=dict(
        shared_head=dict(style="pytorch", norm_cfg=norm_cfg, norm_eval=False, init_cfg=None),
        bbox_head=dict(num_classes=20),
    ),
)  # fmt: skip
