"""ResNet backbones with torchvision parameter names (SPEC §4).

The backbone is torchvision's ResNet with ``fc`` replaced by ``nn.Identity()``, so its output is
the globally pooled feature vector and its state-dict keys (``conv1.weight``,
``layer4.2.bn3.weight``, ...) are exactly torchvision's, which are also timm's ResNet names and
the names in the published BiSSL weight files. Weights are randomly initialised; pretrained
weights are loaded with :mod:`bissl_dense.pretext.weights`.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import torch
from torch import nn
from torchvision import models

__all__ = ["SUPPORTED_ARCHS", "build_backbone", "canonical_arch"]

_BUILDERS: dict[str, Callable[..., models.ResNet]] = {
    "resnet18": models.resnet18,
    "resnet34": models.resnet34,
    "resnet50": models.resnet50,
    "resnet101": models.resnet101,
}
SUPPORTED_ARCHS: tuple[str, ...] = tuple(_BUILDERS)


def canonical_arch(arch: str) -> str:
    """Map torchvision and timm spellings to ``resnet{18,34,50,101}``.

    Accepted aliases: ``timm/resnet50``, ``tv_resnet50``, ``resnet50.a1_in1k`` (a timm pretrained
    tag), any capitalisation. timm variants with other stems (``resnet50d``...) are refused
    because their parameter names differ.
    """
    name = arch.strip().lower()
    name = name.removeprefix("timm/").removeprefix("tv_")
    name = name.split(".", 1)[0]  # timm pretrained tag: resnet50.a1_in1k -> resnet50
    if name not in _BUILDERS:
        hint = ""
        if re.fullmatch(r"resnet\d+\w+", name):
            hint = " (timm variants with a different stem or blocks have other parameter names)"
        raise ValueError(
            f"Unsupported backbone arch {arch!r}{hint}; choose one of {list(SUPPORTED_ARCHS)}."
        )
    return name


def build_backbone(
    arch: str = "resnet50",
    zero_init_residual: bool = False,
    cifar_stem: bool = False,
    channels_last: bool = False,
) -> tuple[nn.Module, int]:
    """A randomly initialised torchvision ResNet without classifier, and its feature dimension.

    Args:
        arch: ``resnet18``, ``resnet34``, ``resnet50`` or ``resnet101`` (aliases: see
            :func:`canonical_arch`).
        zero_init_residual: zero the last BatchNorm of each residual block (torchvision option).
        cifar_stem: for small images (32-64 px): a 3x3 stride-1 ``conv1`` and no max-pool. The
            parameter names are unchanged, only ``conv1.weight``'s shape differs.
        channels_last: store the convolution weights in NHWC memory format, so convolutions run
            channels-last (tensor cores' native layout; inputs follow the weights' format).
    """
    name = canonical_arch(arch)
    model = _BUILDERS[name](weights=None, zero_init_residual=zero_init_residual)
    feature_dim = model.fc.in_features
    if cifar_stem:
        model.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
        nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")
        model.maxpool = nn.Identity()
    model.fc = nn.Identity()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model, feature_dim
