"""Batch sources for the two BiSSL levels, reproducible across restarts (SPEC §3).

Each level draws from its own :class:`~bissl_dense.core.BatchStack` (reshuffled only when the next
stage would not fit). On top of the indices, every draw carries its own augmentation seed,
derived from (run seed, batch number, position in the global batch), and the dataset applies its
random transform under that seed. A resumed run that restarts the stack at the number of batches
consumed therefore sees the same images *and* the same crops as an uninterrupted one, whatever
the number of data-loader workers.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from bissl_dense.core import BatchStack
from bissl_dense.seeding import draw_seed, seeded_rng

__all__ = ["SeededBatchStack", "SeededDataset", "batch_source", "move_to_device"]


class SeededBatchStack(BatchStack):
    """A :class:`BatchStack` yielding ``[(index, augmentation seed), ...]`` per batch."""

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:  # type: ignore[override]
        for number, indices in enumerate(super().__iter__(), start=self.start):
            first = self.rank * self.batch_size
            yield [
                (index, draw_seed(self.seed, number, first + position))
                for position, index in enumerate(indices)
            ]


class SeededDataset(Dataset):
    """``dataset[index]`` with ``transform`` applied under the draw's seed.

    Items of ``dataset`` are ``(image, target)`` pairs or single images; ``transform`` applies
    to the image. Indexing with a plain ``int`` uses the current global random state.
    """

    def __init__(self, dataset: Dataset, transform: Callable[[Any], Any] | None = None) -> None:
        self.dataset = dataset
        self.transform = transform

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def _apply(self, item: Any) -> Any:
        if self.transform is None:
            return item
        if isinstance(item, tuple) and len(item) == 2:
            return self.transform(item[0]), item[1]
        return self.transform(item)

    def __getitem__(self, item: int | tuple[int, int]) -> Any:
        if isinstance(item, tuple):
            index, seed = item
            with seeded_rng(seed):
                return self._apply(self.dataset[index])
        return self._apply(self.dataset[item])


def move_to_device(batch: Any, device: torch.device | str | None) -> Any:
    """``batch`` with every tensor moved to ``device`` (containers rebuilt; ``None``: as is)."""
    if device is None:
        return batch
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, Mapping):
        return {k: move_to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, tuple):
        return tuple(move_to_device(v, device) for v in batch)
    if isinstance(batch, list):
        return [move_to_device(v, device) for v in batch]
    return batch


def batch_source(
    dataset: Dataset,
    *,
    batch_size: int,
    stage_length: int,
    seed: int,
    rank: int = 0,
    world_size: int = 1,
    num_workers: int = 0,
    collate_fn: Callable[[Sequence[Any]], Any] | None = None,
    device: torch.device | str | None = None,
    pin_memory: bool = False,
) -> Callable[[int], Iterator[Any]]:
    """A factory ``start -> endless iterator of batches`` for :class:`BilevelTrainer`.

    ``dataset`` must accept ``(index, seed)`` items (e.g. :class:`SeededDataset`).
    ``batch_size`` is per process; under data parallelism rank ``r`` takes its slice of every
    global batch. ``stage_length`` is N_L + 1 for the lower level (N_L steps and the Hessian
    batch) and N_U for the upper one.
    """

    def make(start: int) -> Iterator[Any]:
        stack = SeededBatchStack(
            len(dataset),  # type: ignore[arg-type]
            batch_size,
            stage_length,
            seed=seed,
            rank=rank,
            world_size=world_size,
            start=start,
        )
        loader = DataLoader(
            dataset,
            batch_sampler=stack,
            num_workers=num_workers,
            collate_fn=collate_fn,
            pin_memory=pin_memory,
            # Its own generator: a DataLoader iterator otherwise draws its workers' base seed
            # from the global torch RNG, so creating the iterators at another point (a resumed
            # run) would shift every later random draw of the training step (e.g. RoI sampling).
            generator=torch.Generator().manual_seed(seed),
        )
        for batch in loader:
            yield move_to_device(batch, device)

    def shuffle_start(number: int) -> int:  # where the Hessian batch of reference parity lies
        stack = BatchStack(len(dataset), batch_size, stage_length, seed, rank, world_size)  # type: ignore[arg-type]
        return stack.shuffle_start(number)

    make.shuffle_start = shuffle_start  # type: ignore[attr-defined]
    return make
