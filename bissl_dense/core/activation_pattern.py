"""Freeze a network's activation pattern so that finite differences of its gradient are accurate.

A ReLU network's loss is only piecewise smooth: autograd's Hessian-vector product is the Hessian
of the smooth piece that contains θ (the second derivative of ReLU is taken as 0). A forward
difference of gradients, (∇L(θ + εv) − ∇L(θ)) / ε, instead crosses kinks: every unit whose
pre-activation changes sign adds a gradient jump that does not shrink with ε. In float32 ε cannot
be made small enough for no unit of a ResNet to flip (measured on ResNet-18: a relative error of
10–1000 for every ε from 1e-6 to 1e-2; float64 needs ε ≤ 1e-5).

``ActivationPattern`` records, during the forward pass at θ, the mask of every ``relu`` and the
arg-max indices of every max-pooling, in call order, and replays them during the forward pass at
θ + εv: there ``relu(x)`` becomes ``x · mask`` and max-pooling gathers at the recorded indices.
The perturbed loss is then the smooth piece at θ, and its gradient difference converges to the
autograd Hessian-vector product. Interception is generic (a ``TorchFunctionMode``), so it works
for any model whose non-smooth operations are these; smooth activations need nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.overrides import TorchFunctionMode

__all__ = ["ActivationPattern"]

_RELU: set[Callable[..., Any]] = {
    F.relu,
    F.relu_,
    torch.relu,
    torch.relu_,
    Tensor.relu,
    Tensor.relu_,
}
_MAX_POOL_2D: set[Callable[..., Any]] = {F.max_pool2d, torch.max_pool2d}


def _max_pool_args(args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
    names = ("input", "kernel_size", "stride", "padding", "dilation", "ceil_mode", "return_indices")
    bound = dict(zip(names[: len(args)], args, strict=True))
    bound.update(kwargs)
    return bound


class ActivationPattern(TorchFunctionMode):
    """Record (``mode="record"``) or replay (``mode="replay"``) ReLU masks and max-pool indices."""

    def __init__(self) -> None:
        super().__init__()
        self.masks: list[Tensor] = []
        self.mode = "record"
        self._cursor = 0

    def recording(self) -> ActivationPattern:
        self.masks, self.mode = [], "record"
        return self

    def replaying(self) -> ActivationPattern:
        self.mode, self._cursor = "replay", 0
        return self

    def __exit__(self, *exc: object) -> None:
        super().__exit__(*exc)
        if self.mode == "replay" and exc[0] is None and self._cursor != len(self.masks):
            raise RuntimeError(
                f"the replayed forward pass made {self._cursor} ReLU/max-pool calls but the "
                f"recorded one {len(self.masks)}: the loss function's control flow must not "
                "depend on θ"
            )

    def _next(self, like: Tensor) -> Tensor:
        if self._cursor >= len(self.masks):
            raise RuntimeError(
                "the replayed forward pass made more ReLU/max-pool calls than the recorded one "
                f"({len(self.masks)}): the loss function's control flow must not depend on θ"
            )
        saved = self.masks[self._cursor]
        self._cursor += 1
        if saved.shape[0] != like.shape[0]:
            raise RuntimeError(
                f"recorded activation of shape {tuple(saved.shape)} replayed on {tuple(like.shape)}"
            )
        return saved

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        kwargs = kwargs or {}
        if func in _RELU:
            x = args[0]
            inplace = func in (F.relu_, torch.relu_, Tensor.relu_) or kwargs.get(
                "inplace", len(args) > 1 and args[1]
            )
            if self.mode == "record":
                self.masks.append(x > 0)
                return func(*args, **kwargs)
            mask = self._next(x)
            return x.mul_(mask) if inplace else x * mask
        if func in _MAX_POOL_2D:
            bound = _max_pool_args(args, kwargs)
            if bound.get("return_indices", False):
                return func(*args, **kwargs)  # the caller handles indices itself: leave it alone
            x = bound.pop("input")
            bound.pop("return_indices", None)
            if self.mode == "record":
                out, indices = F.max_pool2d_with_indices(x, **bound)
                self.masks.append(indices)
                return out
            indices = self._next(x)
            gathered = x.flatten(2).gather(2, indices.flatten(2))
            return gathered.view(indices.shape)
        return func(*args, **kwargs)
