"""Pretext methods (one per file, on :class:`PretextMethod`), registered in mmengine's MODELS."""

from __future__ import annotations

from bissl_dense.pretext.methods.base import PretextMethod, split_views
from bissl_dense.pretext.methods.byol import BYOL, target_momentum
from bissl_dense.pretext.methods.simclr import SimCLR

__all__ = ["BYOL", "PretextMethod", "SimCLR", "split_views", "target_momentum"]
