"""LARS (You et al., 2017) as used for the pretext and BiSSL lower levels (SPEC §4).

The paper uses the VICReg (Bardes et al., 2022) variant of LARS. For each parameter ``w`` with
gradient ``g`` that is not excluded:

    u = g + weight_decay * w
    u = u * trust_coefficient * ||w|| / ||u||      (factor 1 when ||w|| == 0 or ||u|| == 0)

and for excluded parameters (biases and normalisation parameters: ``ndim <= 1``) simply
``u = g``: no weight decay and no trust-ratio adaptation. Then heavy-ball momentum without
dampening, ``m = momentum * m + u`` (``m`` starts at zero), and ``w = w - lr * m``.

Why not ``timm.optim.Lars``: its trust ratio is ``eta ||w|| / (||g|| + wd ||w|| + eps)`` (a sum
of norms, not the norm of the decayed update), and it has no per-parameter exclusion; it only
skips adaptation for groups whose weight decay is 0 (unless ``always_adapt``), which couples the
two exclusions to the weight-decay value. Neither matches the reference, so LARS is written here.

This module has no mmengine dependency; the mmengine side registers :class:`LARS` in its
``OPTIMIZERS`` registry so that ``dict(type="LARS", lr=..., weight_decay=...)`` builds it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["LARS", "build_lars", "lars_param_groups"]


class LARS(torch.optim.Optimizer):
    """LARS with momentum; 1-D parameters are excluded from adaptation and weight decay.

    Args:
        params: parameters or param-group dicts. A group may set ``lars_exclude=True`` (exclude
            all its parameters) or ``lars_exclude=False`` (adapt all of them, whatever their
            ``ndim``); when unset, ``exclude_1d`` decides per parameter by ``ndim <= 1``.
        lr: learning rate.
        momentum: heavy-ball momentum factor (no dampening, no Nesterov).
        weight_decay: L2 coefficient added to the gradient of non-excluded parameters.
        trust_coefficient: ``eta`` in the trust ratio ``eta * ||w|| / ||g + wd * w||``.
        exclude_1d: exclude parameters with ``ndim <= 1`` (biases, BatchNorm/LayerNorm
            weights) from weight decay and adaptation.
        foreach: update with multi-tensor ``torch._foreach_*`` kernels (default); ``False``
            runs the per-tensor reference loop (same update to float rounding).
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float,
        momentum: float = 0.9,
        weight_decay: float = 1e-6,
        trust_coefficient: float = 0.001,
        exclude_1d: bool = True,
        foreach: bool = True,
    ) -> None:
        if lr < 0.0:
            raise ValueError(f"LARS: lr must be >= 0, got {lr}.")
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"LARS: momentum must be in [0, 1), got {momentum}.")
        if weight_decay < 0.0:
            raise ValueError(f"LARS: weight_decay must be >= 0, got {weight_decay}.")
        if trust_coefficient <= 0.0:
            raise ValueError(f"LARS: trust_coefficient must be > 0, got {trust_coefficient}.")
        defaults = dict(
            lr=lr,
            momentum=momentum,
            weight_decay=weight_decay,
            trust_coefficient=trust_coefficient,
            exclude_1d=exclude_1d,
            lars_exclude=None,
            foreach=foreach,
        )
        super().__init__(params, defaults)

    @staticmethod
    def is_excluded(param: Tensor, group: dict[str, Any]) -> bool:
        """Whether ``param`` skips weight decay and trust-ratio adaptation in ``group``."""
        flag = group.get("lars_exclude")
        if flag is not None:
            return bool(flag)
        return bool(group["exclude_1d"]) and param.ndim <= 1

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()

        for group in self.param_groups:
            with_grad = [p for p in group["params"] if p.grad is not None]
            for param in with_grad:
                if param.grad.is_sparse:
                    raise RuntimeError("LARS does not support sparse gradients.")
                if "momentum_buffer" not in self.state[param]:
                    self.state[param]["momentum_buffer"] = torch.zeros_like(param)
            if group.get("foreach", True):
                self._foreach_update(group, with_grad)
            else:
                for param in with_grad:
                    self._single_update(group, param)
        return loss

    def _single_update(self, group: dict[str, Any], param: Tensor) -> None:
        """The reference update of one tensor (module docstring); kept as the specification."""
        update = param.grad
        if not self.is_excluded(param, group):
            if group["weight_decay"] != 0.0:
                update = update.add(param, alpha=group["weight_decay"])
            param_norm = torch.linalg.vector_norm(param)
            update_norm = torch.linalg.vector_norm(update)
            # torch.where keeps the ratio on the device: no host sync per parameter.
            ratio = torch.where(
                (param_norm > 0) & (update_norm > 0),
                group["trust_coefficient"] * param_norm / update_norm,
                torch.ones_like(param_norm),
            )
            update = update.mul(ratio)
        buffer = self.state[param]["momentum_buffer"]
        buffer.mul_(group["momentum"]).add_(update)
        param.add_(buffer, alpha=-group["lr"])

    def _foreach_update(self, group: dict[str, Any], params: list[Tensor]) -> None:
        """The same update with multi-tensor (``torch._foreach_*``) kernels: a constant number
        of kernel launches per (device, dtype) bucket instead of ~10 small ones per tensor; the
        trust ratios of all tensors are computed as one vector, on the device."""
        buckets: dict[tuple[torch.device, torch.dtype], list[Tensor]] = {}
        for param in params:
            buckets.setdefault((param.device, param.dtype), []).append(param)
        for bucket in buckets.values():
            adapted = [p for p in bucket if not self.is_excluded(p, group)]
            excluded = [p for p in bucket if self.is_excluded(p, group)]
            updates: list[Tensor] = [p.grad for p in excluded]  # type: ignore[misc]
            if adapted:
                grads = [p.grad for p in adapted]
                if group["weight_decay"] != 0.0:
                    decayed = torch._foreach_add(grads, adapted, alpha=group["weight_decay"])
                else:
                    decayed = list(grads)
                param_norms = torch.stack(torch._foreach_norm(adapted))
                update_norms = torch.stack(torch._foreach_norm(decayed))
                ratios = torch.where(
                    (param_norms > 0) & (update_norms > 0),
                    group["trust_coefficient"] * param_norms / update_norms,
                    torch.ones_like(param_norms),
                )
                updates += torch._foreach_mul(decayed, list(ratios.unbind()))
            ordered = excluded + adapted
            buffers = [self.state[p]["momentum_buffer"] for p in ordered]
            torch._foreach_mul_(buffers, group["momentum"])
            torch._foreach_add_(buffers, updates)
            torch._foreach_add_(ordered, buffers, alpha=-group["lr"])


