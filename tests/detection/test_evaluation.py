"""AP50 wiring: registered VOC07 test data → model → detectron2's PascalVOCDetectionEvaluator.

The metric is detectron2's; these tests check our wiring of data and classes: detections equal to
the ground truth give AP = AP50 = 100, the same boxes with the classes shifted give 0, and the
results file holds what the evaluator returned."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.detection._d2 import oracle, require_detectron2, tiny_cfg, write_voc_data

require_detectron2()

from detectron2.data import DatasetCatalog, MetadataCatalog  # noqa: E402

from bissl_dense.datasets.synthetic import VOC_CLASSES  # noqa: E402
from bissl_dense.detection.evaluation import evaluate_voc, write_results  # noqa: E402


@pytest.fixture(scope="module")
def voc(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # enough images that every class has a non-difficult object in VOC2007 test
    return write_voc_data(tmp_path_factory.mktemp("voc"), n=160, size=48, difficult_prob=0.0)


def test_perfect_detections_give_100_and_shifted_classes_0(voc: Path, tmp_path: Path) -> None:
    cfg = tiny_cfg(voc, tmp_path)
    assert MetadataCatalog.get("voc_2007_test").thing_classes == list(VOC_CLASSES)
    dicts = DatasetCatalog.get("voc_2007_test")
    present = {a["category_id"] for d in dicts for a in d["annotations"]}
    assert present == set(range(20)), "test data must contain every class"

    perfect = evaluate_voc(cfg, oracle(dicts), "voc_2007_test")
    assert perfect == pytest.approx({"AP": 100.0, "AP50": 100.0, "AP75": 100.0}, abs=1e-9)
    shifted = evaluate_voc(cfg, oracle(dicts, shift=1), "voc_2007_test")
    assert shifted["AP50"] == 0.0

    path = write_results(tmp_path / "results.json", {"voc_2007_test": perfect}, iteration=7)
    written = json.loads(path.read_text())
    assert written["results"]["voc_2007_test"]["AP50"] == pytest.approx(100.0)
    assert written["metric"] == "AP50" and written["iteration"] == 7
