"""Pretext (SimCLR / BYOL) building blocks: losses, heads, augmentations, LARS, backbones, weights.

These blocks are framework agnostic (plain PyTorch/torchvision); the mmengine training loop is
built on top of them in :mod:`bissl_dense.engine`.
"""

from __future__ import annotations

from bissl_dense.pretext.backbones import SUPPORTED_ARCHS, build_backbone, canonical_arch
from bissl_dense.pretext.heads import PredictionHead, ProjectionHead
from bissl_dense.pretext.lars import LARS, build_lars, lars_param_groups
from bissl_dense.pretext.losses import BYOLLoss, NTXentLoss, byol_loss, nt_xent_loss
from bissl_dense.pretext.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    PretextAugmentation,
    eval_transform,
    pretext_view_transform,
)
from bissl_dense.pretext.weights import (
    IncompatibleBackboneKeys,
    bissl_file_names,
    export_pretext,
    load_backbone_into,
    load_backbone_state,
    load_pretext_head,
    pretext_file_names,
    read_pretext_config,
    split_head_state,
)

__all__ = [
    "BYOLLoss",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "IncompatibleBackboneKeys",
    "LARS",
    "NTXentLoss",
    "PredictionHead",
    "PretextAugmentation",
    "ProjectionHead",
    "SUPPORTED_ARCHS",
    "bissl_file_names",
    "build_backbone",
    "build_lars",
    "byol_loss",
    "canonical_arch",
    "eval_transform",
    "export_pretext",
    "lars_param_groups",
    "load_backbone_into",
    "load_backbone_state",
    "load_pretext_head",
    "nt_xent_loss",
    "pretext_file_names",
    "pretext_view_transform",
    "read_pretext_config",
    "split_head_state",
]
