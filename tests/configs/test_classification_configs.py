"""Every classification config loads, and holds the published numbers of SPEC §4 (read from the
files, not from the rule that produced them)."""

from __future__ import annotations

from pathlib import Path

import pytest
from mmengine.config import Config

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "classification"
DATASETS = {
    "food101": 101, "cifar10": 10, "cifar100": 100, "cub200": 200, "sun397": 397, "cars": 196,
    "aircraft": 100, "voc2007": 20, "dtd": 47, "pets": 37, "caltech101": 101, "flowers": 102,
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(DATASETS))
def test_stage_configs_of_every_dataset(name: str) -> None:
    warmup = Config.fromfile(str(CONFIGS / f"warmup_resnet50_{name}.py"))
    finetune = Config.fromfile(str(CONFIGS / f"finetune_resnet50_{name}.py"))
    for config in (warmup, finetune):
        assert config.model.num_classes == DATASETS[name]
        assert config.model.multilabel == (name == "voc2007")
        assert config.model.backbone.arch == "resnet50"
        for loader in ("train_dataloader", "val_dataloader", "test_dataloader"):
            dataset = config[loader].dataset
            assert dataset.name == name and dataset.image_size == 96
        assert config.train_dataloader.dataset.transform == "train"
        assert config.test_dataloader.dataset.split == "test"
        mode = config.val_evaluator.mode
        assert mode == ("voc07_map" if name == "voc2007" else "topk")
    assert warmup.model.freeze_backbone and warmup.train_cfg.max_epochs == 20
    assert warmup.param_scheduler == []  # constant learning rate
    assert finetune.optim_wrapper.optimizer.type == "SGD"
    assert finetune.optim_wrapper.optimizer.momentum == 0.9
    assert finetune.param_scheduler[0].type == "CosineAnnealingLR"
    assert finetune.train_cfg.val_interval == 1  # validation after every epoch
    metric = "classification/mAP" if name == "voc2007" else "classification/top1"
    assert [h for h in finetune.custom_hooks if h.type == "BestCheckpointHook"][0].metric == metric
    for method in ("simclr", "byol"):
        bissl = Config.fromfile(str(CONFIGS / f"bissl_{method}_resnet50_{name}.py"))
        assert bissl.model.task.num_classes == DATASETS[name]
        assert bissl.model.pretext.type == method.upper().replace("SIMCLR", "SimCLR")
        assert bissl.train_dataloader.batch_size * 8 == 256  # upper batch 256 on 8 GPUs
        assert bissl.pretext_dataloader.batch_size * 8 == 1024  # lower batch 1024
        assert bissl.custom_hooks[0].dataset == name


def test_published_bissl_numbers() -> None:
    config = Config.fromfile(str(CONFIGS / "bissl_simclr_resnet50_pets.py"))
    bissl = config.train_cfg.bissl
    assert (bissl.alternations, bissl.lower_steps, bissl.upper_steps) == (500, 20, 8)
    assert (bissl.lam, bissl.cg_iters, bissl.damping, bissl.grad_clip_norm) == (
        0.001,
        5,
        10.0,
        10.0,
    )
    lower = config.optim_wrapper.lower.optimizer
    assert (lower.type, lower.lr, lower.weight_decay, lower.momentum, lower.trust_coefficient) == (
        "LARS", 1.0, 1e-6, 0.9, 0.001,
    )  # fmt: skip
    assert config.optim_wrapper.upper.optimizer.type == "SGD"
    augmentation = config.pretext_dataloader.dataset.augmentation
    assert (augmentation.image_size, augmentation.min_scale, augmentation.crop_mode) == (
        96, 0.5, "scale",
    )  # fmt: skip
    assert config.model.pretext.temperature == 0.5
    byol = Config.fromfile(str(CONFIGS / "bissl_byol_resnet50_pets.py")).model.pretext
    assert (byol.base_momentum, byol.momentum_schedule) == (0.9995, "constant")
