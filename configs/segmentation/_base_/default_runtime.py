# Runtime shared by the segmentation stages (head warm-up, BiSSL, fine-tuning, evaluation) on
# mmseg. Our loops, hooks, datasets and the BiSSL model live in mmengine's root registries, which
# the mmseg scope falls back to.
default_scope = "mmseg"
custom_imports = dict(
    imports=["bissl_dense.engine", "bissl_dense.pretext.methods", "bissl_dense.segmentation",
             "bissl_dense.segmentation.data", "bissl_dense.segmentation.metrics"],
    allow_failed_imports=False,
)  # fmt: skip
default_hooks = dict(
    runtime_info=dict(type="RuntimeInfoHook"),
    timer=dict(type="IterTimerHook"),
    logger=dict(type="LoggerHook", interval=50, log_metric_by_epoch=False),
    param_scheduler=dict(type="ParamSchedulerHook"),
    # weights-only loadable, atomically written; resume with --resume
    checkpoint=dict(type="AtomicCheckpointHook", by_epoch=False, interval=2000, max_keep_ckpts=2,
                    save_param_scheduler=True),
    visualization=dict(type="SegVisualizationHook"),
)  # fmt: skip
env_cfg = dict(
    cudnn_benchmark=True,
    mp_cfg=dict(mp_start_method="fork", opencv_num_threads=0),
    dist_cfg=dict(backend="nccl"),
)
vis_backends = [dict(type="LocalVisBackend")]
# no fixed name: runs started in one process (tests, notebooks) each get their own visualizer
visualizer = dict(type="SegLocalVisualizer", vis_backends=vis_backends)
log_processor = dict(by_epoch=False, window_size=20)
log_level = "INFO"
load_from = None
resume = False
randomness = dict(seed=0)
