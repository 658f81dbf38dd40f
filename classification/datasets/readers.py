"""Readers for the datasets torchvision has a class for (Food-101, SUN397, Stanford Cars, FGVC
Aircraft, DTD, Oxford-IIIT Pet, Caltech-101, Flowers-102).

torchvision parses each dataset's metadata into file lists, labels and class names; a reader
checks the files torchvision needs *before* constructing its class (torchvision's own messages
name no path, and its Caltech101 creates ``<root>/caltech101`` as a side effect), then turns the
parsed lists into :class:`~classification.datasets.base.Pool` objects. Images are opened by
:func:`~classification.datasets.base.load_rgb` (RGB, file closed), not by torchvision's
``__getitem__``, which leaves Caltech-101's grayscale images grayscale.

The parsed lists live in torchvision's private attributes (``_image_files``, ``_labels``,
``_samples``); torchvision is pinned (requirements/pins.txt) and the tests read every dataset
through these readers, so a change there fails loudly instead of mislabelling silently.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torchvision.datasets as tvd

from classification.datasets.base import Catalog, DatasetLayoutError, Pool

__all__ = [
    "SUN397_PARTITION",
    "read_aircraft",
    "read_caltech101",
    "read_cars",
    "read_dtd",
    "read_flowers",
    "read_food101",
    "read_pets",
    "read_sun397",
    "require_dir",
    "require_file",
    "torchvision_reading",
]

SUN397_PARTITION = 1  # paper App. B.1: "the first splits are used" (DTD and SUN397)
DTD_PARTITION = 1


def require_file(path: Path, what: str) -> Path:
    if not path.is_file():
        raise DatasetLayoutError(f"{what} not found: {path}")
    return path


def require_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise DatasetLayoutError(f"{what} not found: {path}")
    return path


@contextlib.contextmanager
def torchvision_reading(cls: type, folder: Path) -> Iterator[None]:
    """Report a metadata file torchvision cannot parse as a layout error naming the folder."""
    try:
        yield
    except DatasetLayoutError:
        raise
    except (RuntimeError, ValueError, KeyError, IndexError, TypeError, OSError) as error:
        raise DatasetLayoutError(
            f"torchvision.datasets.{cls.__name__} could not read {folder}: "
            f"{type(error).__name__}: {error}"
        ) from error


def _relative_ids(files: Sequence[Path | str], base: Path, strip_suffix: bool = False) -> list[str]:
    ids = []
    for file in files:
        relative = Path(file).relative_to(base)
        ids.append((relative.with_suffix("") if strip_suffix else relative).as_posix())
    return ids


def _file_pool(files: Sequence[Path | str], labels: Sequence[int], ids: list[str]) -> Pool:
    return Pool(ids=ids, targets=[int(t) for t in labels], files=[Path(f) for f in files])


def _remap(labels: Sequence[int], local: Sequence[str], global_classes: Sequence[str]) -> list[int]:
    """Labels indexed into one split's class list, re-indexed into the dataset's class list.

    torchvision's DTD and OxfordIIITPet derive the class list from the items of the split they
    read, so a class missing from one split would shift every later label of that split."""
    position = {name: index for index, name in enumerate(global_classes)}
    return [position[local[label]] for label in labels]


# --------------------------------------------------------------------------------------------
# Food-101
# --------------------------------------------------------------------------------------------


def read_food101(root: Path) -> Catalog:
    folder = root / "food-101"
    for split in ("train", "test"):
        require_file(folder / "meta" / f"{split}.json", f"Food-101 {split} list")
    images = require_dir(folder / "images", "Food-101 image folder")
    pools, classes = {}, None
    for split in ("train", "test"):
        with torchvision_reading(tvd.Food101, folder):
            ds = tvd.Food101(str(root), split=split)
        classes = classes or list(ds.classes)
        labels = _remap(ds._labels, ds.classes, classes)
        ids = _relative_ids(ds._image_files, images, strip_suffix=True)
        pools[split] = _file_pool(ds._image_files, labels, ids)
    assert classes is not None
    return Catalog(classes=classes, pools=pools, folder=folder)


# --------------------------------------------------------------------------------------------
# SUN397 (torchvision has no partitions: the official Partitions/ files are read here)
# --------------------------------------------------------------------------------------------


def sun397_partition_dir(folder: Path) -> Path:
    """``SUN397/Partitions`` (Partitions.zip unpacked inside the SUN397 folder; the authors'
    reference code reads it there), or the partition files directly inside ``SUN397/``."""
    name = f"Training_{SUN397_PARTITION:02d}.txt"
    for candidate in (folder / "Partitions", folder):
        if (candidate / name).is_file():
            return candidate
    raise DatasetLayoutError(
        f"SUN397 partition file {name} not found in {folder / 'Partitions'} (nor in {folder})"
    )


def read_sun397(root: Path) -> Catalog:
    folder = root / "SUN397"
    require_file(folder / "ClassName.txt", "SUN397 class list")
    partitions = sun397_partition_dir(folder)
    with torchvision_reading(tvd.SUN397, folder):
        ds = tvd.SUN397(str(root))
    label_of = {
        path.relative_to(folder).as_posix(): label
        for path, label in zip(ds._image_files, ds._labels, strict=True)
    }
    pools = {}
    for split, prefix in (("train", "Training"), ("test", "Testing")):
        listing = require_file(
            partitions / f"{prefix}_{SUN397_PARTITION:02d}.txt", f"SUN397 {split} partition"
        )
        ids = [line.strip().lstrip("/") for line in listing.read_text().splitlines()]
        ids = [i for i in ids if i]
        missing = [i for i in ids if i not in label_of]
        if missing:
            raise DatasetLayoutError(
                f"{len(missing)} of the {len(ids)} images listed in {listing} are not under "
                f"{folder} (e.g. {folder / missing[0]})"
            )
        pools[split] = _file_pool([folder / i for i in ids], [label_of[i] for i in ids], ids)
    return Catalog(classes=list(ds.classes), pools=pools, folder=folder)


# --------------------------------------------------------------------------------------------
# Stanford Cars
# --------------------------------------------------------------------------------------------


def read_cars(root: Path) -> Catalog:
    folder = root / "stanford_cars"
    require_file(folder / "devkit" / "cars_meta.mat", "Stanford Cars class names")
    require_file(folder / "devkit" / "cars_train_annos.mat", "Stanford Cars train labels")
    require_file(folder / "cars_test_annos_withlabels.mat", "Stanford Cars test labels")
    require_dir(folder / "cars_train", "Stanford Cars train images")
    require_dir(folder / "cars_test", "Stanford Cars test images")
    pools, classes = {}, None
    for split in ("train", "test"):
        with torchvision_reading(tvd.StanfordCars, folder):
            ds = tvd.StanfordCars(str(root), split=split)
            classes = classes or [str(c) for c in ds.classes]
            files = [Path(path) for path, _ in ds._samples]
            labels = [int(label) for _, label in ds._samples]
        bad = [label for label in labels if not 0 <= label < len(classes)]
        if bad:
            raise DatasetLayoutError(
                f"Stanford Cars {split} labels run outside the {len(classes)} classes of "
                f"{folder / 'devkit' / 'cars_meta.mat'} (e.g. class {bad[0] + 1})"
            )
        pools[split] = _file_pool(files, labels, _relative_ids(files, folder))
    assert classes is not None
    return Catalog(classes=classes, pools=pools, folder=folder)


# --------------------------------------------------------------------------------------------
# FGVC Aircraft (variant level: 100 classes; official train / val / test)
# --------------------------------------------------------------------------------------------


def read_aircraft(root: Path) -> Catalog:
    folder = root / "fgvc-aircraft-2013b"
    data = folder / "data"
    require_file(data / "variants.txt", "FGVC Aircraft variant list")
    for split in ("train", "val", "test"):
        require_file(data / f"images_variant_{split}.txt", f"FGVC Aircraft {split} list")
    images = require_dir(data / "images", "FGVC Aircraft image folder")
    pools, classes = {}, None
    for split in ("train", "val", "test"):
        with torchvision_reading(tvd.FGVCAircraft, folder):
            ds = tvd.FGVCAircraft(str(root), split=split, annotation_level="variant")
        classes = classes or list(ds.classes)
        ids = _relative_ids(ds._image_files, images, strip_suffix=True)
        pools[split] = _file_pool(ds._image_files, ds._labels, ids)
    assert classes is not None
    return Catalog(classes=classes, pools=pools, folder=folder)


# --------------------------------------------------------------------------------------------
# DTD (partition 1; official train / val / test)
# --------------------------------------------------------------------------------------------


def read_dtd(root: Path) -> Catalog:
    folder = root / "dtd" / "dtd"  # torchvision's DTD unpacks dtd-r1.0.1.tar.gz into <root>/dtd
    labels_dir = folder / "labels"
    if not labels_dir.is_dir() and (root / "dtd" / "labels").is_dir():
        raise DatasetLayoutError(
            f"DTD label lists not found: {labels_dir}. {root / 'dtd'} holds the unpacked archive "
            f"itself; torchvision expects it one level deeper: move it to {folder}"
        )
    for split in ("train", "val", "test"):
        require_file(labels_dir / f"{split}{DTD_PARTITION}.txt", f"DTD {split} list")
    images = require_dir(folder / "images", "DTD image folder")
    parsed = {}
    for split in ("train", "val", "test"):
        with torchvision_reading(tvd.DTD, folder):
            parsed[split] = tvd.DTD(str(root), split=split, partition=DTD_PARTITION)
    classes = sorted({name for ds in parsed.values() for name in ds.classes})
    pools = {
        split: _file_pool(
            ds._image_files,
            _remap(ds._labels, ds.classes, classes),
            _relative_ids(ds._image_files, images),
        )
        for split, ds in parsed.items()
    }
    return Catalog(classes=classes, pools=pools, folder=folder)


# --------------------------------------------------------------------------------------------
# Oxford-IIIT Pet (official trainval / test; the validation split is held out of trainval)
# --------------------------------------------------------------------------------------------


def read_pets(root: Path) -> Catalog:
    folder = root / "oxford-iiit-pet"
    for split in ("trainval", "test"):
        require_file(folder / "annotations" / f"{split}.txt", f"Oxford-IIIT Pet {split} list")
    require_dir(folder / "images", "Oxford-IIIT Pet image folder")
    parsed = {}
    for split in ("trainval", "test"):
        with torchvision_reading(tvd.OxfordIIITPet, folder):
            parsed[split] = tvd.OxfordIIITPet(str(root), split=split)
    # torchvision names the classes of a split in the order of the label column (1..37) of the
    # labels that occur in it; merge the two splits by label value.
    name_of: dict[int, str] = {}
    for ds in parsed.values():
        for label, name in zip(sorted(set(ds._labels)), ds.classes, strict=True):
            name_of.setdefault(label, name)
    order = sorted(name_of)
    position = {label: index for index, label in enumerate(order)}
    classes = [name_of[label] for label in order]
    pools = {}
    for split, ds in parsed.items():
        labels = [position[label] for label in ds._labels]
        ids = [Path(path).stem for path in ds._images]
        pools["train" if split == "trainval" else split] = _file_pool(ds._images, labels, ids)
    return Catalog(classes=classes, pools=pools, folder=folder)


# --------------------------------------------------------------------------------------------
# Caltech-101 (no official split: 30 per class for training, SPEC §5; BACKGROUND_Google dropped)
# --------------------------------------------------------------------------------------------


def read_caltech101(root: Path) -> Catalog:
    folder = root / "caltech101"
    categories_dir = require_dir(folder / "101_ObjectCategories", "Caltech-101 image folder")
    # torchvision's Caltech101 lists every sub-folder but BACKGROUND_Google (not an object
    # class; its 101 classes keep Faces and Faces_easy both) and numbers the images of class c
    # image_0001.jpg .. image_<n>.jpg, n = the number of files in the folder.
    with torchvision_reading(tvd.Caltech101, folder):
        ds = tvd.Caltech101(str(root), target_type="category")
    files = [
        categories_dir / ds.categories[label] / f"image_{number:04d}.jpg"
        for label, number in zip(ds.y, ds.index, strict=True)
    ]
    pool = _file_pool(files, ds.y, _relative_ids(files, categories_dir))
    return Catalog(classes=list(ds.categories), pools={"all": pool}, folder=folder)


# --------------------------------------------------------------------------------------------
# Oxford 102 Flowers (official train / val / test in setid.mat)
# --------------------------------------------------------------------------------------------


class _Flowers102(tvd.Flowers102):
    """torchvision's Flowers102 with a presence check in place of its MD5 check of the two .mat
    files, so that copies re-saved by other tools (and the tests' tiny copies) are read too;
    the labels and split ids are parsed by torchvision exactly as for the original files."""

    def _check_integrity(self) -> bool:
        return self._images_folder.is_dir() and all(
            (self._base_folder / self._file_dict[key][0]).is_file() for key in ("label", "setid")
        )


def read_flowers(root: Path) -> Catalog:
    folder = root / "flowers-102"
    require_file(folder / "imagelabels.mat", "Flowers-102 labels")
    require_file(folder / "setid.mat", "Flowers-102 split ids")
    images = require_dir(folder / "jpg", "Flowers-102 image folder")
    pools = {}
    for split in ("train", "val", "test"):
        with torchvision_reading(tvd.Flowers102, folder):
            ds = _Flowers102(str(root), split=split)
        pools[split] = _file_pool(
            ds._image_files, ds._labels, _relative_ids(ds._image_files, images)
        )
    return Catalog(classes=list(tvd.Flowers102.classes), pools=pools, folder=folder)


# --------------------------------------------------------------------------------------------
# Downloads through torchvision
# --------------------------------------------------------------------------------------------


def torchvision_download(make: Callable[[], Any], what: str) -> None:
    """Run a torchvision constructor with ``download=True``; a network failure becomes one
    clear error instead of a urllib traceback."""
    try:
        make()
    except (OSError, RuntimeError, ValueError) as error:
        raise DatasetLayoutError(f"downloading {what} failed: {error}") from error
