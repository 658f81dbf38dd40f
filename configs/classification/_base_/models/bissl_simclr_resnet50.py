# BiSSL's two levels (SPEC §2): lower = SimCLR (θ_L + projector φ_P), upper = the classifier
# (θ_U + head φ_D). θ_U starts as a copy of the pretext backbone; φ_D from the head warm-up.
model = dict(
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
        type="ImageClassificationTask",
        num_classes=None,
        multilabel=False,
        backbone=dict(arch="resnet50", channels_last=False),  # True: NHWC (GPUs, autocast)
        head_checkpoint=None,  # <warm-up work_dir>/export/head.pth
    ),
)
model_wrapper_cfg = dict(type="BiSSLReplicas")
