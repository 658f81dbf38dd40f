"""The published ImageNet pretext settings (SPEC §4, corrected), read from the config files.

The expected numbers are the authors' published run, written out here, not derived from the
configs' own rules: peak LARS lr 4.8 at a total batch of 1024 (8 GPUs x 128), not rescaled;
SyncBatchNorm on multi-GPU runs; 500 epochs with 10 warm-up epochs then cosine.
"""

from __future__ import annotations

import copy
from pathlib import Path
from types import SimpleNamespace

import pytest
from mmengine.config import Config
from mmengine.logging import MMLogger
from mmengine.optim import build_optim_wrapper
from mmengine.runner import Runner
from torch import nn

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "pretext"
PUBLISHED = ("simclr_resnet50_imagenet1k.py", "byol_resnet50_imagenet1k.py")
GPUS = 8


def _effective_lr(cfg: Config, gpus: int) -> float:
    """The lr the optimizer gets at ``gpus`` x batch_size: the config's optimizer built through
    its optim wrapper, then mmengine's own ``Runner.scale_lr`` with that world size."""
    import bissl_dense.engine.optim  # noqa: F401  (LARS, PrecisionOptimWrapper)

    model = nn.Linear(2, 2)
    wrapper = build_optim_wrapper(model, copy.deepcopy(cfg.optim_wrapper))
    runner = SimpleNamespace(
        _train_dataloader=cfg.train_dataloader,
        world_size=gpus,
        logger=MMLogger.get_current_instance(),
        param_schedulers=None,
    )
    Runner.scale_lr(runner, wrapper, cfg.get("auto_scale_lr"))  # type: ignore[arg-type]
    (lr,) = {group["lr"] for group in wrapper.optimizer.param_groups}
    return lr


@pytest.mark.parametrize("name", PUBLISHED)
def test_published_imagenet_settings(name: str) -> None:
    cfg = Config.fromfile(str(CONFIGS / name))
    assert GPUS * cfg.train_dataloader.batch_size == 1024
    assert _effective_lr(cfg, GPUS) == 4.8  # the reference's peak rate at 1024, not 19.2
    optimizer = cfg.optim_wrapper.optimizer
    assert optimizer.type == "LARS"
    assert (optimizer.weight_decay, optimizer.momentum, optimizer.trust_coefficient) == (
        1e-6,
        0.9,
        0.001,
    )
    assert optimizer.exclude_1d is True
    assert cfg.sync_bn == "torch"
    assert cfg.optim_wrapper.dtype is None  # float32 unless mixed precision is asked for
    warmup, cosine = cfg.param_scheduler
    assert warmup.type == "LinearLR" and (warmup.begin, warmup.end) == (0, 10)
    assert cosine.type == "CosineAnnealingLR" and (cosine.begin, cosine.end) == (10, 500)
    assert cosine.eta_min == 0.0 and warmup.by_epoch and cosine.by_epoch
    assert cfg.train_cfg.max_epochs == 500
    aug = cfg.train_dataloader.dataset.augmentation
    assert (aug.image_size, aug.min_scale, aug.crop_mode) == (96, 0.5, "scale")
    assert cfg.model.backbone.arch == "resnet50"
    assert cfg.model.projector == dict(hidden_dim=256, out_dim=256, num_layers=3)


def test_linear_scaling_is_an_explicit_option_from_the_published_point() -> None:
    cfg = Config.fromfile(str(CONFIGS / PUBLISHED[0]))
    cfg.merge_from_dict({"auto_scale_lr.enable": True, "train_dataloader.batch_size": 64})
    assert _effective_lr(cfg, GPUS) == pytest.approx(4.8 * 512 / 1024)
    assert _effective_lr(cfg, 16) == pytest.approx(4.8)  # 16 x 64 = 1024: the published rate


def test_simclr_temperature_and_byol_target_rate() -> None:
    assert Config.fromfile(str(CONFIGS / PUBLISHED[0])).model.temperature == 0.5
    byol = Config.fromfile(str(CONFIGS / PUBLISHED[1])).model
    assert (byol.base_momentum, byol.momentum_schedule) == (0.9995, "constant")
