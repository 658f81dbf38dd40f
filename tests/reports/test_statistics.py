"""The exact permutation test against a brute-force enumeration in exact arithmetic and scipy."""

from __future__ import annotations

import itertools
import math
from fractions import Fraction

import numpy as np
import pytest
from scipy import stats

from bissl_dense.reports.statistics import exact_permutation_test, summarize


def _brute_force_p(x: list[str], y: list[str]) -> Fraction:
    """Enumerate all C(n+m, n) splits in exact integer arithmetic (so ties are exact too).

    The decimal strings are scaled to integers; n·m·(mean_x − mean_y) = m·sum_x − n·sum_y.
    """
    exact = [Fraction(v) for v in x + y]
    scale = math.lcm(*(v.denominator for v in exact))
    pooled = [int(v * scale) for v in exact]
    n, m = len(x), len(y)
    total = sum(pooled)

    observed = abs(m * sum(pooled[:n]) - n * (total - sum(pooled[:n])))
    splits = np.array(list(itertools.combinations(pooled, n)), dtype=np.int64)  # exact integers
    assert len(splits) == math.comb(n + m, n)
    extreme = int(
        np.count_nonzero(np.abs(m * splits.sum(1) - n * (total - splits.sum(1))) >= observed)
    )
    return Fraction(extreme, len(splits))


# Accuracies as decimal strings: exact in Fraction, and with many ties (equal values, and
# different values giving the same group mean).
CASES = [
    (["71.2", "70.8", "71.5", "70.9", "71.2"], ["70.1", "70.4", "69.9", "70.4", "70.3"]),
    (["1", "1", "2", "2", "3"], ["2", "2", "3", "3", "3"]),  # heavy ties
    (["0.5", "0.5", "0.5"], ["0.5", "0.5", "0.5", "0.5"]),  # all equal: p = 1
    (["3.1", "2.9", "3.3", "2.7"], ["2.0", "2.2", "2.1", "3.0", "2.9", "2.5"]),  # unequal sizes
    (["9.0", "8.5"], ["1.0", "2.0", "3.0"]),
    (["9.0"], ["1.0", "2.0", "3.0"]),  # a single result: 4 splits
    (["0.3", "0.1", "0.2"], ["0.3", "0.1", "0.2"]),  # identical samples: p = 1
]


@pytest.mark.parametrize(("x", "y"), CASES)
def test_equals_brute_force_enumeration(x: list[str], y: list[str]) -> None:
    expected = _brute_force_p(x, y)
    got = exact_permutation_test([float(v) for v in x], [float(v) for v in y])
    # p is a count over C(n+m, n): it must be the same count, not merely close.
    splits = math.comb(len(x) + len(y), len(x))
    assert round(got * splits) == expected * splits
    assert got == pytest.approx(float(expected), abs=1e-12)
    assert exact_permutation_test([float(v) for v in y], [float(v) for v in x]) == got


def _scipy_two_sided(x: np.ndarray, y: np.ndarray) -> float:
    return stats.permutation_test(
        (x, y),
        lambda a, b, axis: np.mean(a, axis=axis) - np.mean(b, axis=axis),
        permutation_type="independent",
        n_resamples=np.inf,  # enumerates all splits
        alternative="two-sided",
        vectorized=True,
    ).pvalue


def test_paper_sizes_match_brute_force_with_ties() -> None:
    """10 + 10 results rounded to 0.1 like reported accuracies: many tied splits."""
    rng = np.random.default_rng(3)
    x = np.round(rng.normal(71.0, 0.4, 10), 1)
    y = np.round(rng.normal(70.6, 0.4, 10), 1)
    got = exact_permutation_test(x, y)
    expected = _brute_force_p([f"{v:.1f}" for v in x], [f"{v:.1f}" for v in y])
    assert got * math.comb(20, 10) == expected * math.comb(20, 10)  # the same count of splits
    # scipy's tie tolerance (100 eps relative to the statistic) misses tied splits here: the
    # reason this module counts itself (see its docstring)
    assert _scipy_two_sided(x, y) < got


def test_paper_sizes_match_scipy_without_ties() -> None:
    """Untied 10 + 10 results: the same all-splits test as scipy's exact two-sided one."""
    rng = np.random.default_rng(4)
    for size, shift in ((10, 0.3), (6, 0.0), (7, 0.8)):
        x, y = rng.normal(71.0 + shift, 0.4, size), rng.normal(71.0, 0.4, size)
        got = exact_permutation_test(x, y)
        assert got == pytest.approx(_scipy_two_sided(x, y), abs=1e-12)
        assert 2 / math.comb(2 * size, size) <= got <= 1


def test_smallest_possible_p_for_complete_separation() -> None:
    x = [10.0, 11.0, 12.0, 13.0]
    y = [1.0, 2.0, 3.0, 4.0]
    # Only the observed split and its mirror reach |difference| = 9.
    assert exact_permutation_test(x, y) == pytest.approx(2 / math.comb(8, 4))


@pytest.mark.parametrize(
    ("x", "y", "message"),
    [
        ([], [1.0, 2.0], "x is empty"),
        ([1.0], [], "y is empty"),
        ([1.0, float("nan")], [1.0], "NaN"),
        ([[1.0, 2.0]], [1.0], "1-D"),
    ],
)
def test_refuses_bad_input_clearly(x: list, y: list, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        exact_permutation_test(x, y)


def test_refuses_infeasible_enumeration() -> None:
    with pytest.raises(ValueError, match="155117520 splits"):
        exact_permutation_test(np.arange(15.0), np.arange(15.0))


def test_summarize() -> None:
    summary = summarize([1.0, 2.0, 4.0])
    assert summary.n == 3
    assert summary.mean == pytest.approx(7 / 3)
    assert summary.std == pytest.approx(
        math.sqrt(((1 - 7 / 3) ** 2 + (2 - 7 / 3) ** 2 + (4 - 7 / 3) ** 2) / 2)
    )
    assert math.isnan(summarize([5.0]).std)
    with pytest.raises(ValueError, match="empty"):
        summarize([])
