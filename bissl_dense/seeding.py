"""Per-draw random seeds, so that data order and augmentations survive restarts.

A resumed run must replay the same images *and* the same random crops as an uninterrupted one.
Data-loader workers own their random state, which a restarted run cannot recover, so every draw
gets its own seed, derived from (run seed, epoch or batch number, position), and the dataset
applies its random transforms under that seed (:func:`seeded_rng`). Framework free: used by the
mmengine samplers and by the BiSSL batch stacks alike.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch

__all__ = ["draw_seed", "seeded_rng"]


def draw_seed(run_seed: int, epoch: int, position: int) -> int:
    """A well-mixed 63-bit seed for one draw, independent of workers and restarts."""
    state = np.random.SeedSequence([run_seed & 0xFFFFFFFF, epoch, position]).generate_state(
        2, dtype=np.uint32
    )
    return (int(state[0]) << 31) ^ int(state[1])


@contextmanager
def seeded_rng(seed: int) -> Iterator[None]:
    """Run a block under ``seed`` for torch, ``random`` and numpy, restoring the outer state."""
    # The legacy global numpy RNG is seeded on purpose: augmentations may draw from it.
    py_state = random.getstate()
    np_state = np.random.get_state()  # noqa: NPY002
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        random.seed(seed)
        np.random.seed(seed % (2**32))  # noqa: NPY002
        try:
            yield
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)  # noqa: NPY002
