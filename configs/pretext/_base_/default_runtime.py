# Runtime shared by the pretext configs: mmengine's root registries, our step-counting loop's
# hooks, TensorBoard logging, atomic weights-only checkpoints, export in the published format.
default_scope = "mmengine"
custom_imports = dict(
    imports=["bissl_dense.engine", "bissl_dense.pretext.methods"], allow_failed_imports=False
)

default_hooks = dict(
    runtime_info=dict(type="RuntimeInfoHook"),
    timer=dict(type="IterTimerHook"),
    logger=dict(type="LoggerHook", interval=50),
    param_scheduler=dict(type="ParamSchedulerHook"),
    # Saved every `interval` steps and at the end; resume with `bissl pretrain ... --resume`.
    checkpoint=dict(type="AtomicCheckpointHook", by_epoch=False, interval=2000, max_keep_ckpts=2),
    sampler_seed=dict(type="DistSamplerSeedHook"),
)
custom_hooks = [
    dict(type="PretextStepHook"),  # BYOL's EMA target update after every optimizer step
    dict(type="ExportPretextHook", out_subdir="export"),  # <work_dir>/export/Pretext_*
]

env_cfg = dict(
    cudnn_benchmark=True,
    mp_cfg=dict(mp_start_method="fork", opencv_num_threads=0),
    dist_cfg=dict(backend="nccl"),
)
visualizer = dict(
    type="Visualizer",
    vis_backends=[dict(type="LocalVisBackend"), dict(type="TensorboardVisBackend")],
)
log_processor = dict(by_epoch=False, window_size=50)
log_level = "INFO"
load_from = None
resume = False
# A fixed seed makes data order, augmentations and initialisation reproducible (and resumable).
randomness = dict(seed=0)
