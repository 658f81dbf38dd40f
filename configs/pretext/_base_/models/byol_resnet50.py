# BYOL, SPEC §4: ResNet-50, projector and predictor 256-256-256, constant target EMA 0.9995.
model = dict(
    type="BYOL",
    backbone=dict(
        arch="resnet50",
        zero_init_residual=False,
        cifar_stem=False,
        channels_last=False,  # True: NHWC convolutions (faster with mixed precision on GPUs)
    ),
    projector=dict(hidden_dim=256, out_dim=256, num_layers=3),
    predictor=dict(hidden_dim=256, out_dim=256, num_layers=3),
    base_momentum=0.9995,
    momentum_schedule="constant",  # or "cosine": from base_momentum to 1 over the run
    freeze_backbone=False,  # True (with backbone_checkpoint): `bissl fit-head`
    backbone_checkpoint=None,
)
