"""Per-level stacks of shuffled batches (SPEC §3).

Each BiSSL level draws its batches in order from its own shuffled stack. A stack is reshuffled
only when fewer batches remain than the next stage needs (N_L + 1 lower batches: N_L steps and
the Hessian batch; N_U upper batches), so a stage never straddles two shuffles and there is no
reshuffle at every alternation. A data set too small to fill one stage is reshuffled whenever it
runs out.

The stack is a pure function of ``(seed, batches consumed)``: a ``DataLoader`` that prefetches ahead
does not change what a resumed run sees, as long as the resume starts the stack at the number of
batches the training loop actually consumed (``BatchStack(..., start=consumed)``).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from typing import TypeVar

import torch

__all__ = ["BatchStack", "iterate_batches"]

T = TypeVar("T")


class BatchStack:
    """An endless, stage-aware sequence of batches of sample indices.

    Usable directly as a ``torch.utils.data.DataLoader`` ``batch_sampler``.

    Args:
        num_samples: size of the data set.
        batch_size: samples per batch on this rank.
        stage_length: batches one stage consumes (N_L + 1 for the lower level, N_U for the upper).
        seed: the permutation of shuffle ``e`` is ``randperm`` seeded with ``seed + e``.
        rank, world_size: under data parallelism, a global batch of ``batch_size · world_size``
            indices is drawn and each rank takes its contiguous slice, so the ranks' batches
            together are exactly the batch a single process with the global batch size would see.
        start: number of batches already consumed (resume).
    """

    def __init__(
        self,
        num_samples: int,
        batch_size: int,
        stage_length: int,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        start: int = 0,
    ) -> None:
        if batch_size < 1 or stage_length < 1 or world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(
                f"invalid BatchStack(batch_size={batch_size}, stage_length={stage_length}, "
                f"rank={rank}, world_size={world_size})"
            )
        self.global_batch_size = batch_size * world_size
        self.batches_per_shuffle = num_samples // self.global_batch_size
        if self.batches_per_shuffle == 0:
            raise ValueError(
                f"the data set has {num_samples} samples, fewer than one global batch of "
                f"{self.global_batch_size} ({batch_size} per rank x {world_size} ranks); "
                "lower the batch size or use more data"
            )
        self.num_samples = num_samples
        self.batch_size = batch_size
        self.stage_length = stage_length
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.start = start

    def walk(self) -> Iterator[tuple[int, int]]:
        """(shuffle number, batch position within that shuffle) of every batch, from the first."""
        per, stage = self.batches_per_shuffle, self.stage_length
        shuffle, pos, drawn = 0, 0, 0
        while True:
            at_stage_start = drawn % stage == 0
            if (at_stage_start and per >= stage and per - pos < stage) or pos == per:
                # The next stage would not fit in what is left (or, for a data set smaller than a
                # stage, nothing is left): reshuffle.
                shuffle, pos = shuffle + 1, 0
            yield shuffle, pos
            pos, drawn = pos + 1, drawn + 1

    def shuffle_start(self, number: int) -> int:
        """The number of the first batch of the shuffle that batch ``number`` belongs to."""
        start = 0
        for drawn, (_, pos) in enumerate(self.walk()):
            if pos == 0:
                start = drawn
            if drawn == number:
                return start
        raise AssertionError("unreachable: walk() is endless")

    def _permutation(self, shuffle: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed(self.seed + shuffle)
        return torch.randperm(self.num_samples, generator=generator)

    def __iter__(self) -> Iterator[list[int]]:
        current, perm = -1, torch.empty(0, dtype=torch.long)
        for shuffle, pos in itertools.islice(self.walk(), self.start, None):
            if shuffle != current:
                current, perm = shuffle, self._permutation(shuffle)
            first = pos * self.global_batch_size + self.rank * self.batch_size
            yield perm[first : first + self.batch_size].tolist()

    def state_dict(self) -> dict[str, int]:
        return {"seed": self.seed, "start": self.start}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.seed, self.start = int(state["seed"]), int(state["start"])


def iterate_batches(stack: BatchStack, fetch: Callable[[list[int]], T]) -> Iterator[T]:
    """Endless batches ``fetch(indices)`` in the stack's order (no worker processes)."""
    for indices in stack:
        yield fetch(indices)
