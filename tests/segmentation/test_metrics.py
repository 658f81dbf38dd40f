"""mIoU from our evaluator equals mmseg's ``IoUMetric`` on the same predictions (SPEC §5).

Perfect prediction gives 100; one class predicted wrong gives the hand-computed value; and the
numbers of :class:`PerClassIoUMetric` are mmseg's own, plus the per-class IoU.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from mmengine.structures import PixelData
from mmseg.evaluation import IoUMetric
from mmseg.structures import SegDataSample

from bissl_dense.segmentation.metrics import PerClassIoUMetric

CLASSES = ("background", "cat", "dog")


def sample(pred: np.ndarray, gt: np.ndarray) -> dict:
    data = SegDataSample()
    data.pred_sem_seg = PixelData(data=torch.from_numpy(pred)[None])
    data.gt_sem_seg = PixelData(data=torch.from_numpy(gt)[None])
    return data.to_dict()


def evaluate(metric, pairs: list[tuple[np.ndarray, np.ndarray]]) -> dict[str, float]:
    metric.dataset_meta = {"classes": CLASSES}
    metric.process({}, [sample(p, g) for p, g in pairs])
    return metric.evaluate(len(pairs))


@pytest.fixture
def labels() -> np.ndarray:
    gt = np.zeros((4, 6), dtype=np.int64)
    gt[:2, :3] = 1  # 6 cat pixels
    gt[2:, 3:] = 2  # 6 dog pixels
    gt[0, 5] = 255  # ignored
    return gt


def test_perfect_prediction_is_100(labels: np.ndarray) -> None:
    pred = np.where(labels == 255, 0, labels)
    ours = evaluate(PerClassIoUMetric(), [(pred, labels)])
    assert ours["mIoU"] == 100.0 and ours["aAcc"] == 100.0
    assert all(ours[f"IoU.{name}"] == 100.0 for name in CLASSES)


def test_one_class_wrong_is_the_hand_computed_value(labels: np.ndarray) -> None:
    pred = np.where(labels == 255, 0, labels)
    pred[labels == 2] = 1  # every dog predicted as cat
    ours = evaluate(PerClassIoUMetric(), [(pred, labels)])
    # background: 11 of 11 right (23 valid pixels - 12); cat: 6 / (6 + 6); dog: 0 / 6
    assert ours["IoU.background"] == 100.0
    assert ours["IoU.cat"] == 50.0
    assert ours["IoU.dog"] == 0.0
    assert ours["mIoU"] == pytest.approx(round((1.0 + 0.5 + 0.0) / 3 * 100, 2))
    assert ours["aAcc"] == pytest.approx(round(17 / 23 * 100, 2))


def test_equals_mmseg_iou_metric_on_random_predictions() -> None:
    rng = np.random.default_rng(0)
    pairs = []
    for _ in range(3):
        gt = rng.integers(0, 3, size=(8, 10))
        gt[rng.random(gt.shape) < 0.1] = 255
        pred = np.where(
            rng.random(gt.shape) < 0.7, np.where(gt == 255, 0, gt), rng.integers(0, 3, gt.shape)
        )
        pairs.append((pred, gt))
    ours = evaluate(PerClassIoUMetric(), pairs)
    theirs = evaluate(IoUMetric(iou_metrics=["mIoU"]), pairs)
    assert {k: ours[k] for k in theirs} == pytest.approx({k: float(v) for k, v in theirs.items()})
    # the per-class values average to mmseg's mIoU (both rounded to 2 decimals)
    assert np.mean([ours[f"IoU.{c}"] for c in CLASSES]) == pytest.approx(theirs["mIoU"], abs=0.01)
