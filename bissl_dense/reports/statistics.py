"""Statistics of a comparison between arms: summaries and the exact permutation test (SPEC §4).

The paper (App. B.6) compares the 10 fine-tuning results of two arms with a two-sample
permutation test: pool the 20 values, assign 10 of them to the first group in every one of the
C(20, 10) = 184 756 possible ways, and report the proportion of assignments whose difference of
group means is at least as large as the observed one. ``exact_permutation_test`` does exactly
that for any group sizes.

Why not ``scipy.stats.permutation_test`` (which also enumerates every split with
``n_resamples=np.inf``): reported accuracies are rounded (71.2, 70.8, ...), so many splits tie
with the observed one exactly in decimal arithmetic, but their floating-point means differ by
rounding errors of order eps·|values|/|difference|. scipy treats values within 100·eps
*relative to the observed statistic* as ties, which is too tight for means of values around 70:
on 10 + 10 accuracies rounded to 0.1 it misses tied splits (measured: p = 0.0856 instead of the
exact 0.0898, tests/reports/test_statistics.py). Here the statistic of a split is its sum over
the first group (the difference of means is an increasing affine function of it), and sums
within 1e-9 of the data's scale count as ties, far above rounding and far below any difference
between results that means something.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["MAX_SPLITS", "TIE_TOLERANCE", "Summary", "exact_permutation_test", "summarize"]

#: Largest number of splits enumerated (C(24, 12) = 2.7 M takes seconds; C(30, 15) = 155 M
#: would take minutes and is refused: collect fewer results per arm or use a sampled test).
MAX_SPLITS = 10_000_000

#: Group sums closer than this times (group size · largest |value|) count as equal.
TIE_TOLERANCE = 1e-9

_CHUNK = 500_000  # splits per vectorised batch (bounds memory)


def _as_sample(values: Sequence[float] | np.ndarray, name: str) -> np.ndarray:
    """A 1-D float64 array of finite values, or a ValueError saying what is wrong with it."""
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1:
        raise ValueError(f"{name} must be a 1-D sequence of results, got shape {array.shape}")
    if array.size == 0:
        raise ValueError(
            f"{name} is empty: the permutation test needs at least one result per arm "
            "(did every seed of that arm fail?)"
        )
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} contains NaN or infinite results: {array.tolist()}")
    return array


def exact_permutation_test(
    x: Sequence[float] | np.ndarray,
    y: Sequence[float] | np.ndarray,
    *,
    max_splits: int = MAX_SPLITS,
) -> float:
    """Two-sided p-value of the difference of means of ``x`` and ``y``, over all splits.

    p = #{splits S of the pooled values into groups of sizes len(x), len(y) with
    |mean(S_x) − mean(S_y)| ≥ |mean(x) − mean(y)|} / C(n + m, n). The observed split is one of
    them, so p ≥ 1 / C(n + m, n); splits that tie with it count (see the module docstring).
    For equal group sizes this equals scipy's exact two-sided test up to its tie handling; for
    unequal sizes scipy's "two-sided" doubles the smaller one-sided tail instead, which is not
    the proportion the paper defines.
    """
    a = _as_sample(x, "x")
    b = _as_sample(y, "y")
    n, m = a.size, b.size
    splits = math.comb(n + m, n)
    if splits > max_splits:
        raise ValueError(
            f"an exact test of {n} + {m} results enumerates {splits} splits, more than "
            f"max_splits={max_splits}; pass a larger max_splits if you can wait, or compare fewer "
            "results per arm"
        )
    pooled = np.concatenate([a, b])
    # mean(S_x) − mean(S_y) = sum(S_x)·(1/n + 1/m) − total/m: compare |sum(S_x) − centre|.
    centre = pooled.sum() * n / (n + m)
    tolerance = TIE_TOLERANCE * n * max(float(np.abs(pooled).max()), 1e-300)
    threshold = abs(a.sum() - centre) - tolerance
    combinations = itertools.combinations(range(n + m), n)
    extreme = 0
    while True:
        chunk = itertools.chain.from_iterable(itertools.islice(combinations, _CHUNK))
        indices = np.fromiter(chunk, dtype=np.intp)
        if indices.size == 0:
            break
        sums = pooled[indices.reshape(-1, n)].sum(axis=1)
        extreme += int(np.count_nonzero(np.abs(sums - centre) >= threshold))
    return extreme / splits


@dataclass(frozen=True)
class Summary:
    """Mean, sample standard deviation (ddof=1; NaN for a single result) and count of an arm."""

    mean: float
    std: float
    n: int


def summarize(values: Sequence[float] | np.ndarray) -> Summary:
    """Summarise one arm's results as the paper's tables do (mean ± std over seeds)."""
    array = _as_sample(values, "values")
    std = float(np.std(array, ddof=1)) if array.size > 1 else float("nan")
    return Summary(mean=float(np.mean(array)), std=std, n=int(array.size))
