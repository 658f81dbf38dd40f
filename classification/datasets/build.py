"""``build_dataset``: one of the 12 classification datasets, one split, as the paper splits it.

SPEC §5 / paper App. B.1, per dataset (``DATASETS[name].split_rule`` says the same in words):

* **official validation split** (FGVC Aircraft, Flowers-102, DTD partition 1, VOC2007): ``train``,
  ``val`` and ``test`` are the official lists; ``trainval`` is ``train`` followed by ``val``.
* **held-out validation** (Food-101, CIFAR-10/100, CUB-200-2011, SUN397 partition 1, Stanford
  Cars, Oxford-IIIT Pet): ``test`` is the official test set; ``val`` is about 20% of the
  official training set, per class (:func:`~classification.datasets.splits.stratified_holdout`,
  random in ``seed``); ``train`` is the rest; ``trainval`` the whole official training set.
* **Caltech-101** (no official split): 30 random images per class form ``trainval``, the rest
  ``test``; ``val`` is held out of the 30 as above (6 per class, so ``train`` has 24). The 30 are
  drawn with a fixed seed (:data:`CALTECH_PARTITION_SEED`), not with ``seed``, so every run
  and every seed is tested on the same images and test accuracies stay comparable; ``seed``
  changes only the validation hold-out, as for the other datasets.

With ``split_dir`` the generated splits are written to ``<split_dir>/<name>_seed<seed>.json``
(item ids) by the first build and read back by every later one, which also checks that the
file matches the data on disk. Datasets with official splits need no file.

**The authors' splits.** Where ``split_dir`` holds the BiSSL authors' index files,
``<name>_{train,val[,test]}_split.txt`` (their repository's ``data/tv_splits``; Food-101 under
their name ``food``), they define ``train`` and ``val`` (Caltech-101: and ``test``) instead, for
every seed, and take precedence over a ``<name>_seed<seed>.json`` there (nothing is written).
Each index is a position in the dataset as the authors' code builds it
(:data:`AUTHOR_BASE_ORDER`; torchvision's classes where it has one), and a split lists its items
in file order, so position ``k`` of our split is position ``k`` of theirs. ``test`` stays the
official test set and ``trainval`` is ``train`` followed by ``val``: their CIFAR-10 files cover
only the first 40,000 of the 50,000 training images. ``DatasetSplit.split_convention`` says which
convention a build used.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torchvision.datasets as tvd
from PIL import Image
from torchvision.datasets.utils import download_and_extract_archive

from bissl_dense.errors import ConfigError
from classification.datasets import cifar, cub, readers, voc
from classification.datasets.base import (
    SPLITS,
    Catalog,
    DatasetLayoutError,
    DatasetSplit,
    Pool,
)
from classification.datasets.splits import (
    AUTHOR_SPLIT_FILES,
    HOLDOUT_FRACTION,
    author_split_paths,
    read_author_splits,
    read_split_file,
    sample_per_class,
    split_file_path,
    stratified_holdout,
    write_split_file,
)

__all__ = [
    "AUTHOR_BASE_ORDER",
    "CALTECH_PARTITION_SEED",
    "CALTECH_TRAIN_PER_CLASS",
    "DATASETS",
    "DATASET_NAMES",
    "DatasetSpec",
    "build_dataset",
    "build_splits",
    "verify_files",
]

CALTECH_TRAIN_PER_CLASS = 30
CALTECH_PARTITION_SEED = 0
SUN397_PARTITIONS_URL = "https://vision.princeton.edu/projects/2010/SUN/download/Partitions.zip"

Scheme = Literal["official", "holdout", "caltech"]


@dataclass(frozen=True)
class DatasetSpec:
    """What is known about one dataset: where it lives, how it is split, how to get it."""

    name: str
    title: str
    layout: str  # the expected files; "<root>" stands for the root a user passes
    scheme: Scheme
    split_rule: str
    read: Callable[[Path], Catalog]
    download: Callable[[Path], None] | None
    obtain: str  # how to get the data by hand

    def expected(self, root: Path) -> str:
        return self.layout.replace("<root>", str(root))


def _holdout_rule(train: str, test: str) -> str:
    return (
        f"test = the official test set ({test}); val = {HOLDOUT_FRACTION:.0%} of the official "
        f"training set ({train}) held out per class (stratified, random in seed, at least 1 per "
        "class); train = the rest; trainval = the whole official training set"
    )


def _official_rule(source: str) -> str:
    return f"train / val / test = the {source} lists; trainval = train + val"


# --- downloads (torchvision's downloaders; only run when the data is not there yet) -----------


def _download_torchvision(make: Callable[[str], Any], what: str) -> Callable[[Path], None]:
    def download(root: Path) -> None:
        readers.torchvision_download(lambda: make(str(root)), what)

    return download


def _download_cub(root: Path) -> None:
    readers.torchvision_download(
        lambda: download_and_extract_archive(
            cub.CUB_ARCHIVE_URL, str(root), filename="CUB_200_2011.tgz", md5=cub.CUB_ARCHIVE_MD5
        ),
        "CUB-200-2011",
    )


def _download_sun397(root: Path) -> None:
    if not (root / "SUN397" / "ClassName.txt").is_file():
        readers.torchvision_download(lambda: tvd.SUN397(str(root), download=True), "SUN397")
    try:
        readers.sun397_partition_dir(root / "SUN397")
    except DatasetLayoutError:
        readers.torchvision_download(
            lambda: download_and_extract_archive(SUN397_PARTITIONS_URL, str(root / "SUN397")),
            "the SUN397 partitions",
        )


def _download_voc2007(root: Path) -> None:
    for image_set in ("trainval", "test"):  # two archives; both unpack into VOCdevkit/VOC2007
        readers.torchvision_download(
            lambda image_set=image_set: tvd.VOCDetection(
                str(root), year="2007", image_set=image_set, download=True
            ),
            f"VOC2007 {image_set}",
        )


DATASETS: dict[str, DatasetSpec] = {
    spec.name: spec
    for spec in (
        DatasetSpec(
            "food101",
            "Food-101",
            "<root>/food-101/  (food-101.tar.gz unpacked)\n"
            '  meta/train.json, meta/test.json   {class: ["<class>/<id>", ...]}\n'
            "  images/<class>/<id>.jpg",
            "holdout",
            _holdout_rule("meta/train.json", "meta/test.json"),
            readers.read_food101,
            _download_torchvision(lambda r: tvd.Food101(r, download=True), "Food-101"),
            "https://data.vision.ee.ethz.ch/cvl/datasets_extra/food-101/",
        ),
        DatasetSpec(
            "cifar10",
            "CIFAR-10",
            "<root>/cifar-10-batches-py/  (cifar-10-python.tar.gz unpacked)\n"
            "  data_batch_1 ... data_batch_5, test_batch, batches.meta",
            "holdout",
            _holdout_rule("data_batch_1..5", "test_batch"),
            cifar.read_cifar10,
            _download_torchvision(lambda r: tvd.CIFAR10(r, download=True), "CIFAR-10"),
            "https://www.cs.toronto.edu/~kriz/cifar.html (the python version)",
        ),
        DatasetSpec(
            "cifar100",
            "CIFAR-100",
            "<root>/cifar-100-python/  (cifar-100-python.tar.gz unpacked)\n  train, test, meta",
            "holdout",
            _holdout_rule("train", "test"),
            cifar.read_cifar100,
            _download_torchvision(lambda r: tvd.CIFAR100(r, download=True), "CIFAR-100"),
            "https://www.cs.toronto.edu/~kriz/cifar.html (the python version)",
        ),
        DatasetSpec(
            "cub200",
            "CUB-200-2011",
            "<root>/CUB_200_2011/  (CUB_200_2011.tgz unpacked)\n"
            "  images.txt, image_class_labels.txt, train_test_split.txt, classes.txt\n"
            "  images/<NNN.Class_name>/<file>.jpg",
            "holdout",
            _holdout_rule("train_test_split.txt: 1", "train_test_split.txt: 0"),
            cub.read_cub200,
            _download_cub,
            f"{cub.CUB_ARCHIVE_URL} (https://www.vision.caltech.edu/datasets/cub_200_2011/)",
        ),
        DatasetSpec(
            "sun397",
            "SUN397",
            "<root>/SUN397/  (SUN397.tar.gz unpacked)\n"
            "  ClassName.txt   (/a/abbey, /a/airplane_cabin, ...)\n"
            "  <letter>/<class>[/<subclass>]/sun_<id>.jpg\n"
            "  Partitions/Training_01.txt, Partitions/Testing_01.txt   (Partitions.zip unpacked "
            "into SUN397/)",
            "holdout",
            _holdout_rule("partition 1: Training_01.txt", "partition 1: Testing_01.txt"),
            readers.read_sun397,
            _download_sun397,
            f"https://vision.princeton.edu/projects/2010/SUN/ (SUN397.tar.gz and "
            f"{SUN397_PARTITIONS_URL})",
        ),
        DatasetSpec(
            "cars",
            "Stanford Cars",
            "<root>/stanford_cars/\n"
            "  devkit/cars_meta.mat, devkit/cars_train_annos.mat\n"
            "  cars_test_annos_withlabels.mat\n"
            "  cars_train/<00001>.jpg ..., cars_test/<00001>.jpg ...",
            "holdout",
            _holdout_rule("cars_train_annos.mat", "cars_test_annos_withlabels.mat"),
            readers.read_cars,
            None,
            "torchvision cannot download it (the original Stanford URL is gone): get "
            "car_devkit.tgz, cars_train.tgz, cars_test.tgz and cars_test_annos_withlabels.mat "
            "from a mirror and arrange them as shown",
        ),
        DatasetSpec(
            "aircraft",
            "FGVC Aircraft",
            "<root>/fgvc-aircraft-2013b/data/  (fgvc-aircraft-2013b.tar.gz unpacked)\n"
            "  variants.txt, images_variant_{train,val,test}.txt   (<image id> <variant>)\n"
            "  images/<image id>.jpg",
            "official",
            _official_rule("official variant-level (100 classes)"),
            readers.read_aircraft,
            _download_torchvision(lambda r: tvd.FGVCAircraft(r, download=True), "FGVC Aircraft"),
            "https://www.robots.ox.ac.uk/~vgg/data/fgvc-aircraft/",
        ),
        DatasetSpec(
            "voc2007",
            "PASCAL VOC 2007",
            "<root>/VOCdevkit/VOC2007/  (VOCtrainval_06-Nov-2007.tar and VOCtest_06-Nov-2007.tar "
            "unpacked into <root>)\n"
            "  ImageSets/Main/{train,val,test}.txt, ImageSets/Main/<class>_{train,val,test}.txt\n"
            "  JPEGImages/<id>.jpg",
            "official",
            _official_rule("official VOC2007 train / val / test")
            + "; target = multi-hot over the 20 classes, 'difficult-only' (0) counted as present",
            voc.read_voc2007,
            _download_voc2007,
            "http://host.robots.ox.ac.uk/pascal/VOC/voc2007/",
        ),
        DatasetSpec(
            "dtd",
            "Describable Textures (DTD)",
            "<root>/dtd/dtd/  (dtd-r1.0.1.tar.gz unpacked into <root>/dtd, as torchvision does)\n"
            "  labels/train1.txt, labels/val1.txt, labels/test1.txt   (<class>/<file>.jpg)\n"
            "  images/<class>/<file>.jpg",
            "official",
            _official_rule("official partition-1 (train1 / val1 / test1)"),
            readers.read_dtd,
            _download_torchvision(lambda r: tvd.DTD(r, download=True), "DTD"),
            "https://www.robots.ox.ac.uk/~vgg/data/dtd/",
        ),
        DatasetSpec(
            "pets",
            "Oxford-IIIT Pet",
            "<root>/oxford-iiit-pet/  (images.tar.gz and annotations.tar.gz unpacked)\n"
            "  annotations/trainval.txt, annotations/test.txt   (<Image_id> <class 1-37> ...)\n"
            "  images/<Image_id>.jpg",
            "holdout",
            _holdout_rule("trainval.txt", "test.txt"),
            readers.read_pets,
            _download_torchvision(lambda r: tvd.OxfordIIITPet(r, download=True), "Oxford-IIIT Pet"),
            "https://www.robots.ox.ac.uk/~vgg/data/pets/",
        ),
        DatasetSpec(
            "caltech101",
            "Caltech-101",
            "<root>/caltech101/101_ObjectCategories/<class>/image_0001.jpg ...\n"
            "  (101 classes; BACKGROUND_Google is ignored)",
            "caltech",
            f"trainval = {CALTECH_TRAIN_PER_CLASS} random images per class (fixed partition seed "
            f"{CALTECH_PARTITION_SEED}, BACKGROUND_Google excluded), test = the rest; val = "
            f"{HOLDOUT_FRACTION:.0%} of the {CALTECH_TRAIN_PER_CLASS} held out per class "
            "(random in seed), train = the rest",
            readers.read_caltech101,
            _download_torchvision(lambda r: tvd.Caltech101(r, download=True), "Caltech-101"),
            "https://data.caltech.edu/records/mzrjq-6wc02",
        ),
        DatasetSpec(
            "flowers",
            "Oxford 102 Flowers",
            "<root>/flowers-102/\n  imagelabels.mat, setid.mat\n  jpg/image_00001.jpg ...",
            "official",
            _official_rule("official setid.mat (trnid / valid / tstid)"),
            readers.read_flowers,
            _download_torchvision(lambda r: tvd.Flowers102(r, download=True), "Flowers-102"),
            "https://www.robots.ox.ac.uk/~vgg/data/flowers/102/",
        ),
    )
}

DATASET_NAMES: tuple[str, ...] = tuple(DATASETS)

# What the authors' indices count (their code, source/datasets.py, applies them to these lists,
# in this order); the readers build the same pools in the same order. Keys: AUTHOR_SPLIT_FILES.
AUTHOR_BASE_ORDER: dict[str, str] = {
    "food101": "official training set (torchvision Food101 split='train': meta/train.json order)",
    "cifar10": "official training set (torchvision CIFAR10 train=True: data_batch_1..5 order)",
    "cifar100": "official training set (torchvision CIFAR100 train=True: the 'train' batch order)",
    "cub200": "training images (train_test_split.txt flag 1, in images.txt order)",
    "sun397": "partition-1 training list (Partitions/Training_01.txt order)",
    "cars": "training set (torchvision StanfordCars split='train': cars_train_annos.mat order)",
    "pets": "trainval set (torchvision OxfordIIITPet split='trainval': trainval.txt order)",
    "caltech101": "whole dataset (torchvision Caltech101: classes sorted, BACKGROUND_Google "
    "dropped, image_0001.jpg .. image_<n>.jpg per class)",
}
assert set(AUTHOR_BASE_ORDER) == set(AUTHOR_SPLIT_FILES)


def _spec(name: str) -> DatasetSpec:
    if name not in DATASETS:
        raise ConfigError(f"unknown dataset {name!r}; choose one of: {', '.join(DATASET_NAMES)}")
    return DATASETS[name]


def _layout_error(spec: DatasetSpec, root: Path, error: Exception) -> DatasetLayoutError:
    how = (
        "Pass --download (build_dataset(..., download=True)) to fetch it with torchvision's "
        f"downloader, or get it from {spec.obtain}"
        if spec.download is not None
        else f"It cannot be downloaded automatically; {spec.obtain}."
    )
    return DatasetLayoutError(
        f"{spec.title} ({spec.name}) under {root}: {error}\n"
        f"Expected layout:\n{spec.expected(root)}\n{how}"
    )


def _read(spec: DatasetSpec, root: Path, download: bool) -> Catalog:
    try:
        return spec.read(root)
    except DatasetLayoutError as error:
        if not download:
            raise _layout_error(spec, root, error) from error
        if spec.download is None:
            raise _layout_error(spec, root, error) from error
    assert spec.download is not None
    root.mkdir(parents=True, exist_ok=True)
    try:
        spec.download(root)
        return spec.read(root)
    except DatasetLayoutError as error:
        raise _layout_error(spec, root, error) from error


# --- splits ----------------------------------------------------------------------------------

Members = list[tuple[Pool, list[int]]]


def _indices(pool: Pool, ids: Sequence[str]) -> list[int]:
    position = {item: index for index, item in enumerate(pool.ids)}
    return sorted(position[item] for item in ids)


def _generated_groups(
    spec: DatasetSpec, catalog: Catalog, seed: int
) -> tuple[Pool, dict[str, list[int]]]:
    """The randomly drawn splits of a dataset without official validation split, as positions
    in the pool they are drawn from."""
    if spec.scheme == "holdout":
        pool = catalog.pools["train"]
        train, val = stratified_holdout(pool.ids, pool.targets, seed, f"{spec.name}/val")
        return pool, {"train": train, "val": val}
    pool = catalog.pools["all"]
    try:
        trainval, test = sample_per_class(
            pool.ids,
            pool.targets,
            CALTECH_TRAIN_PER_CLASS,
            CALTECH_PARTITION_SEED,
            f"{spec.name}/trainval",
        )
    except ValueError as error:
        raise DatasetLayoutError(
            f"{error} (every class of the real Caltech-101 has at least 31 images; "
            "is the copy complete?)"
        ) from error
    sub_ids = [pool.ids[i] for i in trainval]
    sub_targets = [pool.targets[i] for i in trainval]
    train, val = stratified_holdout(sub_ids, sub_targets, seed, f"{spec.name}/val")
    return pool, {
        "train": [trainval[i] for i in train],
        "val": [trainval[i] for i in val],
        "test": test,
    }


@dataclass
class _Plan:
    """How the four splits are cut from the pools, and where that came from."""

    members: dict[str, Members]
    convention: str  # one of splits.CONVENTIONS
    files: dict[str, Path]  # split -> the file naming its members (per split where it has one)
    all_files: tuple[Path, ...] = ()


def _official_plan(pools: dict[str, Pool]) -> _Plan:
    whole = {key: list(range(len(pool))) for key, pool in pools.items()}
    return _Plan(
        {
            "train": [(pools["train"], whole["train"])],
            "val": [(pools["val"], whole["val"])],
            "trainval": [(pools["train"], whole["train"]), (pools["val"], whole["val"])],
            "test": [(pools["test"], whole["test"])],
        },
        "official",
        {},
    )


def _cut(
    spec: DatasetSpec, pools: dict[str, Pool], groups: dict[str, list[int]]
) -> dict[str, Members]:
    """The four splits from ``train``/``val`` (and Caltech-101's ``test``) positions in the pool
    they index; ``trainval`` is ``train`` then ``val``."""
    pool = pools["train" if spec.scheme == "holdout" else "all"]
    members = {
        "train": [(pool, groups["train"])],
        "val": [(pool, groups["val"])],
        "trainval": [(pool, groups["train"] + groups["val"])],
    }
    if spec.scheme == "holdout":
        test_pool = pools["test"]
        members["test"] = [(test_pool, list(range(len(test_pool))))]
    else:
        members["test"] = [(pool, groups["test"])]
    return members


def _members(
    spec: DatasetSpec, catalog: Catalog, seed: int, split_dir: str | os.PathLike[str] | None
) -> _Plan:
    pools = catalog.pools
    if spec.scheme == "official":
        return _official_plan(pools)
    pool = pools["train" if spec.scheme == "holdout" else "all"]

    # The authors' index files, where present, define the splits (the reference's protocol).
    authors = author_split_paths(split_dir, spec.name) if split_dir is not None else None
    if authors is not None:
        groups = read_author_splits(
            authors, len(pool), f"{spec.title}'s {AUTHOR_BASE_ORDER[spec.name]}"
        )
        return _Plan(_cut(spec, pools, groups), "authors-index", authors, tuple(authors.values()))

    path = split_file_path(split_dir, spec.name, seed) if split_dir is not None else None
    if path is not None and path.exists():
        keys = ("train", "val") if spec.scheme == "holdout" else ("train", "val", "test")
        stored = read_split_file(path, spec.name, seed, {key: pool.ids for key in keys})
        groups = {key: _indices(pool, stored[key]) for key in keys}
    else:
        pool, groups = _generated_groups(spec, catalog, seed)
        if path is not None:
            write_split_file(
                path,
                spec.name,
                seed,
                spec.split_rule,
                {key: [pool.ids[i] for i in positions] for key, positions in groups.items()},
            )
    members = _cut(spec, pools, groups)
    if spec.scheme == "holdout":  # the generated hold-outs leave no training image out
        members["trainval"] = [(pool, list(range(len(pool))))]
    else:
        members["trainval"] = [(pool, sorted(groups["train"] + groups["val"]))]
    if path is None:
        return _Plan(members, "generated", {})
    return _Plan(members, "bissl-json", dict.fromkeys(SPLITS, path), (path,))


def _check_args(split: str | None, seed: int) -> None:
    if split is not None and split not in SPLITS:
        raise ConfigError(f"unknown split {split!r}; choose one of: {', '.join(SPLITS)}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ConfigError(f"seed must be a non-negative integer, got {seed!r}")


def build_splits(
    name: str,
    root: str | os.PathLike[str],
    transform: Callable[[Image.Image], Any] | None = None,
    seed: int = 0,
    split_dir: str | os.PathLike[str] | None = None,
    *,
    download: bool = False,
) -> dict[str, DatasetSplit]:
    """All four splits of a dataset (``train``, ``val``, ``trainval``, ``test``), read once.

    Image files are not checked here; :func:`verify_files` does (``build_dataset`` calls it for
    the split it returns)."""
    spec = _spec(name)
    _check_args(None, seed)
    root_path = Path(root).expanduser()
    catalog = _read(spec, root_path, download)
    plan = _members(spec, catalog, seed, split_dir)
    return {
        split: DatasetSplit(
            spec.name,
            split,
            catalog.classes,
            plan.members[split],
            transform=transform,
            multilabel=catalog.multilabel,
            split_file=plan.files.get(split),
            split_convention=plan.convention,
            split_files=plan.all_files,
        )
        for split in SPLITS
    }


def verify_files(dataset: DatasetSplit, root: str | os.PathLike[str]) -> None:
    """Raise :class:`DatasetLayoutError` naming the missing image files of ``dataset``."""
    files = dataset.files()
    if files is None:
        return
    missing = [file for file in files if not file.is_file()]
    if missing:
        spec = _spec(dataset.name)
        error = DatasetLayoutError(
            f"{len(missing)} of the {len(files)} images of the {dataset.split} split are missing "
            f"(e.g. {missing[0]}); the copy is incomplete"
        )
        raise _layout_error(spec, Path(root).expanduser(), error)


def build_dataset(
    name: str,
    root: str | os.PathLike[str],
    split: str,
    transform: Callable[[Image.Image], Any] | None = None,
    seed: int = 0,
    split_dir: str | os.PathLike[str] | None = None,
    *,
    download: bool = False,
) -> DatasetSplit:
    """One split of one of the 12 classification datasets (SPEC §5).

    Args:
        name: one of :data:`DATASET_NAMES` (``food101 cifar10 cifar100 cub200 sun397 cars
            aircraft voc2007 dtd pets caltech101 flowers``).
        root: the folder a user would give torchvision (``<root>/oxford-iiit-pet/``, ...; see
            ``DATASETS[name].layout``).
        split: ``train``, ``val``, ``trainval`` (= ``train`` ∪ ``val``) or ``test``.
        transform: applied to the RGB ``PIL.Image`` of each item; ``None`` returns the image.
        seed: draws the validation hold-out (and nothing else) where there is no official one.
        split_dir: write the generated splits there as ``<name>_seed<seed>.json`` on the first
            build and reuse them on later builds; or, where it holds the authors' index files
            ``<name>_{train,val[,test]}_split.txt``, take the splits from those (module
            docstring; ``split_convention`` on the result says which).
        download: fetch a missing dataset with torchvision's downloader first.

    Raises:
        DatasetLayoutError: the data is missing or incomplete (the message names the path that
            was looked at and the expected layout).
        SplitFileError: the split file does not match the data on disk, or an authors' index
            file is missing, repeats or overlaps another split, or indexes past the data.
        ConfigError: an unknown name or split, or a negative seed.
    """
    _check_args(split, seed)
    dataset = build_splits(name, root, transform, seed, split_dir, download=download)[split]
    verify_files(dataset, root)
    return dataset
