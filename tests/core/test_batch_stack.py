"""BatchStack: the reshuffle rule of SPEC §3, determinism, resume and data-parallel slicing."""

from __future__ import annotations

import itertools

import pytest

from bissl_dense.core import BatchStack


def _take(stack: BatchStack, n: int) -> list[list[int]]:
    return list(itertools.islice(iter(stack), n))


def test_reshuffles_only_when_a_stage_does_not_fit() -> None:
    # 10 samples, batches of 2 -> 5 batches per shuffle; stages of 3 batches: after one stage only
    # 2 batches remain, so every stage starts on a fresh shuffle and no stage straddles two.
    stack = BatchStack(num_samples=10, batch_size=2, stage_length=3, seed=0)
    walk = list(itertools.islice(stack.walk(), 9))
    assert walk == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2), (2, 0), (2, 1), (2, 2)]
    # stages of 2 from 5 batches: two stages fit, the third would not
    stack = BatchStack(num_samples=10, batch_size=2, stage_length=2, seed=0)
    walk = list(itertools.islice(stack.walk(), 8))
    assert walk == [(0, 0), (0, 1), (0, 2), (0, 3), (1, 0), (1, 1), (1, 2), (1, 3)]


def test_no_reshuffle_between_stages_that_fit() -> None:
    stack = BatchStack(num_samples=64, batch_size=2, stage_length=4, seed=3)
    batches = _take(stack, 32)  # 8 stages, all from the first shuffle
    flat = [i for b in batches for i in b]
    assert sorted(flat) == list(range(64))


def test_small_data_set_reshuffles_when_it_runs_out() -> None:
    stack = BatchStack(num_samples=4, batch_size=2, stage_length=3, seed=0)
    walk = list(itertools.islice(stack.walk(), 7))
    assert walk == [(0, 0), (0, 1), (1, 0), (1, 1), (2, 0), (2, 1), (3, 0)]
    batches = _take(stack, 6)
    for shuffle in range(3):  # each shuffle covers the data set once
        assert sorted(batches[2 * shuffle] + batches[2 * shuffle + 1]) == [0, 1, 2, 3]


def test_deterministic_and_seeded() -> None:
    a = _take(BatchStack(100, 8, 5, seed=7), 40)
    b = _take(BatchStack(100, 8, 5, seed=7), 40)
    c = _take(BatchStack(100, 8, 5, seed=8), 40)
    assert a == b and a != c


def test_resume_from_consumed_count() -> None:
    full = _take(BatchStack(50, 4, 3, seed=1), 30)
    stack = BatchStack(50, 4, 3, seed=1)
    stack.load_state_dict({"seed": 1, "start": 13})
    assert _take(stack, 17) == full[13:]
    assert BatchStack(50, 4, 3, seed=1, start=13).state_dict() == {"seed": 1, "start": 13}


def test_ranks_slice_the_global_batch() -> None:
    single = _take(BatchStack(40, 6, 4, seed=2), 12)
    rank0 = _take(BatchStack(40, 3, 4, seed=2, rank=0, world_size=2), 12)
    rank1 = _take(BatchStack(40, 3, 4, seed=2, rank=1, world_size=2), 12)
    assert [a + b for a, b in zip(rank0, rank1)] == single


def test_rejects_data_set_smaller_than_a_batch() -> None:
    with pytest.raises(ValueError, match="fewer than one global batch of 8"):
        BatchStack(num_samples=7, batch_size=4, stage_length=2, world_size=2)
