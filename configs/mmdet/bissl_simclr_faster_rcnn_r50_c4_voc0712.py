# BiSSL with a SimCLR lower level and mmdet's Faster R-CNN R50-C4 upper level on VOC07+12
# (SPEC §3-§5; published detection config: short side 196-320 px, upper batch 16, upper lr 0.015,
# weight decay 0). The upper model is validated with VOCMetric (11-point AP50); the output is θ_L.
#   torchrun --nproc_per_node=8 tools/train.py \
#       configs/mmdet/bissl_simclr_faster_rcnn_r50_c4_voc0712.py \
#       --launcher pytorch --cfg-options model.pretext.backbone_checkpoint=... \
#       model.pretext.head_checkpoint=... model.task.head_checkpoint=<warm-up checkpoint>
_base_ = [
    "./_base_/models/faster_rcnn_r50_c4.py",
    "./_base_/datasets/voc0712.py",
    "../classification/_base_/datasets/pretext_imagenet1k.py",
    "./_base_/default_runtime.py",
]
model = dict(
    _delete_=True,
    type="BiSSLModel",
    pretext=dict(type="SimCLR", backbone=dict(arch="resnet50"),
                 projector=dict(hidden_dim=256, out_dim=256, num_layers=3), temperature=0.5,
                 backbone_checkpoint=None, head_checkpoint=None),
    task=dict(type="DetectionC4Task", detector={{_base_.model}}, head_checkpoint=None),
)  # fmt: skip
model_wrapper_cfg = dict(type="BiSSLReplicas")
optim_wrapper = dict(
    constructor="BiSSLOptimWrapperConstructor",
    lower=dict(optimizer=dict(type="LARS", lr=1.0, weight_decay=1e-6, momentum=0.9,
                              trust_coefficient=0.001, exclude_1d=True)),
    upper=dict(optimizer=dict(type="SGD", lr=0.015, weight_decay=0.0, momentum=0.9)),
)  # fmt: skip
param_scheduler = None
train_cfg = dict(
    type="BiSSLLoop",
    bissl=dict(alternations=500, lower_steps=20, upper_steps=8, lam=0.001, damping=10.0,
               cg_iters=5, cg="global", hvp="exact", grad_clip_norm=10.0,
               discard_implicit_jacobian=False, residual_every=8),
    val_interval=50,
)  # fmt: skip
val_cfg = dict(type="ValLoop")
test_cfg = dict(type="TestLoop")
custom_hooks = [dict(type="ExportBiSSLHook", downstream="detection", dataset="voc0712")]
