# As bissl_simclr_fcn.py with a BYOL lower level (SPEC §4: projector + predictor 256-256-256,
# constant target EMA 0.9995 after every lower step).
_base_ = ["./bissl_simclr_fcn.py"]
model = dict(
    pretext=dict(
        _delete_=True,
        type="BYOL",
        backbone=dict(arch="resnet50", channels_last=False),  # True: NHWC (GPUs, autocast)
        projector=dict(hidden_dim=256, out_dim=256, num_layers=3),
        predictor=dict(hidden_dim=256, out_dim=256, num_layers=3),
        base_momentum=0.9995,
        momentum_schedule="constant",
        backbone_checkpoint=None,
        head_checkpoint=None,  # holds projector.* and predictor.*
    )
)
