"""The registered mmengine dataset of every classification stage.

``ClassificationDataset`` reads one split of a data set from disk, either one of the 12
benchmark data sets (through :func:`classification.datasets.build_dataset`, with the paper's
splits, SPEC §5) or a plain ImageFolder tree ``<root>/{train,val,test}/<class>/*`` (``name=
"imagefolder"``, e.g. the generated data of :mod:`bissl_dense.datasets.synthetic`), and applies
the training or evaluation transform of SPEC §4.

Items are ``(image tensor, target tensor)``. Indexing with ``(index, seed)`` (what
:class:`~bissl_dense.engine.datasets.SeededSampler` and the BiSSL batch stacks yield) applies the
random transform under that seed, so resumed runs replay the same crops.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from mmengine.registry import DATASETS
from PIL import Image
from torch.utils.data import Dataset
from torchvision.datasets import ImageFolder

from bissl_dense.errors import DataError
from bissl_dense.seeding import seeded_rng
from classification.transforms import build_transform

__all__ = ["ClassificationDataset", "ImageFolderSplits"]

SPLITS = ("train", "val", "trainval", "test")


class ImageFolderSplits(Dataset):
    """``<root>/<split>/<class>/<image>``; ``trainval`` is ``train`` followed by ``val``.

    Classes are the sorted folder names of ``<root>/train`` and must be the same in every split.
    """

    def __init__(self, root: str | Path, split: str) -> None:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        root = Path(root).expanduser()
        parts = ("train", "val") if split == "trainval" else (split,)
        folders: list[ImageFolder] = []
        for part in parts:
            path = root / part
            if not path.is_dir():
                raise DataError(
                    f"ImageFolder split '{path}' does not exist; expected "
                    f"{root}/{{train,val,test}}/<class name>/<image files>"
                )
            try:
                folders.append(ImageFolder(str(path)))
            except (FileNotFoundError, RuntimeError) as error:
                raise DataError(f"cannot read the ImageFolder split '{path}': {error}") from error
        self.classes: list[str] = folders[0].classes
        for folder, part in zip(folders, parts, strict=True):
            if folder.classes != self.classes:
                raise DataError(
                    f"'{root / part}' has classes {folder.classes}, but {self.classes} were "
                    f"found in '{root / parts[0]}'; every split needs the same class folders"
                )
        self.samples: list[tuple[str, int]] = [s for f in folders for s in f.samples]
        self.targets: list[int] = [t for _, t in self.samples]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Image.Image, int]:
        path, target = self.samples[index]
        try:
            with Image.open(path) as image:
                return image.convert("RGB"), target
        except OSError as error:
            raise DataError(f"cannot read image '{path}': {error}") from error


def open_split(
    name: str,
    data_root: str | Path,
    split: str,
    seed: int = 0,
    split_dir: str | Path | None = None,
    download: bool = False,
) -> Any:
    """The un-transformed split (items ``(PIL image, target)``) of data set ``name``."""
    if name == "imagefolder":
        return ImageFolderSplits(data_root, split)
    from classification.datasets import build_dataset

    kwargs: dict[str, Any] = {"seed": seed, "split_dir": split_dir}
    if download:
        kwargs["download"] = True
    return build_dataset(name, data_root, split, **kwargs)


@DATASETS.register_module()
class ClassificationDataset(Dataset):
    """One split of a classification data set with the stage's transform.

    Args:
        name: ``imagefolder`` or one of the 12 benchmark names (``cifar10``, ``pets``, ...).
        data_root: the folder a user would give torchvision (or the ImageFolder root).
        split: ``train``, ``val``, ``trainval`` or ``test``.
        transform: ``"train"`` (random resized crop + flip) or ``"eval"`` (resize + centre crop).
        image_size, min_scale: SPEC §4: 96 px and 0.5.
        seed, split_dir: the validation hold-out's seed and where its split files live.
        download: let torchvision download the data set where it can.
    """

    def __init__(
        self,
        name: str,
        data_root: str,
        split: str,
        transform: str = "train",
        image_size: int = 96,
        min_scale: float = 0.5,
        seed: int = 0,
        split_dir: str | None = None,
        download: bool = False,
    ) -> None:
        self.name = name
        self.split = split
        self.base = open_split(name, data_root, split, seed, split_dir, download)
        self.transform = build_transform(transform, image_size, min_scale)
        self.classes: list[str] = list(self.base.classes)
        self.targets = self.base.targets
        if len(self.base) == 0:
            raise DataError(f"the {split} split of '{name}' under '{data_root}' is empty")

    def __len__(self) -> int:
        return len(self.base)

    @staticmethod
    def _target_tensor(target: Any) -> torch.Tensor:
        if isinstance(target, torch.Tensor):
            return target.float() if target.ndim else target.long()
        if isinstance(target, (list, tuple)):
            return torch.as_tensor(target, dtype=torch.float32)  # multi-hot (VOC2007)
        return torch.as_tensor(int(target), dtype=torch.long)

    def _load(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, target = self.base[index]
        return self.transform(image), self._target_tensor(target)

    def __getitem__(self, item: int | tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        if isinstance(item, tuple):
            index, seed = item
            with seeded_rng(seed):
                return self._load(index)
        return self._load(item)
