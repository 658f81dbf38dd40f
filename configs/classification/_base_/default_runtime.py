# Runtime shared by the classification stages (head warm-up, BiSSL, fine-tuning, evaluation).
default_scope = "mmengine"
custom_imports = dict(
    imports=["bissl_dense.engine", "bissl_dense.pretext.methods", "classification"],
    allow_failed_imports=False,
)
default_hooks = dict(
    runtime_info=dict(type="RuntimeInfoHook"),
    timer=dict(type="IterTimerHook"),
    logger=dict(type="LoggerHook", interval=50),
    param_scheduler=dict(type="ParamSchedulerHook"),
    # weights-only loadable, atomically written; resume with --resume
    checkpoint=dict(type="AtomicCheckpointHook", by_epoch=False, interval=1000, max_keep_ckpts=2,
                    save_param_scheduler=True),
)
env_cfg = dict(
    cudnn_benchmark=True,
    mp_cfg=dict(mp_start_method="fork", opencv_num_threads=0),
    dist_cfg=dict(backend="nccl"),
)
visualizer = dict(
    type="Visualizer",
    vis_backends=[dict(type="LocalVisBackend"), dict(type="TensorboardVisBackend")],
)
log_processor = dict(by_epoch=False, window_size=20)
log_level = "INFO"
load_from = None
resume = False
randomness = dict(seed=0)
