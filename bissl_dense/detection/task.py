"""The detection task as BiSSL's upper level: ``upper_loss(batch, backbone)`` (SPEC §2, §5).

L_D is the sum of detectron2's ``GeneralizedRCNN`` loss dict (RPN objectness and box regression,
RoI classification and box regression) on a batch of mapped dataset dicts, with the model in
train mode.

With ``backbone`` a dict ``{detector parameter name: tensor}`` the detector is evaluated with
those tensors substituted for its own backbone and res5 (θ_L in place of θ_U) through
``torch.func.functional_call``; the gradient then flows to the substituted tensors, so BiSSL's
implicit gradient reaches every shared stage, res5 in the RoI head included. The substituted pass
runs on *copies* of the detector's buffers: its BatchNorm layers normalise with the batch
statistics as usual, but their running statistics stay those of θ_U (the core additionally
restores all buffers around this pass).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call

from bissl_dense.detection.correspondence import c4_correspondence
from bissl_dense.stage import DownstreamTask

__all__ = ["DetectionUpperLoss", "detection_task"]


class DetectionUpperLoss:
    """``(batch, backbone) -> L_D`` for a detectron2 detector (see the module docstring)."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model

    def losses(
        self, batch: list[dict[str, Any]], backbone: Mapping[str, Tensor] | None
    ) -> dict[str, Tensor]:
        """The detector's loss dict, with ``backbone`` substituted when given."""
        if not self.model.training:
            raise RuntimeError("the detection upper loss needs the detector in train mode")
        if backbone is None:
            return self.model(batch)
        buffers = {name: b.clone() for name, b in self.model.named_buffers()}
        known = {n for n, _ in self.model.named_parameters()} | set(buffers)
        unknown = sorted(set(backbone) - known)
        if unknown:
            raise KeyError(f"substituted names that are not detector tensors: {unknown[:8]}")
        # substituted buffers (reference parity: θ_L's own running statistics) replace the copies
        return functional_call(self.model, {**buffers, **backbone}, (batch,), strict=False)

    def __call__(
        self, batch: list[dict[str, Any]], backbone: Mapping[str, Tensor] | None
    ) -> Tensor:
        losses = self.losses(batch, backbone)
        return torch.stack([v for v in losses.values()]).sum()


def detection_task(detector: nn.Module, lower_backbone: nn.Module) -> DownstreamTask:
    """The detector as a BiSSL downstream task; the correspondence is checked here (names of
    anything missing)."""
    return DownstreamTask(
        model=detector,
        upper_loss=DetectionUpperLoss(detector),
        correspondence=c4_correspondence(lower_backbone, detector),
    )
