"""The comparison table: numbers from independent computations, all three formats round-trip."""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from bissl_dense.reports.tables import ComparisonTable, compare_arms, write_comparison

FT = [70.1, 70.4, 69.9, 70.4, 70.3]
BISSL = [71.2, 70.8, 71.5, 70.9, 71.2]
NOISY = [70.2, 70.0, 70.5, 70.3, 70.1]


def _reference_p(x: list[float], y: list[float]) -> float:
    """scipy's exact two-sided test (equal group sizes: the same definition as ours)."""
    return stats.permutation_test(
        (x, y),
        lambda a, b, axis: np.mean(a, axis=axis) - np.mean(b, axis=axis),
        permutation_type="independent",
        n_resamples=np.inf,
        vectorized=True,
    ).pvalue


def test_rows_hold_independently_computed_numbers() -> None:
    table = compare_arms({"bissl": BISSL, "ft": FT, "noisytune": NOISY}, reference="ft")
    assert [row.arm for row in table.rows] == ["ft", "bissl", "noisytune"]
    ft, bissl, noisy = table.rows
    assert ft.difference is None and ft.p_value is None and ft.significant is None
    assert bissl.mean == pytest.approx(np.mean(BISSL))
    assert bissl.std == pytest.approx(np.std(BISSL, ddof=1))
    assert bissl.difference == pytest.approx(np.mean(BISSL) - np.mean(FT))
    assert bissl.p_value == pytest.approx(_reference_p(BISSL, FT))
    assert noisy.p_value == pytest.approx(_reference_p(NOISY, FT))
    # 5 + 5 completely separated results: only 2 of the C(10, 5) = 252 splits are as extreme.
    assert bissl.p_value == pytest.approx(2 / 252)
    assert bissl.significant is True
    assert noisy.significant is (noisy.p_value < 0.05)
    assert noisy.significant is False


def test_markdown_marks_significance_and_formats() -> None:
    table = compare_arms({"ft": FT, "bissl": BISSL, "noisytune": NOISY}, metric="top-1 (%)")
    markdown = table.to_markdown(digits=2)
    lines = markdown.splitlines()
    assert lines[0] == "| arm | n | top-1 (%) (mean ± std) | Δ vs ft | p |"
    assert lines[2].startswith(f"| ft | 5 | {np.mean(FT):.2f} ± {np.std(FT, ddof=1):.2f} | — | — |")
    bissl_line = next(line for line in lines if line.startswith("| bissl "))
    assert f"{np.mean(BISSL) - np.mean(FT):+.2f}" in bissl_line
    assert bissl_line.endswith(" * |")
    noisy_line = next(line for line in lines if line.startswith("| noisytune "))
    assert " * |" not in noisy_line
    assert "p < 0.05" in markdown


def test_files_are_written_and_round_trip(tmp_path: Path) -> None:
    table = compare_arms({"ft": FT, "bissl": BISSL, "single": [70.0]})
    paths = write_comparison(table, tmp_path / "results", stem="cifar10")
    assert {p.name for p in paths.values()} == {"cifar10.md", "cifar10.csv", "cifar10.json"}
    assert paths["md"].read_text() == table.to_markdown()
    rows = list(csv.DictReader(io.StringIO(paths["csv"].read_text())))
    assert [r["arm"] for r in rows] == ["ft", "bissl", "single"]
    assert float(rows[1]["p_value"]) == pytest.approx(table.row("bissl").p_value)
    assert rows[0]["p_value"] == ""
    data = json.loads(paths["json"].read_text())  # strict JSON: a NaN std is written as null
    assert data["rows"][2]["std"] is None
    back = ComparisonTable.from_json(paths["json"].read_text())
    assert back.row("bissl") == table.row("bissl")
    assert math.isnan(back.row("single").std)
    # one result: 6 splits; with v the single value, |v − mean(others)| = |1.2 v − 84.22| is
    # 0.22 (observed, v = 70.0), 0.10, 0.26, 0.34, 0.26, 0.14: 4 of 6 are at least 0.22
    single = table.row("single")
    assert single.p_value == pytest.approx(4 / 6)
    assert (
        f"| single | 1 | 70.00 ± n/a | {70.0 - np.mean(FT):+.2f} | 0.6667 |" in table.to_markdown()
    )
    assert not list((tmp_path / "results").glob(".*.tmp"))  # no temporary files left


def test_clear_errors() -> None:
    with pytest.raises(ValueError, match="reference arm 'ft' has no results; arms with results"):
        compare_arms({"bissl": BISSL})
    with pytest.raises(ValueError, match="arm 'bissl': values is empty"):
        compare_arms({"ft": FT, "bissl": []})
    with pytest.raises(KeyError, match="no arm 'x'"):
        compare_arms({"ft": FT}).row("x")
