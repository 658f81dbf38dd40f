# BiSSL with a BYOL lower level on the generated data (see bissl_simclr_resnet18_synthetic.py).
_base_ = ["./bissl_simclr_resnet18_synthetic.py"]
model = dict(
    pretext=dict(
        _delete_=True,
        type="BYOL",
        backbone=dict(arch="resnet18"),
        projector=dict(hidden_dim=256, out_dim=256, num_layers=3),
        predictor=dict(hidden_dim=256, out_dim=256, num_layers=3),
        base_momentum=0.99,  # short run: the target follows faster than the published 0.9995
        momentum_schedule="constant",
        backbone_checkpoint=None,
        head_checkpoint=None,
    )
)
