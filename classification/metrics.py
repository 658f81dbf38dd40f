"""Classification metrics: top-k accuracy and the VOC2007 11-point mAP (SPEC §4, §5).

The functions are plain tensors-in, floats-out so that tests can check them against hand
computations; :class:`ClassificationMetric` is their mmengine ``BaseMetric`` form, used by the
validation and test loops of every classification stage.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from mmengine.evaluator import BaseMetric
from mmengine.registry import METRICS
from torch import Tensor

__all__ = ["ClassificationMetric", "topk_accuracy", "voc07_mean_average_precision"]


def topk_accuracy(logits: Tensor, targets: Tensor, ks: Sequence[int] = (1, 5)) -> dict[int, float]:
    """Percentage of rows whose target is among the ``k`` highest scores, for each ``k``.

    Ties are broken by ``torch.topk``'s order; ``k`` larger than the number of classes counts
    every row as correct.
    """
    if logits.ndim != 2 or targets.ndim != 1 or logits.shape[0] != targets.shape[0]:
        raise ValueError(
            f"topk_accuracy: logits (N, C) and targets (N,) expected, got "
            f"{tuple(logits.shape)} and {tuple(targets.shape)}"
        )
    if logits.shape[0] == 0:
        raise ValueError("topk_accuracy: no predictions")
    largest = min(max(ks), logits.shape[1])
    top = logits.topk(largest, dim=1).indices
    hits = top == targets.unsqueeze(1)
    return {k: 100.0 * hits[:, : min(k, largest)].any(dim=1).float().mean().item() for k in ks}


def _eleven_point_ap(scores: Tensor, positives: Tensor) -> float:
    """VOC2007 AP: mean over r ∈ {0, 0.1, …, 1} of the best precision at recall ≥ r."""
    order = torch.argsort(scores, descending=True, stable=True)
    hits = positives[order].double()
    true_positives = hits.cumsum(0)
    precision = true_positives / torch.arange(1, len(hits) + 1, dtype=torch.float64)
    recall = true_positives / hits.sum()
    ap = 0.0
    for threshold in torch.linspace(0, 1, 11, dtype=torch.float64):
        reached = recall >= threshold - 1e-12
        ap += precision[reached].max().item() if reached.any() else 0.0
    return ap / 11.0


def voc07_mean_average_precision(scores: Tensor, targets: Tensor) -> float:
    """Mean over classes of the 11-point AP (percent), for multi-label ``targets`` in {0, 1}.

    Classes without a positive example have no defined AP and are left out of the mean.
    """
    if scores.shape != targets.shape or scores.ndim != 2:
        raise ValueError(
            f"voc07_mean_average_precision: scores and targets must both be (N, C), got "
            f"{tuple(scores.shape)} and {tuple(targets.shape)}"
        )
    positives = targets > 0.5
    aps = [
        _eleven_point_ap(scores[:, c], positives[:, c])
        for c in range(scores.shape[1])
        if positives[:, c].any()
    ]
    if not aps:
        raise ValueError("voc07_mean_average_precision: no class has a positive example")
    return 100.0 * sum(aps) / len(aps)


@METRICS.register_module()
class ClassificationMetric(BaseMetric):
    """Top-1/top-5 accuracy (``mode="topk"``) or the VOC2007 11-point mAP (``mode="voc07_map"``).

    Expects the model's ``predict`` outputs: one dict per sample with ``logits`` and ``target``.
    Keys of the result: ``top1``, ``top5`` (or ``mAP``), so that checkpoint selection can use
    ``save_best="classification/top1"``.
    """

    default_prefix = "classification"

    def __init__(
        self,
        mode: str = "topk",
        topk: Sequence[int] = (1, 5),
        collect_device: str = "cpu",
        prefix: str | None = None,
    ) -> None:
        super().__init__(collect_device=collect_device, prefix=prefix)
        if mode not in ("topk", "voc07_map"):
            raise ValueError(
                f"ClassificationMetric: mode must be 'topk' or 'voc07_map', got {mode!r}"
            )
        self.mode = mode
        self.topk = tuple(int(k) for k in topk)

    def process(self, data_batch: Any, data_samples: Sequence[dict]) -> None:
        for sample in data_samples:
            self.results.append(
                {"logits": sample["logits"].detach().cpu(), "target": sample["target"].cpu()}
            )

    def compute_metrics(self, results: list[dict]) -> dict[str, float]:
        logits = torch.stack([r["logits"] for r in results]).float()
        targets = torch.stack([r["target"] for r in results])
        if self.mode == "voc07_map":
            return {"mAP": voc07_mean_average_precision(logits, targets)}
        accuracy = topk_accuracy(logits, targets.long(), self.topk)
        return {f"top{k}": value for k, value in accuracy.items()}
