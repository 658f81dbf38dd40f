"""mmseg's ``IoUMetric`` with the per-class IoU in the returned metrics (SPEC §5: mIoU).

mmseg computes per-class IoU but only prints it as a table; the experiments runner reads the
numbers from ``results.json``, so :class:`PerClassIoUMetric` returns them too, as
``IoU.<class name>`` (percent, rounded as mmseg rounds its summary). ``aAcc``, ``mIoU`` and
``mAcc`` are mmseg's own values, computed by mmseg's code.
"""

from __future__ import annotations

import numpy as np
from mmseg.evaluation import IoUMetric
from mmseg.registry import METRICS

__all__ = ["PerClassIoUMetric"]


@METRICS.register_module()
class PerClassIoUMetric(IoUMetric):
    """``IoUMetric`` (mIoU only) whose results also hold ``IoU.<class>`` for every class."""

    def compute_metrics(self, results: list) -> dict[str, float]:
        metrics = dict(super().compute_metrics(results))
        if self.format_only or "mIoU" not in self.metrics:
            return metrics
        areas = [sum(column) for column in zip(*results, strict=True)]
        per_class = self.total_area_to_metrics(*areas, ["mIoU"], self.nan_to_num, self.beta)
        for name, iou in zip(self.dataset_meta["classes"], per_class["IoU"], strict=True):
            metrics[f"IoU.{name}"] = float(np.round(float(iou) * 100, 2))
        return {k: float(v) for k, v in metrics.items()}
