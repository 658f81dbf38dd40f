"""VOC07 test AP50 with detectron2's own evaluator, written to a results file (SPEC §5).

The held-out validation split (``voc_0712_val``, :mod:`bissl_dense.detection.data`) spans the
VOC2007 and VOC2012 folders; :class:`HeldOutVOCEvaluator` is detectron2's evaluator with only its
two paths (image list, annotation file of an image id) pointed at both folders, and the VOC07
11-point metric of the test set.

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
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from detectron2.config import CfgNode
from detectron2.data import DatasetCatalog, MetadataCatalog, build_detection_test_loader
from detectron2.evaluation import PascalVOCDetectionEvaluator, inference_on_dataset
from torch import nn

from bissl_dense.fileio import atomic_write_text

__all__ = ["HeldOutVOCEvaluator", "evaluate_voc", "voc_evaluator", "write_results"]


class _YearAnnotationPath(str):
    """The annotation path "template" of detectron2's ``voc_eval`` for image ids
    ``<year folder>/<file id>``: it calls ``annopath.format(image_id)``, and the file is
    ``<root>/<year folder>/Annotations/<file id>.xml``."""

    def format(self, image_id: str) -> str:  # type: ignore[override]
        folder, file_id = str(image_id).split("/", 1)
        return os.path.join(str(self), folder, "Annotations", f"{file_id}.xml")


class HeldOutVOCEvaluator(PascalVOCDetectionEvaluator):
    """``PascalVOCDetectionEvaluator`` on a data set of several VOC year folders (the held-out
    split): the images are the data set's own (their ids ``VOC2007/000005`` ...), each one's
    ground truth its year's annotation file; matching and AP are detectron2's, unchanged."""

    def __init__(self, dataset_name: str) -> None:
        super().__init__(dataset_name)
        self._anno_file_template = _YearAnnotationPath(MetadataCatalog.get(dataset_name).dirname)

    def evaluate(self):  # noqa: ANN201
        ids = [str(d["image_id"]) for d in DatasetCatalog.get(self._dataset_name)]
        with tempfile.TemporaryDirectory(prefix="bissl_voc_val_") as folder:
            self._image_set_path = os.path.join(folder, "images.txt")
            with open(self._image_set_path, "w") as handle:
                handle.write("".join(f"{i}\n" for i in ids))
            return super().evaluate()


def voc_evaluator(dataset_name: str) -> PascalVOCDetectionEvaluator:
    """detectron2's VOC evaluator for ``dataset_name`` (the held-out split's variant for it)."""
    if MetadataCatalog.get(dataset_name).get("evaluator_type") == "pascal_voc_held_out":
        return HeldOutVOCEvaluator(dataset_name)
    return PascalVOCDetectionEvaluator(dataset_name)


def evaluate_voc(cfg: CfgNode, model: nn.Module, dataset_name: str) -> dict[str, float]:
    """AP, AP50 and AP75 (percent) of ``model`` on the registered VOC set ``dataset_name``.

    Runs on every process (the evaluator gathers the detections to rank 0); other ranks get an
    empty dict.
    """
    loader = build_detection_test_loader(cfg, dataset_name)
    evaluator = voc_evaluator(dataset_name)
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
