"""VOC07 test AP50 with detectron2's own evaluator, written to a results file (SPEC §5).

The metric is detectron2's ``PascalVOCDetectionEvaluator`` (VOC07: 11-point interpolation; AP is
the mean over IoU thresholds 0.50:0.95, AP50 the paper's metric). This module only wires the
registered test set, the model and the evaluator together and writes the numbers as JSON, one
file per run, atomically, for the experiments runner:

.. code-block:: json

    {"task": "detection", "metric": "AP50", "iteration": 24000,
     "results": {"voc_2007_test": {"AP": 53.1, "AP50": 81.0, "AP75": 58.2}}}
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from detectron2.config import CfgNode
from detectron2.data import build_detection_test_loader
from detectron2.evaluation import PascalVOCDetectionEvaluator, inference_on_dataset
from torch import nn

from bissl_dense.fileio import atomic_write_text

__all__ = ["evaluate_voc", "write_results"]


def evaluate_voc(cfg: CfgNode, model: nn.Module, dataset_name: str) -> dict[str, float]:
    """AP, AP50 and AP75 (percent) of ``model`` on the registered VOC set ``dataset_name``.

    Runs on every process (the evaluator gathers the detections to rank 0); other ranks get an
    empty dict.
    """
    loader = build_detection_test_loader(cfg, dataset_name)
    evaluator = PascalVOCDetectionEvaluator(dataset_name)
    results = inference_on_dataset(model, loader, evaluator)
    if not results:
        return {}
    return {key: float(value) for key, value in results["bbox"].items()}


def write_results(
    path: str | os.PathLike[str],
    results: Mapping[str, Mapping[str, float]],
    *,
    iteration: int,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``{"task", "metric", "iteration", "results", ...extra}`` as JSON, atomically."""
    clean = {
        name: {k: (None if not math.isfinite(v) else round(float(v), 4)) for k, v in m.items()}
        for name, m in results.items()
    }
    payload = {
        "task": "detection",
        "metric": "AP50",
        "iteration": int(iteration),
        "results": clean,
        **dict(extra or {}),
    }
    path = Path(path)
    atomic_write_text(path, json.dumps(payload, indent=2, sort_keys=True) + "\n")
    return path
