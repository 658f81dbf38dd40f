# BiSSL (SimCLR lower level) on the generated cityscapes data with small images, one CPU process
#   or a
# few (BatchNorm instead of SyncBN; no dropout, so that runs on 1 and 2 processes compare
# exactly). See _base_/datasets/cityscapes_synthetic.py for the data commands.
_base_ = [
    "./_base_/models/bissl_simclr_fcn.py",
    "./_base_/datasets/cityscapes_synthetic.py",
    "../classification/_base_/datasets/pretext_synthetic.py",
    "./_base_/schedules/bissl.py",  # includes the runtime
]
_bn = dict(type="BN", requires_grad=True)
model = dict(
    task=dict(
        segmentor=dict(
            backbone=dict(norm_cfg=_bn),
            decode_head=dict(num_classes={{_base_.num_classes}}, norm_cfg=_bn, dropout_ratio=0.0),
        )
    )
)
pretext_dataloader = dict(batch_size=4, num_workers=0)
train_cfg = dict(bissl=dict(alternations=2, lower_steps=1, upper_steps=2, cg_iters=1,
                            residual_every=1), val_interval=2)  # fmt: skip
env_cfg = dict(cudnn_benchmark=False, dist_cfg=dict(backend="gloo"))
default_hooks = dict(logger=dict(interval=1), checkpoint=dict(interval=3),
                     visualization=dict(draw=False))  # fmt: skip
custom_hooks = [dict(type="ExportBiSSLHook", downstream="segmentation", dataset="cityscapes")]
