"""Pretext losses: SimCLR's NT-Xent and BYOL's normalised regression loss (SPEC §4).

Both are plain functions with a thin ``nn.Module`` wrapper so that they can be used directly in
the bilevel core (which differentiates them twice) or configured from mmengine.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bissl_dense.distributed import gather_with_grad, get_world_size, rank_offset

__all__ = ["BYOLLoss", "NTXentLoss", "byol_loss", "nt_xent_loss"]


def _check_pair(name: str, a: Tensor, b: Tensor, a_name: str, b_name: str) -> None:
    if a.ndim != 2 or b.ndim != 2:
        raise ValueError(
            f"{name}: expected 2-D (batch, dim) tensors, got {a_name} {tuple(a.shape)} and "
            f"{b_name} {tuple(b.shape)}; flatten the projections first."
        )
    if a.shape != b.shape:
        raise ValueError(
            f"{name}: {a_name} {tuple(a.shape)} and {b_name} {tuple(b.shape)} must have the same "
            "shape (one row per image, the two views in the same order)."
        )


def nt_xent_loss(
    z1: Tensor, z2: Tensor, temperature: float = 0.5, gather_distributed: bool = True
) -> Tensor:
    """SimCLR's NT-Xent loss of two batches of projections (row ``i`` of each is one image).

    All ``2N`` projections are L2-normalised; each one is an anchor whose positive is the other
    view of the same image and whose negatives are the remaining ``2N - 2`` projections. The loss
    is the cross-entropy of the positive among the ``2N - 1`` cosine similarities divided by
    ``temperature``, averaged over the ``2N`` anchors.

    Under ``torch.distributed`` (and ``gather_distributed=True``) the projections of all ranks are
    gathered with gradients, so negatives come from the union batch of ``N = world * n`` images;
    each rank averages over its own ``2n`` anchors only. The mean of the rank losses (what DDP
    optimises) is then the single-process loss on the union batch, and DDP's gradient averaging
    reproduces its gradient.
    """
    _check_pair("nt_xent_loss", z1, z2, "z1", "z2")
    if not temperature > 0:
        raise ValueError(f"nt_xent_loss: temperature must be > 0, got {temperature}.")
    local_size = z1.shape[0]
    if local_size == 0:
        raise ValueError("nt_xent_loss: got an empty batch.")

    z1 = F.normalize(z1, dim=1)
    z2 = F.normalize(z2, dim=1)
    if gather_distributed and get_world_size() > 1:
        all_z1, all_z2 = gather_with_grad(z1), gather_with_grad(z2)
        offset = rank_offset(local_size)
    else:
        all_z1, all_z2 = z1, z2
        offset = 0
    total_size = all_z1.shape[0]

    anchors = torch.cat([z1, z2], dim=0)  # (2n, d): this rank's anchors
    candidates = torch.cat([all_z1, all_z2], dim=0)  # (2N, d): every projection of the union
    logits = anchors @ candidates.t() / temperature

    local_index = torch.arange(local_size, device=z1.device)
    # Column of each anchor itself in `candidates`, and of its positive (the other view).
    self_column = torch.cat([offset + local_index, total_size + offset + local_index])
    positive_column = torch.cat([total_size + offset + local_index, offset + local_index])
    # Drop each anchor's own column instead of filling it with -inf: the loss stays finite and
    # twice differentiable, which the Hessian-vector products of the bilevel core need (SPEC §2).
    kept = torch.arange(2 * total_size - 1, device=z1.device).unsqueeze(0)
    kept = kept + (kept >= self_column.unsqueeze(1)).long()  # (2n, 2N - 1) column indices
    logits = torch.gather(logits, 1, kept)
    target = positive_column - (positive_column > self_column).long()
    return F.cross_entropy(logits, target)


class NTXentLoss(nn.Module):
    """Module form of :func:`nt_xent_loss` (SimCLR, temperature 0.5 by default, SPEC §4)."""

    def __init__(self, temperature: float = 0.5, gather_distributed: bool = True) -> None:
        super().__init__()
        if not temperature > 0:
            raise ValueError(f"NTXentLoss: temperature must be > 0, got {temperature}.")
        self.temperature = temperature
        self.gather_distributed = gather_distributed

    def forward(self, z1: Tensor, z2: Tensor) -> Tensor:
        return nt_xent_loss(z1, z2, self.temperature, self.gather_distributed)

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}, gather_distributed={self.gather_distributed}"


def byol_loss(online_prediction: Tensor, target_projection: Tensor) -> Tensor:
    """BYOL's loss ``2 - 2 cos(p, z)`` averaged over the batch, for one direction.

    The target branch is detached here, so no gradient reaches the target network even if the
    caller forgets ``torch.no_grad``. The symmetric BYOL objective is
    ``byol_loss(p1, z2) + byol_loss(p2, z1)``.
    """
    _check_pair(
        "byol_loss", online_prediction, target_projection, "online_prediction", "target_projection"
    )
    if online_prediction.shape[0] == 0:
        raise ValueError("byol_loss: got an empty batch.")
    prediction = F.normalize(online_prediction, dim=1)
    target = F.normalize(target_projection.detach(), dim=1)
    return (2.0 - 2.0 * (prediction * target).sum(dim=1)).mean()


class BYOLLoss(nn.Module):
    """Module form of :func:`byol_loss`; with ``symmetric=True`` it takes both view pairs."""

    def __init__(self, symmetric: bool = False) -> None:
        super().__init__()
        self.symmetric = symmetric

    def forward(
        self,
        online_prediction: Tensor,
        target_projection: Tensor,
        online_prediction_2: Tensor | None = None,
        target_projection_2: Tensor | None = None,
    ) -> Tensor:
        loss = byol_loss(online_prediction, target_projection)
        if not self.symmetric:
            return loss
        if online_prediction_2 is None or target_projection_2 is None:
            raise ValueError(
                "BYOLLoss(symmetric=True) needs four tensors: p1, z2 (target of view 2), p2, z1."
            )
        return loss + byol_loss(online_prediction_2, target_projection_2)
