"""Small ``torch.distributed`` helpers shared by the pretext losses and the bilevel core.

Every helper degrades to the single-process behaviour when no process group is initialised, so
the same code runs unchanged on one CPU, one GPU, or under DDP. This module deliberately imports
nothing from mmengine: the bilevel core (SPEC §2-§3) is framework agnostic.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = [
    "all_reduce_mean_",
    "gather_with_grad",
    "get_rank",
    "get_world_size",
    "is_distributed",
    "rank_offset",
]


def is_distributed() -> bool:
    """True when a default process group is initialised (even with world size 1)."""
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    """Rank of this process in the default group; 0 when not distributed."""
    return dist.get_rank() if is_distributed() else 0


def get_world_size() -> int:
    """Number of processes in the default group; 1 when not distributed."""
    return dist.get_world_size() if is_distributed() else 1


def rank_offset(local_size: int) -> int:
    """Index of this rank's first row in a tensor gathered along dim 0 with equal local sizes.

    ``gather_with_grad`` places rank ``r``'s rows at ``[r * local_size, (r + 1) * local_size)``.
    """
    if local_size < 0:
        raise ValueError(f"rank_offset: local_size must be >= 0, got {local_size}.")
    return get_rank() * local_size


class _GatherWithGrad(torch.autograd.Function):
    """All-gather along dim 0 whose backward returns this rank's slice of the summed gradients.

    Every rank's loss may depend on every rank's rows, so the gradient w.r.t. this rank's input
    is the sum over ranks of the gradients flowing into its slice of the gathered tensor. An
    all-reduce (sum) of the full gradient followed by slicing computes that with one collective
    supported by every backend (gloo has no reduce-scatter); the gathered tensors are projection
    outputs (batch x 256), so the extra traffic over a reduce-scatter is negligible.

    The backward is itself differentiable (:class:`_SumSlice`, whose adjoint is this gather), so
    second derivatives through the gathered negatives are exact: BiSSL's Hessian-vector products
    (SPEC §2) double-backward through SimCLR's loss, and a backward made of a plain in-place
    all-reduce would silently drop the curvature that flows between ranks.
    """

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:  # type: ignore[override]
        x = x.contiguous()
        world_size = dist.get_world_size()
        parts = [torch.empty_like(x) for _ in range(world_size)]
        dist.all_gather(parts, x)
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx, grad_output: Tensor) -> Tensor:  # type: ignore[override]
        return _SumSlice.apply(grad_output)


class _SumSlice(torch.autograd.Function):
    """This rank's slice of the sum over ranks: the adjoint of :class:`_GatherWithGrad`.

    For rank ``r``, ``y_r = S_r Σ_k g_k`` with ``S_r`` the slice of rank ``r``'s rows. Its adjoint
    maps the upstream gradients ``u_r`` of all ranks to ``Σ_r S_rᵀ u_r``, the concatenation of the
    ``u_r``: an all-gather. The two functions are each other's backward, so any order of
    differentiation stays exact.
    """

    @staticmethod
    def forward(ctx, grad: Tensor) -> Tensor:  # type: ignore[override]
        total = grad.contiguous().clone()
        dist.all_reduce(total, op=dist.ReduceOp.SUM)
        local_size = total.shape[0] // dist.get_world_size()
        start = dist.get_rank() * local_size
        return total[start : start + local_size]

    @staticmethod
    def backward(ctx, grad_output: Tensor) -> Tensor:  # type: ignore[override]
        return _GatherWithGrad.apply(grad_output)


def gather_with_grad(x: Tensor) -> Tensor:
    """Concatenate ``x`` from all ranks along dim 0, letting gradients flow back to every rank.

    Rank ``r``'s rows land at ``rank_offset(len(x))`` (all ranks must pass the same shape; use
    ``drop_last=True`` in the sampler). The backward pass sums the gradients that all ranks'
    losses send to this rank's rows, so with DDP's gradient averaging a per-rank loss that is the
    mean over its local anchors yields exactly the single-process gradient on the union batch.
    Identity when not distributed or when the world size is 1.
    """
    if not is_distributed() or get_world_size() == 1:
        return x
    return _GatherWithGrad.apply(x)


def all_reduce_mean_(tensors: Sequence[Tensor]) -> None:
    """Average ``tensors`` across ranks in place, with one collective per (device, dtype) bucket.

    The tensors are flattened into a single buffer so that many small parameter tensors cost one
    all-reduce rather than one each. Integer tensors get the floor of the mean. No-op when not
    distributed.
    """
    if not is_distributed() or get_world_size() == 1 or len(tensors) == 0:
        return
    world_size = get_world_size()
    buckets: dict[tuple[torch.device, torch.dtype], list[Tensor]] = {}
    for tensor in tensors:
        buckets.setdefault((tensor.device, tensor.dtype), []).append(tensor)
    for bucket in buckets.values():
        flat = torch.cat([t.detach().reshape(-1) for t in bucket])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        if flat.is_floating_point() or flat.is_complex():
            flat.div_(world_size)
        else:
            # Integer buffers (e.g. BatchNorm's num_batches_tracked) cannot hold a true mean.
            flat = torch.div(flat, world_size, rounding_mode="floor")
        start = 0
        for tensor in bucket:
            numel = tensor.numel()
            with torch.no_grad():
                tensor.copy_(flat[start : start + numel].view_as(tensor))
            start += numel
