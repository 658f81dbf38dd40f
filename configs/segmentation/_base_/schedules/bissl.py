# BiSSL (SPEC §3, §4) for segmentation: T = 500 alternations of N_L = 20 lower and N_U = 8 upper
# steps; λ = 0.001, K = 5 CG iterations with damping δ = 10; gradients clipped to norm 10 per
# level. Lower: LARS lr 1.0, wd 1e-6, momentum 0.9, trust 0.001 (warm-up over 10·N_L steps, then
# cosine); upper: SGD at the head warm-up's lr and weight decay (head_warmup_5e.py), cosine over
# T·N_U steps. The schedules are BiSSL's own (per level): no param_scheduler. Includes the
# runtime, whose checkpoint hook must not save mmengine schedulers here.
_base_ = ["../default_runtime.py"]
optim_wrapper = dict(
    constructor="BiSSLOptimWrapperConstructor",
    lower=dict(optimizer=dict(type="LARS", lr=1.0, weight_decay=1e-6, momentum=0.9,
                              trust_coefficient=0.001, exclude_1d=True)),
    upper=dict(optimizer=dict(type="SGD", lr=0.01, weight_decay=5e-4, momentum=0.9)),
)  # fmt: skip
param_scheduler = None
train_cfg = dict(
    type="BiSSLLoop",
    bissl=dict(
        alternations=500,
        lower_steps=20,
        upper_steps=8,
        lam=0.001,
        damping=10.0,
        cg_iters=5,
        cg="global",
        hvp="exact",
        grad_clip_norm=10.0,
        discard_implicit_jacobian=False,
        residual_every=8,  # one extra Hessian-vector product every 8 upper steps
        # Mixed precision of both levels' loss forward passes (GPUs): None (float32), "bfloat16"
        # or "float16" (one GradScaler per level); the implicit-gradient products, weights and
        # optimiser states stay float32. Turn it on, with NHWC backbones:
        #   --cfg-options train_cfg.bissl.autocast=bfloat16
        #       model.pretext.backbone.channels_last=True
        autocast=None,
    ),
    val_interval=50,  # validate the upper model (mIoU) every 50 alternations and at the end
)
val_cfg = dict(type="ValLoop")
test_cfg = dict(type="TestLoop")
default_hooks = dict(
    param_scheduler=None,
    checkpoint=dict(interval=560, save_param_scheduler=False),  # every 20 alternations
)
