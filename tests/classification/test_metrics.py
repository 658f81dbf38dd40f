"""Top-k accuracy and the VOC2007 11-point mAP against hand-computed cases."""

from __future__ import annotations

import pytest
import torch

from classification.metrics import ClassificationMetric, topk_accuracy, voc07_mean_average_precision


def test_topk_accuracy_hand_computed() -> None:
    logits = torch.tensor(
        [
            [0.9, 0.05, 0.03, 0.01, 0.01, 0.0],  # target 0: top-1 hit
            [0.1, 0.2, 0.3, 0.4, 0.5, 0.6],  # target 1: rank 5 of 6 -> top-5 hit only
            [0.1, 0.2, 0.3, 0.4, 0.5, 0.6],  # target 0: rank 6 -> miss
            [0.0, 0.0, 1.0, 0.0, 0.0, 0.0],  # target 2: top-1 hit
        ]
    )
    targets = torch.tensor([0, 1, 0, 2])
    result = topk_accuracy(logits, targets, (1, 5))
    assert result[1] == pytest.approx(50.0)  # rows 0 and 3
    assert result[5] == pytest.approx(75.0)  # rows 0, 1, 3


def test_topk_larger_than_classes_counts_everything() -> None:
    logits = torch.tensor([[0.2, 0.8], [0.9, 0.1]])
    assert topk_accuracy(logits, torch.tensor([0, 1]), (1, 5)) == {1: 0.0, 5: 100.0}


def test_voc07_map_hand_computed() -> None:
    # class 0: scores ranked 0.9(+), 0.8(-), 0.7(+), 0.1(-). precision at the hits: 1, 2/3;
    # recall 0.5 then 1.0. 11-point: r = 0..0.5 -> max precision at recall >= r is 1 (6 points),
    # r = 0.6..1.0 -> 2/3 (5 points): AP = (6 + 5 * 2/3) / 11.
    # class 1: the only positive is ranked first: AP = 1.
    scores = torch.tensor([[0.9, 0.9], [0.8, 0.1], [0.7, 0.2], [0.1, 0.3]])
    targets = torch.tensor([[1, 1], [0, 0], [1, 0], [0, 0]])
    ap0 = (6 + 5 * 2 / 3) / 11
    expected = 100 * (ap0 + 1.0) / 2
    assert voc07_mean_average_precision(scores, targets) == pytest.approx(expected)


def test_voc07_map_perfect_and_classes_without_positives() -> None:
    scores = torch.tensor([[0.9, 0.1, 0.5], [0.2, 0.8, 0.5]])
    targets = torch.tensor([[1, 0, 0], [0, 1, 0]])  # class 2 has no positive: left out
    assert voc07_mean_average_precision(scores, targets) == pytest.approx(100.0)
    with pytest.raises(ValueError, match="no class has a positive"):
        voc07_mean_average_precision(scores, torch.zeros_like(targets))


def test_metric_object_computes_from_predict_outputs() -> None:
    metric = ClassificationMetric(mode="topk", topk=(1, 2))
    samples = [
        {"logits": torch.tensor([0.1, 0.7, 0.2]), "target": torch.tensor(1)},
        {"logits": torch.tensor([0.6, 0.1, 0.3]), "target": torch.tensor(2)},
    ]
    metric.process(None, samples)
    assert metric.compute_metrics(metric.results) == {"top1": 50.0, "top2": 100.0}
    with pytest.raises(ValueError, match="mode"):
        ClassificationMetric(mode="auc")
