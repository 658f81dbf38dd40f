"""The augmentation part of the pretext benchmark runs and reports consistent figures (tiny)."""

from __future__ import annotations

import pytest

from bissl_dense.benchmarks import pretext


def test_augmentation_benchmark_reports_rates_and_their_ratio() -> None:
    result = pretext.augmentation_benchmark(image_size=16, images=8, source_size=24)
    assert result["before"] > 0 and result["after"] > 0
    assert result["speedup"] == pytest.approx(result["after"] / result["before"])
    assert result["before_wall"] > 0 and result["after_wall"] > 0
