"""Small real models for the stage tests: ResNet-18 (CIFAR stem) on 16 px images, 3 classes."""

from __future__ import annotations

import torch
from torch import Tensor

from bissl_dense.core import BiSSLConfig
from bissl_dense.pretext.methods import BYOL, PretextMethod, SimCLR
from bissl_dense.stage import DownstreamTask, build_bilevel_step
from classification.task import image_classification_task

BACKBONE = dict(arch="resnet18", cifar_stem=True)
SMALL_HEAD = dict(hidden_dim=32, out_dim=16, num_layers=2)


def make_pretext(method: str = "simclr", **kwargs) -> PretextMethod:
    if method == "byol":
        return BYOL(backbone=BACKBONE, projector=SMALL_HEAD, predictor=SMALL_HEAD, **kwargs)
    return SimCLR(backbone=BACKBONE, projector=SMALL_HEAD, **kwargs)


def make_task(pretext: PretextMethod) -> DownstreamTask:
    return image_classification_task(pretext.backbone, num_classes=3, backbone=BACKBONE)


def views(n: int = 8, seed: int = 0) -> dict[str, list[Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return {
        "inputs": [torch.randn(n, 3, 16, 16, generator=g), torch.randn(n, 3, 16, 16, generator=g)]
    }


def labelled(n: int = 8, seed: int = 1) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 16, 16, generator=g), torch.randint(0, 3, (n,), generator=g)


def make_step(method: str = "simclr", config: BiSSLConfig | None = None, **pretext_kwargs):
    pretext = make_pretext(method, **pretext_kwargs)
    task = make_task(pretext)
    config = config or BiSSLConfig(alternations=2, lower_steps=2, upper_steps=2, cg_iters=2)
    step = build_bilevel_step(
        task, pretext, config, upper_lr=0.05, upper_weight_decay=1e-4, lower_lr=1.0
    )
    return pretext, task, step
