"""Classification as a BiSSL downstream task (SPEC §2): model, upper loss, correspondence.

The upper loss is the classifier's loss on a labelled batch ``(images, targets)``; with the lower
backbone substituted it runs the same classifier through ``torch.func.functional_call`` with θ_L
in place of its ``backbone.*`` parameters. The correspondence is the prefix ``backbone.``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call

from bissl_dense.core import prefix_correspondence
from bissl_dense.stage import DownstreamTask, move_to_device
from bissl_dense.stage.tasks import register_task
from classification.models import ImageClassifier

__all__ = ["classification_upper_loss", "image_classification_task"]


def classification_upper_loss(model: ImageClassifier):
    """``upper_loss(batch, backbone)`` of :class:`DownstreamTask` for ``model``."""

    def upper_loss(batch: Sequence[Tensor], backbone: Mapping[str, Tensor] | None) -> Tensor:
        device = next(model.parameters()).device
        images, targets = move_to_device(tuple(batch[:2]), device)
        if backbone is None:
            logits = model(images, mode="tensor")
        else:
            logits = functional_call(model, dict(backbone), (images,), {"mode": "tensor"})
        return model.loss_of(logits, targets)

    return upper_loss


@register_task("ImageClassificationTask")
def image_classification_task(lower_backbone: nn.Module, **model_options: Any) -> DownstreamTask:
    """An :class:`ImageClassifier` built from ``model_options`` (its keyword arguments).

    The backbone architecture defaults to the lower backbone's, whose weights initialise θ_U
    (SPEC §3: θ_L = θ_U = the pretrained backbone at the start of BiSSL).
    """
    model = ImageClassifier(**model_options)
    lower_state = lower_backbone.state_dict()
    upper_backbone_state = model.backbone.state_dict()
    mismatched = [
        k
        for k in upper_backbone_state
        if k not in lower_state or lower_state[k].shape != upper_backbone_state[k].shape
    ]
    if mismatched:
        raise ValueError(
            "the classifier's backbone does not match the pretext backbone (set "
            f"model.task.backbone like model.pretext.backbone); differing entries: {mismatched[:8]}"
        )
    with torch.no_grad():
        model.backbone.load_state_dict(lower_state)
    return DownstreamTask(
        model=model,
        upper_loss=classification_upper_loss(model),
        correspondence=prefix_correspondence(lower_backbone, "backbone."),
    )
