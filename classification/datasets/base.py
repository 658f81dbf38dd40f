"""The pieces every dataset reader shares: the error type, a pool of items, the dataset object.

A reader (one per dataset family, see ``readers.py``, ``cifar.py``, ``cub.py``, ``voc.py``) turns
the files under ``root`` into a :class:`Catalog`: the class names and one :class:`Pool` per
*official* split (``train``/``val``/``test``, or ``all`` for Caltech-101, which has none).
``build.py`` then cuts the pools into the four splits a run uses (SPEC §5) and wraps each in a
:class:`DatasetSplit`.

Items are identified by a stable string id (the image's path relative to the dataset folder,
or ``<batch file>:<row>`` for CIFAR) rather than by position, so split files stay valid however
the file system happens to list a folder.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from bissl_dense.errors import DataError, UserError

__all__ = [
    "SPLITS",
    "Catalog",
    "DatasetSplit",
    "DatasetLayoutError",
    "Pool",
    "SplitFileError",
    "load_rgb",
]

# The four splits a run asks for; ``trainval`` is ``train`` and ``val`` together.
SPLITS: tuple[str, ...] = ("train", "val", "trainval", "test")


class DatasetLayoutError(DataError):
    """A dataset that is missing, incomplete or not laid out as expected.

    The message names the path that was looked at and the layout that was expected there, so a
    user can fix the folder (or pass ``--download``) without reading the code.
    """


class SplitFileError(UserError, ValueError):
    """A saved split file that cannot be used with the dataset on disk (SPEC §5 splits)."""


def load_rgb(path: str | os.PathLike[str]) -> Image.Image:
    """Open an image file as a fully loaded RGB ``PIL.Image`` and close the file.

    Some Caltech-101 and SUN397 images are grayscale or CMYK; every model here expects RGB.
    """
    with Image.open(path) as image:
        return image.convert("RGB")


@dataclass
class Pool:
    """The items of one official split as read from disk.

    Exactly one of ``files`` (image paths) and ``arrays`` (``N x H x W x 3`` uint8, CIFAR's
    in-memory batches) is set. ``targets`` holds an ``int`` per item, or a multi-hot
    ``torch.Tensor`` for a multi-label dataset; ``difficult`` (VOC only) marks the classes that
    are present in an image only through objects flagged *difficult*.
    """

    ids: list[str]
    targets: list[Any]
    files: list[Path] | None = None
    arrays: np.ndarray | None = None
    difficult: list[torch.Tensor] | None = None

    def __post_init__(self) -> None:
        if (self.files is None) == (self.arrays is None):
            raise ValueError("a Pool holds either image files or image arrays")
        images = self.files if self.files is not None else self.arrays
        sizes = {len(self.ids), len(self.targets), len(images)}  # type: ignore[arg-type]
        if self.difficult is not None:
            sizes.add(len(self.difficult))
        if len(sizes) != 1:
            raise ValueError(f"Pool fields disagree on the number of items: {sorted(sizes)}")

    def __len__(self) -> int:
        return len(self.ids)

    def image(self, index: int) -> Image.Image:
        if self.arrays is not None:
            return Image.fromarray(self.arrays[index])
        assert self.files is not None
        return load_rgb(self.files[index])


@dataclass
class Catalog:
    """What a reader found: class names in label order and the official splits as pools."""

    classes: list[str]
    pools: dict[str, Pool]
    multilabel: bool = False
    folder: Path | None = None  # the dataset folder that was read (for messages)
    notes: list[str] = field(default_factory=list)


class DatasetSplit(Dataset):
    """One split of a classification dataset: ``(image, target)`` items.

    ``image`` is an RGB ``PIL.Image`` (or whatever ``transform`` makes of it); ``target`` is the
    class index, or for VOC2007 a float multi-hot ``torch.Tensor`` over the 20 classes.

    Attributes: ``name``, ``split``, ``classes`` (names in label order), ``targets`` (one per
    item, as returned by ``__getitem__``), ``ids`` (stable item ids), ``multilabel``,
    ``difficult`` (VOC2007: per item, a bool tensor of the classes present only as difficult
    objects, for an evaluation that ignores them as the VOC devkit does; ``None`` elsewhere),
    ``split_file`` (the bissl split file used or written, or the authors' index file of this
    split, if any), ``split_files`` (every split file read or written for the dataset) and
    ``split_convention`` (where the members come from: one of
    :data:`~classification.datasets.splits.CONVENTIONS`).
    """

    def __init__(
        self,
        name: str,
        split: str,
        classes: Sequence[str],
        members: Sequence[tuple[Pool, Sequence[int]]],
        transform: Callable[[Image.Image], Any] | None = None,
        multilabel: bool = False,
        split_file: Path | None = None,
        split_convention: str = "official",
        split_files: Sequence[Path] = (),
    ) -> None:
        self.name = name
        self.split = split
        self.classes = list(classes)
        self.multilabel = multilabel
        self.transform = transform
        self.split_file = split_file
        self.split_convention = split_convention
        self.split_files = tuple(split_files)
        self._pools = [pool for pool, _ in members]
        self._refs: list[tuple[int, int]] = [
            (p, int(i)) for p, (_, indices) in enumerate(members) for i in indices
        ]
        self.ids = [self._pools[p].ids[i] for p, i in self._refs]
        self.targets = [self._pools[p].targets[i] for p, i in self._refs]
        if all(pool.difficult is not None for pool in self._pools) and self._pools:
            self.difficult: list[torch.Tensor] | None = [
                self._pools[p].difficult[i]  # type: ignore[index]
                for p, i in self._refs
            ]
        else:
            self.difficult = None

    def __len__(self) -> int:
        return len(self._refs)

    def __getitem__(self, index: int) -> tuple[Any, Any]:
        p, i = self._refs[index]
        image: Any = self._pools[p].image(i)
        if self.transform is not None:
            image = self.transform(image)
        return image, self.targets[index]

    def files(self) -> list[Path] | None:
        """The image file of every item, or ``None`` for an in-memory dataset (CIFAR)."""
        if any(pool.files is None for pool in self._pools):
            return None
        return [self._pools[p].files[i] for p, i in self._refs]  # type: ignore[index]

    def class_counts(self) -> list[int]:
        """Items per class (for a multi-label dataset: images in which the class is present)."""
        counts = np.zeros(len(self.classes), dtype=np.int64)
        for target in self.targets:
            if self.multilabel:
                counts += np.asarray(target, dtype=bool)
            else:
                counts[int(target)] += 1
        return counts.tolist()

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(name={self.name!r}, split={self.split!r}, "
            f"items={len(self)}, classes={len(self.classes)})"
        )
