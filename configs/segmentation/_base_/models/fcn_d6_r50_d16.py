# FCN-16 (SPEC §5, paper App. B.7): mmseg's fcn-d6_r50-d16 layout on mmseg's plain ResNet-50
# (torchvision parameter names, style="pytorch"; not ResNetV1c): strides (1,2,2,1), dilations
# (1,1,1,2), i.e. res5 at stride 1 with dilation 2, total stride 16; head = two 3x3 convs with
# dilation 6 and 256 channels, BN + ReLU, then a 1x1 classifier. RGB input, ImageNet mean/std.
# Kept equal to bissl_dense.segmentation.model.fcn_d6_r50_d16() (a test checks it).
norm_cfg = dict(type="SyncBN", requires_grad=True)
model = dict(
    type="EncoderDecoder",
    data_preprocessor=dict(type="SegDataPreProcessor", mean=[123.675, 116.28, 103.53],
                           std=[58.395, 57.12, 57.375], bgr_to_rgb=True, pad_val=0,
                           seg_pad_val=255, size_divisor=32),
    backbone=dict(type="ResNet", depth=50, num_stages=4, out_indices=(3,), strides=(1, 2, 2, 1),
                  dilations=(1, 1, 1, 2), style="pytorch", contract_dilation=True,
                  deep_stem=False, norm_cfg=norm_cfg, norm_eval=False, frozen_stages=-1),
    decode_head=dict(type="FCNHead", in_channels=2048, in_index=0, channels=256, num_convs=2,
                     kernel_size=3, dilation=6, concat_input=False, dropout_ratio=0.1,
                     num_classes=None, norm_cfg=norm_cfg, align_corners=False,
                     loss_decode=dict(type="CrossEntropyLoss", use_sigmoid=False, loss_weight=1.0,
                                      avg_non_ignore=True)),
    train_cfg=dict(),
    test_cfg=dict(mode="whole"),
)  # fmt: skip