def lars_param_groups(
    model_or_named_params: nn.Module | Iterable[tuple[str, Tensor]],
    weight_decay: float = 1e-6,
) -> list[dict[str, Any]]:
    """Two param groups: adapted and decayed (``ndim > 1``), and excluded (``ndim <= 1``).

    The excluded group carries ``weight_decay=0`` and ``lars_exclude=True``, so it is excluded
    even under an optimizer that only honours per-group weight decay. Frozen parameters
    (``requires_grad=False``) are left out. Empty groups are dropped.
    """
    named = (
        model_or_named_params.named_parameters()
        if isinstance(model_or_named_params, nn.Module)
        else model_or_named_params
    )
    adapted: list[Tensor] = []
    excluded: list[Tensor] = []
    for _, param in named:
        if not param.requires_grad:
            continue
        (excluded if param.ndim <= 1 else adapted).append(param)
    groups: list[dict[str, Any]] = []
    if adapted:
        groups.append({"params": adapted, "weight_decay": weight_decay, "lars_exclude": False})
    if excluded:
        groups.append({"params": excluded, "weight_decay": 0.0, "lars_exclude": True})
    return groups


def build_lars(
    params: nn.Module | Iterable[Tensor] | Iterable[dict[str, Any]],
    lr: float,
    weight_decay: float = 1e-6,
    momentum: float = 0.9,
    trust_coefficient: float = 0.001,
) -> LARS:
    """Build :class:`LARS` with SPEC §4's defaults; a module is split by ``lars_param_groups``."""
    if isinstance(params, nn.Module):
        params = lars_param_groups(params, weight_decay)
    return LARS(
        params,
        lr=lr,
        momentum=momentum,
        weight_decay=weight_decay,
        trust_coefficient=trust_coefficient,
    )
