"""Batch sources: the same images and augmentations after a restart, with or without workers."""

from __future__ import annotations

import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision.transforms import v2

from bissl_dense.stage import SeededBatchStack, SeededDataset, batch_source


class _Images(Dataset):
    def __init__(self, n: int = 24) -> None:
        g = torch.Generator().manual_seed(0)
        self.images = [
            Image.fromarray((torch.rand(12, 12, 3, generator=g) * 255).byte().numpy())
            for _ in range(n)
        ]

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        return self.images[i], i % 3


def _dataset() -> SeededDataset:
    transform = v2.Compose([v2.RandomResizedCrop(8, scale=(0.3, 1.0)), v2.PILToTensor()])
    return SeededDataset(_Images(), transform)


def test_seeded_stack_restart_reproduces_indices_and_seeds() -> None:
    full = SeededBatchStack(24, 4, stage_length=3, seed=5)
    first = [b for _, b in zip(range(10), full)]
    resumed = SeededBatchStack(24, 4, stage_length=3, seed=5, start=6)
    assert [b for _, b in zip(range(4), resumed)] == first[6:10]
    seeds = [s for batch in first for _, s in batch]
    assert len(set(seeds)) == len(seeds)  # every draw has its own augmentation seed


def test_ranks_split_the_global_batch_with_distinct_seeds() -> None:
    ranks = [SeededBatchStack(24, 2, 3, seed=1, rank=r, world_size=2) for r in range(2)]
    single = SeededBatchStack(24, 4, 3, seed=1)
    for b0, b1, union in zip(*ranks, single):
        assert [i for i, _ in b0 + b1] == [i for i, _ in union]
        assert b0 + b1 == union  # the same seeds too: augmentation does not depend on the ranks
        break


def test_batch_source_same_batches_with_workers_and_after_restart() -> None:
    def take(source, start: int, n: int):
        it = source(start)
        return [next(it) for _ in range(n)]

    plain = batch_source(_dataset(), batch_size=4, stage_length=3, seed=2)
    workers = batch_source(_dataset(), batch_size=4, stage_length=3, seed=2, num_workers=2)
    reference = take(plain, 0, 7)
    for got, want in zip(take(workers, 0, 7), reference, strict=True):
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    for got, want in zip(take(plain, 4, 3), reference[4:], strict=True):
        assert torch.equal(got[0], want[0])
    # the crops do differ between draws of the same image (augmentation is applied)
    assert not all(torch.equal(a[0], b[0]) for a, b in zip(reference, reference[1:]))
