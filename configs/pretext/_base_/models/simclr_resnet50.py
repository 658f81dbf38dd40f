# SimCLR, SPEC §4: ResNet-50, projector 3 layers 256-256-256, NT-Xent temperature 0.5.
model = dict(
    type="SimCLR",
    backbone=dict(
        arch="resnet50",
        zero_init_residual=False,
        cifar_stem=False,
        channels_last=False,  # True: NHWC convolutions (faster with mixed precision on GPUs)
    ),
    projector=dict(hidden_dim=256, out_dim=256, num_layers=3),
    temperature=0.5,
    gather_distributed=True,  # negatives from every GPU's batch
    freeze_backbone=False,  # True (with backbone_checkpoint): `bissl fit-head`
    backbone_checkpoint=None,
)
