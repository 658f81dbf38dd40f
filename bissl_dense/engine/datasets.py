"""Unlabeled image data for pretext pretraining, with reproducible augmentation draws.

Resume must replay the same images *and* the same random crops as an uninterrupted run (task
issue 4, "Resume"). DataLoader workers own their random state, which a restarted run cannot
recover, so the sampler hands each draw its own seed, derived from (run seed, epoch, position in
the epoch); the dataset applies the augmentation under that seed. Data order and augmentation
then depend only on the step count, not on workers, restarts or how many batches were skipped.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from mmengine.dist import get_dist_info, sync_random_seed
from mmengine.registry import DATA_SAMPLERS, DATASETS
from PIL import Image
from torch.utils.data import Dataset, Sampler

from bissl_dense.engine.file_index import FileIndex
from bissl_dense.errors import DataError
from bissl_dense.pretext.transforms import PretextAugmentation
from bissl_dense.seeding import draw_seed, seeded_rng

IMAGE_EXTENSIONS: tuple[str, ...] = (
    ".jpg",
    ".jpeg",
    ".png",
    ".bmp",
    ".ppm",
    ".pgm",
    ".tif",
    ".tiff",
    ".webp",
)

SeededIndex = tuple[int, int]
"""``(dataset index, augmentation seed)`` as yielded by :class:`SeededSampler`."""


def find_images(
    root: Path,
    extensions: Sequence[str] = IMAGE_EXTENSIONS,
    cache_dir: str | Path | None = None,
    use_cache: bool = True,
) -> FileIndex:
    """All image files under ``root`` (recursive, sorted, case-insensitive extensions).

    A compact :class:`FileIndex` (paths in one byte buffer, cached across runs; file_index.py),
    not a list of ``Path`` objects: ImageNet's 1.28M files would cost ~400 MB per process.
    """
    return FileIndex.build(root, extensions, cache_dir=cache_dir, use_cache=use_cache)


@DATASETS.register_module()
class PretextImageFolder(Dataset):
    """Every image under ``data_root`` (any depth), returned as two augmented views.

    An ImageFolder root (``<root>/<class>/*.jpg``) works too; the class folders are ignored.
    Point ``data_root`` at the training split (e.g. ``.../train``) so that validation and test
    images stay out of pretraining.

    Items are ``{"inputs": [view1, view2]}`` so that mmengine's collate functions stack them
    into the ``inputs`` argument of :meth:`PretextMethod.forward`.
    """

    def __init__(
        self,
        data_root: str | Path,
        augmentation: dict[str, Any] | None = None,
        extensions: Sequence[str] = IMAGE_EXTENSIONS,
        index_cache_dir: str | None = None,
    ) -> None:
        root = Path(data_root).expanduser()
        if not root.is_dir():
            raise DataError(
                f"pretext data root '{root}' does not exist or is not a directory; set it with "
                "--cfg-options train_dataloader.dataset.data_root=/path/to/images"
            )
        self.data_root = root
        self.files = find_images(root, extensions, cache_dir=index_cache_dir)
        if not self.files:
            raise DataError(
                f"no images with extensions {', '.join(extensions)} found under '{root}' "
                "(searched recursively); check train_dataloader.dataset.data_root"
            )
        self.augmentation = PretextAugmentation(**(augmentation or {}))

    def __len__(self) -> int:
        return len(self.files)

    def load_image(self, index: int) -> Image.Image:
        path = self.files[index]
        try:
            with Image.open(path) as image:
                return image.convert("RGB")
        except OSError as error:
            raise DataError(f"cannot read image '{path}': {error}") from error

    def __getitem__(self, item: int | SeededIndex) -> dict[str, list[torch.Tensor]]:
        if isinstance(item, tuple):
            index, seed = item
            image = self.load_image(index)
            with seeded_rng(seed):
                view1, view2 = self.augmentation(image)
        else:
            view1, view2 = self.augmentation(self.load_image(item))
        return {"inputs": [view1, view2]}


@DATA_SAMPLERS.register_module()
class SeededSampler(Sampler):
    """Distributed epoch sampler yielding ``(index, augmentation seed)`` pairs.

    Same partitioning as mmengine's ``DefaultSampler`` (shuffle with ``seed + epoch``, pad to a
    multiple of the world size, rank ``r`` takes every ``world_size``-th index from ``r``), plus
    :meth:`set_start`, which skips the first draws of the epoch without loading them, so a resumed
    run continues mid-epoch instantly.
    """

    def __init__(
        self,
        dataset: Dataset,
        shuffle: bool = True,
        seed: int | None = None,
        round_up: bool = True,
    ) -> None:
        self.rank, self.world_size = get_dist_info()
        self.dataset = dataset
        self.shuffle = shuffle
        self.seed = sync_random_seed() if seed is None else int(seed)
        self.round_up = round_up
        self.epoch = 0
        self.start = 0
        size = len(dataset)  # type: ignore[arg-type]
        if round_up:
            self.num_samples = math.ceil(size / self.world_size)
            self.total_size = self.num_samples * self.world_size
        else:
            self.num_samples = math.ceil((size - self.rank) / self.world_size)
            self.total_size = size

    def epoch_positions(self) -> list[int]:
        """Global positions (into the padded epoch order) that belong to this rank."""
        return list(range(self.rank, self.total_size, self.world_size))

    def epoch_order(self) -> list[int]:
        size = len(self.dataset)  # type: ignore[arg-type]
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(size, generator=generator).tolist()
        else:
            order = list(range(size))
        if self.round_up and self.total_size > size:
            order = (order * math.ceil(self.total_size / size))[: self.total_size]
        return order

    def __iter__(self) -> Iterator[SeededIndex]:
        order = self.epoch_order()
        for position in self.epoch_positions()[self.start :]:
            yield order[position], draw_seed(self.seed, self.epoch, position)

    def __len__(self) -> int:
        return self.num_samples

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def set_start(self, start: int) -> None:
        """Skip the first ``start`` draws of this rank in the following epochs' iteration."""
        if not 0 <= start <= self.num_samples:
            raise ValueError(f"start must be in [0, {self.num_samples}], got {start}")
        self.start = start
