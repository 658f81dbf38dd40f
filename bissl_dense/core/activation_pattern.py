"""Freeze a network's activation pattern so that finite differences of its gradient are accurate.

A ReLU network's loss is only piecewise smooth: autograd's Hessian-vector product is the Hessian
of the smooth piece that contains θ (the second derivative of ReLU is taken as 0). A forward
difference of gradients, (∇L(θ + εv) − ∇L(θ)) / ε, instead crosses kinks: every unit whose
pre-activation changes sign adds a gradient jump that does not shrink with ε. In float32 ε cannot
be made small enough for no unit of a ResNet to flip (measured on ResNet-18: a relative error of
10–1000 for every ε from 1e-6 to 1e-2; float64 needs ε ≤ 1e-5).

``ActivationPattern`` records, during the forward pass at θ, which piece every piecewise-linear
operation was on, in call order, and replays it during the forward pass at θ + εv:

* ``relu``: the mask x > 0; replayed as ``x · mask``;
* ``leaky_relu``: the same mask; replayed as ``x · (mask + slope · ~mask)``;
* ``hardtanh``/``relu6``/``clamp``/``clip``/``clamp_min``/``clamp_max``: which of (inside,
  below, above) each element was; replayed as x inside and the recorded bound outside;
* ``max_pool{1,2,3}d`` and ``adaptive_max_pool{1,2,3}d``: the arg-max indices; replayed as a
  gather at those indices.

The perturbed loss is then the smooth piece at θ, and its gradient difference converges to the
autograd Hessian-vector product. Interception is generic (a ``TorchFunctionMode``), so it works
for any model whose non-smooth operations are these; smooth activations (GELU, SiLU, tanh, ELU's
first derivative is continuous) need nothing. Non-smooth operations it cannot replay (hardswish,
hardsigmoid, abs, element-wise maximum/minimum, sign, rounding, thresholding, shrinkage, RReLU)
make the recording pass raise an error naming the operation, rather than let finite differences
be silently wrong: use ``hvp="exact"`` for such models. Randomness (dropout, drop-path) is not
this module's concern: the implicit solver replays the random number generators around every
pass (implicit.py).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.overrides import TorchFunctionMode

__all__ = ["ActivationPattern", "UnsupportedOperationError"]


class UnsupportedOperationError(RuntimeError):
    """A non-smooth operation whose activation pattern cannot be replayed."""


def _functions(*names: str, modules: tuple[Any, ...] = (F, torch, Tensor)) -> set[Any]:
    found = set()
    for module in modules:
        for name in names:
            if hasattr(module, name):
                found.add(getattr(module, name))
    return found


_RELU = _functions("relu", "relu_")
_RELU_INPLACE = _functions("relu_")
_LEAKY = _functions("leaky_relu", "leaky_relu_", modules=(F,))
_LEAKY_INPLACE = _functions("leaky_relu_", modules=(F,))
_HARDTANH = _functions("hardtanh", "hardtanh_", "relu6", modules=(F,))
_CLAMP = _functions("clamp", "clamp_", "clip", "clip_", "clamp_min", "clamp_min_", "clamp_max",
                    "clamp_max_", modules=(torch, Tensor))  # fmt: skip
_MAX_POOL = _functions("max_pool1d", "max_pool2d", "max_pool3d", modules=(F, torch))
_ADAPTIVE_MAX_POOL = _functions(
    "adaptive_max_pool1d", "adaptive_max_pool2d", "adaptive_max_pool3d", modules=(F, torch)
)
_REFUSED: dict[Any, str] = {
    f: getattr(f, "__name__", repr(f))
    for f in _functions(
        "hardswish",
        "hardsigmoid",
        "abs",
        "absolute",
        "maximum",
        "minimum",
        "fmax",
        "fmin",
        "sign",
        "sgn",
        "floor",
        "ceil",
        "round",
        "trunc",
        "threshold",
        "threshold_",
        "hardshrink",
        "softshrink",
        "rrelu",
        "rrelu_",
        "fractional_max_pool2d",
        "fractional_max_pool3d",
        "lp_pool1d",
        "lp_pool2d",
    )
}
_INSIDE, _BELOW, _ABOVE = 0, 1, 2


def _bind(names: tuple[str, ...], args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
    bound = dict(zip(names[: len(args)], args, strict=True))
    bound.update(kwargs)
    return bound


def _is_inplace(func: Callable[..., Any], inplace_set: set[Any], bound: dict[str, Any]) -> bool:
    return func in inplace_set or bool(bound.get("inplace", False))


def _clamp_bounds(func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, Any]:
    name = getattr(func, "__name__", "")
    if name.startswith("clamp_min"):
        return _bind(("input", "min"), args, kwargs).get("min"), None
    if name.startswith("clamp_max"):
        return None, _bind(("input", "max"), args, kwargs).get("max")
    bound = _bind(("input", "min", "max"), args, kwargs)
    return bound.get("min"), bound.get("max")


def _pieces(x: Tensor, low: Any, high: Any) -> Tensor:
    """0 where low < x < high (open: at a bound the derivative is taken as 0), 1 below, 2 above."""
    code = torch.zeros(x.shape, dtype=torch.int8, device=x.device)
    if low is not None:
        code = code.masked_fill(x <= low, _BELOW)
    if high is not None:
        code = code.masked_fill(x >= high, _ABOVE)
    return code


def _replay_pieces(x: Tensor, code: Tensor, low: Any, high: Any) -> Tensor:
    out = x
    for value, piece in ((low, _BELOW), (high, _ABOVE)):
        if value is not None:
            value = torch.as_tensor(value, dtype=x.dtype, device=x.device)
            out = torch.where(code == piece, value, out)
    return out


class ActivationPattern(TorchFunctionMode):
    """Record (``mode="record"``) or replay (``mode="replay"``) the activation pattern."""

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
                f"the replayed forward pass made {self._cursor} piecewise-linear calls "
                f"(ReLU/clamp/max-pool) but the recorded one {len(self.masks)}: the loss "
                "function's control flow must not depend on θ"
            )

    def _next(self, like: Tensor) -> Tensor:
        if self._cursor >= len(self.masks):
            raise RuntimeError(
                "the replayed forward pass made more piecewise-linear calls (ReLU/clamp/max-pool) "
                f"than the recorded one ({len(self.masks)}): the loss function's control flow "
                "must not depend on θ"
            )
        saved = self.masks[self._cursor]
        self._cursor += 1
        if like.dim() and saved.shape[0] != like.shape[0]:
            raise RuntimeError(
                f"recorded activation of shape {tuple(saved.shape)} replayed on {tuple(like.shape)}"
            )
        return saved

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        kwargs = kwargs or {}
        if func in _REFUSED:
            raise UnsupportedOperationError(
                f"finite-difference Hessian-vector products cannot replay the non-smooth "
                f"operation '{_REFUSED[func]}' (its kinks make gradient differences wrong by "
                "O(1)); use hvp='exact' for this model"
            )
        if func in _RELU:
            return self._relu(func, args, kwargs)
        if func in _LEAKY:
            return self._leaky_relu(func, args, kwargs)
        if func in _HARDTANH or func in _CLAMP:
            return self._clamp(func, args, kwargs)
        if func in _MAX_POOL or func in _ADAPTIVE_MAX_POOL:
            return self._max_pool(func, args, kwargs)
        return func(*args, **kwargs)

    def _relu(self, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Tensor:
        bound = _bind(("input", "inplace"), args, kwargs)
        x = bound["input"]
        if self.mode == "record":
            self.masks.append(x > 0)
            return func(*args, **kwargs)
        mask = self._next(x)
        return x.mul_(mask) if _is_inplace(func, _RELU_INPLACE, bound) else x * mask

    def _leaky_relu(self, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Tensor:
        bound = _bind(("input", "negative_slope", "inplace"), args, kwargs)
        x, slope = bound["input"], bound.get("negative_slope", 0.01)
        if self.mode == "record":
            self.masks.append(x > 0)
            return func(*args, **kwargs)
        mask = self._next(x)
        factor = mask.to(x.dtype) * (1.0 - slope) + slope  # 1 where x > 0 at θ, else the slope
        return x.mul_(factor) if _is_inplace(func, _LEAKY_INPLACE, bound) else x * factor

    def _clamp(self, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Tensor:
        name = getattr(func, "__name__", "")
        if func in _HARDTANH:
            if name == "relu6":
                bound = _bind(("input", "inplace"), args, kwargs)
                low, high = 0.0, 6.0
            else:
                bound = _bind(("input", "min_val", "max_val", "inplace"), args, kwargs)
                low, high = bound.get("min_val", -1.0), bound.get("max_val", 1.0)
            inplace = name.endswith("_") or bool(bound.get("inplace", False))
        else:
            low, high = _clamp_bounds(func, args, kwargs)
            inplace = name.endswith("_")
        x = args[0] if args else kwargs["input"]
        if self.mode == "record":
            self.masks.append(_pieces(x.detach(), _detached(low), _detached(high)))
            return func(*args, **kwargs)
        out = _replay_pieces(x, self._next(x), low, high)
        return x.copy_(out) if inplace else out

    def _max_pool(self, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        name = getattr(func, "__name__", "")
        adaptive = func in _ADAPTIVE_MAX_POOL
        dims = 1 if "1d" in name else 3 if "3d" in name else 2
        names = (
            ("input", "output_size", "return_indices")
            if adaptive
            else ("input", "kernel_size", "stride", "padding", "dilation", "ceil_mode",
                  "return_indices")
        )  # fmt: skip
        bound = _bind(names, args, kwargs)
        if bound.get("return_indices", False):
            return func(*args, **kwargs)  # the caller handles indices itself: leave it alone
        x = bound.pop("input")
        bound.pop("return_indices", None)
        if self.mode == "record":
            with_indices = _WITH_INDICES[(adaptive, dims)]
            out, indices = with_indices(x, **bound)
            self.masks.append(indices)
            return out
        indices = self._next(x)
        gathered = x.flatten(x.dim() - dims).gather(-1, indices.flatten(indices.dim() - dims))
        return gathered.view(indices.shape)


def _detached(bound: Any) -> Any:
    return bound.detach() if isinstance(bound, Tensor) else bound


_WITH_INDICES: dict[tuple[bool, int], Callable[..., tuple[Tensor, Tensor]]] = {
    (False, 1): F.max_pool1d_with_indices,
    (False, 2): F.max_pool2d_with_indices,
    (False, 3): F.max_pool3d_with_indices,
    (True, 1): F.adaptive_max_pool1d_with_indices,
    (True, 2): F.adaptive_max_pool2d_with_indices,
    (True, 3): F.adaptive_max_pool3d_with_indices,
}
