# Weighted-sum baseline (SPEC §6, App. B.9.4) on the generated data: the BiSSL config with one
# backbone trained on (1-w)·L_P + w·L_D for T·N_U steps by the lower level's optimiser. Only the
# differences from the BiSSL config (bissl_dense/baselines/weighted_sum.py):
#   bissl train configs/classification/weighted_sum_simclr_resnet18_synthetic.py --cfg-options \
#       model.pretext.backbone_checkpoint=... model.pretext.head_checkpoint=... \
#       model.task.head_checkpoint=<warm-up work_dir>/export/head.pth
_base_ = ["./bissl_simclr_resnet18_synthetic.py"]
custom_imports = dict(
    imports=["bissl_dense.engine", "bissl_dense.pretext.methods", "classification",
             "bissl_dense.baselines.weighted_sum"],
    allow_failed_imports=False,
)  # fmt: skip
train_cfg = dict(type="WeightedSumLoop", w=0.5, steps=None)  # steps None: T·N_U of train_cfg.bissl
optim_wrapper = dict(constructor="SingleLevelOptimWrapperConstructor", include_task_head=True)
custom_hooks = [dict(type="ExportBackboneHook", name="weighted_sum")]
