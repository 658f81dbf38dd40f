"""Registers the pretext optimizer (LARS, SPEC §4) and a precision-selecting optimizer wrapper.

Configs then write ``optim_wrapper=dict(optimizer=dict(type="LARS", lr=..., ...))``; mmengine's
default constructor passes ``params=model.parameters()`` and LARS itself excludes 1-D
parameters (biases, norm weights) from adaptation and weight decay (``exclude_1d=True``).

``optim_wrapper=dict(type="PrecisionOptimWrapper", dtype=None | "bfloat16" | "float16", ...)``
selects float32 (mmengine's ``OptimWrapper``) or autocast mixed precision (its
``AmpOptimWrapper``, GPU only) with one overridable key:
``--cfg-options optim_wrapper.dtype=bfloat16``. The weights and LARS stay float32 either way.
"""

from __future__ import annotations

from typing import Any

from mmengine.optim import AmpOptimWrapper, OptimWrapper
from mmengine.registry import OPTIM_WRAPPERS, OPTIMIZERS

from bissl_dense.pretext.lars import LARS

if "LARS" not in OPTIMIZERS.module_dict:
    OPTIMIZERS.register_module(name="LARS", module=LARS)


def PrecisionOptimWrapper(dtype: str | None = None, **kwargs: Any) -> OptimWrapper:  # noqa: N802
    """``OptimWrapper`` for ``dtype=None`` (float32), else ``AmpOptimWrapper(dtype=dtype)``."""
    if dtype is None:
        return OptimWrapper(**kwargs)
    if dtype not in ("bfloat16", "float16"):
        from bissl_dense.errors import ConfigError

        raise ConfigError(
            f"optim_wrapper.dtype must be None (float32), 'bfloat16' or 'float16', got {dtype!r}"
        )
    return AmpOptimWrapper(dtype=dtype, **kwargs)


if "PrecisionOptimWrapper" not in OPTIM_WRAPPERS.module_dict:
    OPTIM_WRAPPERS.register_module(name="PrecisionOptimWrapper", module=PrecisionOptimWrapper)

__all__ = ["LARS", "PrecisionOptimWrapper"]
