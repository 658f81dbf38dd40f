"""Registers the pretext optimizer (LARS, SPEC §4) with mmengine's ``OPTIMIZERS`` registry.

Configs then write ``optim_wrapper=dict(optimizer=dict(type="LARS", lr=..., ...))``; mmengine's
default constructor passes ``params=model.parameters()`` and LARS itself excludes 1-D
parameters (biases, norm weights) from adaptation and weight decay (``exclude_1d=True``).
"""

from __future__ import annotations

from mmengine.registry import OPTIMIZERS

from bissl_dense.pretext.lars import LARS

if "LARS" not in OPTIMIZERS.module_dict:
    OPTIMIZERS.register_module(name="LARS", module=LARS)

__all__ = ["LARS"]
