# Runtime of the mmdet stages (BiSSL on the C4 detector). Our loops, hooks, datasets and the BiSSL
# model live in mmengine's root registries, which the mmdet scope falls back to.
default_scope = "mmdet"
custom_imports = dict(
    imports=["bissl_dense.engine", "bissl_dense.pretext.methods", "bissl_dense.mmdet_task",
             "bissl_dense.segmentation.data"],
    allow_failed_imports=False,
)  # fmt: skip
default_hooks = dict(
    runtime_info=dict(type="RuntimeInfoHook"),
    timer=dict(type="IterTimerHook"),
    logger=dict(type="LoggerHook", interval=50, log_metric_by_epoch=False),
    param_scheduler=None,
    checkpoint=dict(type="AtomicCheckpointHook", by_epoch=False, interval=560, max_keep_ckpts=2,
                    save_param_scheduler=False),
)  # fmt: skip
env_cfg = dict(
    cudnn_benchmark=False,
    mp_cfg=dict(mp_start_method="fork", opencv_num_threads=0),
    dist_cfg=dict(backend="nccl"),
)
# no fixed name: runs started in one process (tests, notebooks) each get their own visualizer
visualizer = dict(type="DetLocalVisualizer", vis_backends=[dict(type="LocalVisBackend")])
log_processor = dict(by_epoch=False, window_size=20)
log_level = "INFO"
load_from = None
resume = False
randomness = dict(seed=0)
