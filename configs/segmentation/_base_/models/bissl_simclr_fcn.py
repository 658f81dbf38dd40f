# BiSSL's two levels for segmentation (SPEC §2, §5): lower = SimCLR (θ_L + projector φ_P), upper =
# FCN-16 on mmseg (θ_U = backbone.*, φ_D = decode_head.*). θ_U starts as a copy of the pretext
# backbone (the correspondence backbone.<name> <-> <name> is checked at start); φ_D comes from
# the head warm-up's checkpoint.
_base_ = ["./fcn_d6_r50_d16.py"]
model = dict(
    _delete_=True,
    type="BiSSLModel",
    pretext=dict(
        type="SimCLR",
        backbone=dict(arch="resnet50", channels_last=False),  # True: NHWC (GPUs, autocast)
        projector=dict(hidden_dim=256, out_dim=256, num_layers=3),
        temperature=0.5,
        backbone_checkpoint=None,  # Pretext_simclr_arch-resnet50_backbone_id-<id>.pth
        head_checkpoint=None,  # Pretext_simclr_arch-resnet50_head_id-<id>.pth
    ),
    task=dict(
        type="SegmentationTask",
        segmentor={{_base_.model}},
        head_checkpoint=None,  # <warm-up work_dir>/iter_<n>.pth (decode_head.* is taken)
    ),
)
model_wrapper_cfg = dict(type="BiSSLReplicas")
