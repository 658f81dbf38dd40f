"""The alignment analysis end to end on small generated labeled images."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from PIL import Image
from torch import nn

from bissl_dense.analysis.alignment import (
    extract_features,
    feature_cosine_similarity,
    parameter_cosine_similarity,
    reestimate_batchnorm,
)
from bissl_dense.analysis.report import analyze_alignment


def _backbone() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
    )


def _finetuned(backbone: nn.Module, amount: float) -> nn.Module:
    model = copy.deepcopy(backbone)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(amount * torch.randn_like(p))
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1)
    return model


def test_alignment_analysis(tmp_path: Path) -> None:
    torch.manual_seed(0)
    labels = torch.arange(3).repeat_interleave(12)
    images = torch.randn(36, 3, 12, 12) + labels.view(-1, 1, 1, 1) * 1.5
    train = [
        (images[i : i + 12] + 0.1 * torch.randn(12, 3, 12, 12), labels[i : i + 12])
        for i in range(0, 36, 12)
    ]
    test = [(images[i : i + 10], labels[i : i + 10]) for i in range(0, 36, 10)]
    pretext, bissl = _backbone(), _backbone()
    with torch.no_grad():  # statistics from another domain, to be re-estimated
        for m in [*pretext.modules(), *bissl.modules()]:
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.fill_(3.0)
    pairs = {
        "pretext": (pretext, [_finetuned(pretext, 0.2), _finetuned(pretext, 0.3)]),
        "BiSSL": (bissl, [_finetuned(bissl, 0.05), _finetuned(bissl, 0.1)]),
    }
    states = {name: copy.deepcopy(before.state_dict()) for name, (before, _) in pairs.items()}
    result = analyze_alignment(
        pairs,
        lambda: iter(train),
        lambda: iter(test),
        tmp_path / "out",
        class_names=["a", "b", "c"],
    )

    for (name, (before, finetuned)), row in zip(pairs.items(), result.rows):
        for key, value in before.state_dict().items():  # the inputs are not modified
            assert torch.equal(value, states[name][key])
        assert row.backbone == name
        assert row.parameter_cs == tuple(
            parameter_cosine_similarity(before, ft) for ft in finetuned
        )
        calibrated = copy.deepcopy(before)
        reestimate_batchnorm(calibrated, train)
        features = extract_features(calibrated, test)[0]
        expected = [
            feature_cosine_similarity(features, extract_features(ft, test)[0]) for ft in finetuned
        ]
        assert list(row.feature_cs) == pytest.approx(expected, abs=1e-12)
    # smaller perturbations stay more aligned
    assert min(result.rows[1].parameter_cs) > max(result.rows[0].parameter_cs)

    data = json.loads(result.files["json"].read_text())
    assert [r["backbone"] for r in data["rows"]] == ["pretext", "BiSSL"]
    assert data["rows"][0]["parameter_cs_mean"] == pytest.approx(
        sum(result.rows[0].parameter_cs) / 2
    )
    assert "| BiSSL | 2 |" in result.files["md"].read_text()
    assert result.files["csv"].read_text().count("\n") == 1 + 2 * 2 * 2
    with Image.open(result.files["tsne"]) as image:
        assert image.format == "PNG"
