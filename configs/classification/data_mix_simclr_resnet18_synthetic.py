# Continued pretext training on pretext + downstream images (SPEC §6, App. B.9.3) on the
# generated data: the BiSSL config's pretext model, pretext data pooled with the downstream
# training images, the lower level's optimiser, T·N_L steps. Only the differences from the BiSSL
# config (bissl_dense/baselines/data_mix.py):
#   bissl train configs/classification/data_mix_simclr_resnet18_synthetic.py --cfg-options \
#       model.pretext.backbone_checkpoint=... model.pretext.head_checkpoint=...
_base_ = ["./bissl_simclr_resnet18_synthetic.py"]
custom_imports = dict(
    imports=["bissl_dense.engine", "bissl_dense.pretext.methods", "classification",
             "bissl_dense.baselines.data_mix"],
    allow_failed_imports=False,
)  # fmt: skip
train_cfg = dict(type="DataMixLoop", steps=None)  # steps None: T·N_L of train_cfg.bissl
optim_wrapper = dict(constructor="SingleLevelOptimWrapperConstructor")
custom_hooks = [dict(type="ExportBackboneHook", name="data_mix")]
