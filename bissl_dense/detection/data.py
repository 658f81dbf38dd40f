"""Detection data: VOC07+12 registration and the two BiSSL batch sources (SPEC §3, §5).

* :func:`register_voc` points detectron2's ``voc_2007_*`` / ``voc_2012_*`` data sets at a VOC
  root in the real layout (``VOC2007/``, ``VOC2012/``, or their ``VOCdevkit/`` parent) with
  detectron2's own ``register_pascal_voc``, so the loader and ``PascalVOCDetectionEvaluator`` are
  detectron2's, unchanged.
* The upper level draws detectron2 batches (``DatasetMapper``: multi-scale resize and flip) in the
  order of the core's stage-aware stack (:class:`~bissl_dense.stage.SeededBatchStack`), each image
  augmented under its own seed, so a resumed run sees exactly the batches of an uninterrupted
  one. ``DatasetMapper`` draws its randomness from numpy's global generator, which the seeded
  draw sets.
* The lower level draws two pretext views (SimCLR/BYOL augmentation) of the training images (or of
  a folder of images), through the same stack machinery.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from detectron2.config import CfgNode
from detectron2.data import DatasetCatalog, DatasetMapper, MetadataCatalog
from detectron2.data.build import get_detection_dataset_dicts, trivial_batch_collator
from detectron2.data.common import DatasetFromList
from detectron2.data.datasets.pascal_voc import register_pascal_voc
from torch.utils.data import Dataset

from bissl_dense.engine.datasets import PretextImageFolder
from bissl_dense.errors import DataError
from bissl_dense.pretext.transforms import PretextAugmentation
from bissl_dense.stage import SeededDataset, batch_source

__all__ = [
    "VOC_SPLITS",
    "PretextImageList",
    "check_voc_data",
    "lower_batch_source",
    "register_voc",
    "resolve_voc_root",
    "upper_batch_source",
    "upper_dataset",
]

VOC_SPLITS: tuple[tuple[str, str, str], ...] = (
    ("voc_2007_trainval", "VOC2007", "trainval"),
    ("voc_2007_train", "VOC2007", "train"),
    ("voc_2007_val", "VOC2007", "val"),
    ("voc_2007_test", "VOC2007", "test"),
    ("voc_2012_trainval", "VOC2012", "trainval"),
    ("voc_2012_train", "VOC2012", "train"),
    ("voc_2012_val", "VOC2012", "val"),
)
"""detectron2's VOC data set names (``detectron2/data/datasets/builtin.py``)."""


def resolve_voc_root(root: str | os.PathLike[str]) -> Path:
    """The directory holding ``VOC2007/`` (``root`` itself or its ``VOCdevkit/``)."""
    path = Path(root).expanduser()
    for candidate in (path, path / "VOCdevkit"):
        if (candidate / "VOC2007" / "Annotations").is_dir():
            return candidate
    raise DataError(
        f"DATASETS.VOC_ROOT={str(root)!r}: no VOC2007/Annotations in {path.resolve()} or its "
        "VOCdevkit/. Set DATASETS.VOC_ROOT (config key or trailing override `DATASETS.VOC_ROOT "
        "/path`) to the folder that holds VOC2007/ and VOC2012/, or set it to '' to use "
        "detectron2's $DETECTRON2_DATASETS (`python -m bissl_dense.datasets.synthetic --kind voc` "
        "writes the real layout)."
    )


def check_voc_data(cfg: CfgNode) -> None:
    """Fail at once, in one line, when the VOC folders that ``cfg``'s data sets need are missing.

    ``tools/train_net.py`` calls this in the launching process, before any worker starts: the
    same error raised in N workers would end in N tracebacks. With ``DATASETS.VOC_ROOT`` empty,
    detectron2's built-in ``voc_*`` sets read ``$DETECTRON2_DATASETS/VOC20xx`` (its default
    ``datasets``, detectron2/data/datasets/builtin.py).
    """
    names = [*cfg.DATASETS.TRAIN, *cfg.DATASETS.TEST]
    years = sorted({folder for name, folder, _ in VOC_SPLITS if name in names})
    if cfg.DATASETS.VOC_ROOT:
        base = resolve_voc_root(cfg.DATASETS.VOC_ROOT)
        where = f"DATASETS.VOC_ROOT={cfg.DATASETS.VOC_ROOT!r}"
    else:
        base = Path(os.environ.get("DETECTRON2_DATASETS", "datasets")).expanduser()
        where = (
            "DATASETS.VOC_ROOT is empty, so detectron2 reads $DETECTRON2_DATASETS="
            f"{os.environ.get('DETECTRON2_DATASETS', '(unset: datasets)')!r}"
        )
    for folder in years:
        if not (base / folder / "Annotations").is_dir():
            raise DataError(
                f"{where}: missing {(base / folder / 'Annotations').resolve()} (needed by "
                f"{', '.join(n for n in names if folder[3:] in n)}). Set DATASETS.VOC_ROOT or "
                "DETECTRON2_DATASETS to the folder that holds VOC2007/ and VOC2012/."
            )


def register_voc(root: str | os.PathLike[str]) -> Path:
    """(Re-)register detectron2's ``voc_*`` data sets at ``root``; returns the resolved root.

    Splits whose year folder is missing (e.g. no VOC2012) are left unregistered, so a config
    that names them fails with detectron2's "not registered" message naming the data set.
    """
    base = resolve_voc_root(root)
    for name, folder, split in VOC_SPLITS:
        if name in DatasetCatalog.list():
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)
        if (base / folder / "ImageSets" / "Main" / f"{split}.txt").is_file():
            year = 2007 if "2007" in name else 2012
            register_pascal_voc(name, str(base / folder), split, year)
            MetadataCatalog.get(name).evaluator_type = "pascal_voc"
    return base


def upper_dataset(cfg: CfgNode) -> SeededDataset:
    """The training images of ``DATASETS.TRAIN``, mapped by detectron2's ``DatasetMapper``."""
    dicts = get_detection_dataset_dicts(cfg.DATASETS.TRAIN, filter_empty=True)
    return SeededDataset(
        DatasetFromList(dicts, copy=True, serialize=False),
        transform=DatasetMapper(cfg, is_train=True),
    )


def upper_batch_source(
    cfg: CfgNode, rank: int, world_size: int
) -> Callable[[int], Iterator[list[dict[str, Any]]]]:
    """Upper batches: ``SOLVER.IMS_PER_BATCH`` in total, N_U per stage, lists of mapped dicts."""
    total = int(cfg.SOLVER.IMS_PER_BATCH)
    if total % world_size:
        raise DataError(
            f"SOLVER.IMS_PER_BATCH={total} is not divisible by the {world_size} processes"
        )
    return rng_neutral(
        batch_source(
            upper_dataset(cfg),
            batch_size=total // world_size,
            stage_length=int(cfg.BISSL.UPPER_STEPS),
            seed=int(cfg.BISSL.SEED) + 1,
            rank=rank,
            world_size=world_size,
            num_workers=int(cfg.DATALOADER.NUM_WORKERS),
            collate_fn=trivial_batch_collator,
        )
    )


def rng_neutral(
    make: Callable[[int], Iterator[Any]],
) -> Callable[[int], Iterator[Any]]:
    """``make`` whose first batch is drawn without touching the global torch RNG.

    A ``DataLoader`` draws its base seed from the global generator when its iterator is created,
    which happens lazily at the first batch; a resumed run re-creates its iterators at another
    point of the schedule than the original run, so that draw would shift every later random
    number (e.g. detectron2's RoI sampling) and break exact resume. The draws are seeded per
    sample anyway (:class:`~bissl_dense.stage.SeededBatchStack`).
    """

    def wrapped(start: int) -> Iterator[Any]:
        batches = make(start)
        with torch.random.fork_rng(devices=[]):
            first = next(batches)
        yield first
        yield from batches

    return wrapped


class PretextImageList(PretextImageFolder):
    """Two pretext views of each image of an explicit list of files (e.g. a detection train set)."""

    def __init__(self, files: Sequence[str | os.PathLike[str]], augmentation: dict[str, Any]):
        if not files:
            raise DataError("no pretext images: the list of image files is empty")
        self.data_root = Path(os.path.commonpath([str(f) for f in files]))
        self.files = [Path(f) for f in files]
        self.augmentation = PretextAugmentation(**augmentation)


def pretext_dataset(cfg: CfgNode) -> Dataset:
    """The lower level's images: ``BISSL.PRETEXT.DATA_ROOT`` or the detection training images."""
    augmentation = {
        "image_size": int(cfg.BISSL.PRETEXT.IMAGE_SIZE),
        "min_scale": float(cfg.BISSL.PRETEXT.MIN_SCALE),
    }
    if cfg.BISSL.PRETEXT.DATA_ROOT:
        return PretextImageFolder(cfg.BISSL.PRETEXT.DATA_ROOT, augmentation=augmentation)
    dicts = get_detection_dataset_dicts(cfg.DATASETS.TRAIN, filter_empty=False)
    files = sorted({d["file_name"] for d in dicts})
    return PretextImageList(files, augmentation)


def lower_batch_source(
    cfg: CfgNode, rank: int, world_size: int
) -> Callable[[int], Iterator[dict[str, Any]]]:
    """Lower batches: ``BISSL.LOWER_IMS_PER_BATCH`` in total, N_L + 1 per stage (the Hessian
    batch included), ``{"inputs": [view1, view2]}``."""
    total = int(cfg.BISSL.LOWER_IMS_PER_BATCH)
    if total % world_size:
        raise DataError(
            f"BISSL.LOWER_IMS_PER_BATCH={total} is not divisible by the {world_size} processes"
        )
    return rng_neutral(
        batch_source(
            pretext_dataset(cfg),
            batch_size=total // world_size,
            stage_length=int(cfg.BISSL.LOWER_STEPS) + 1,
            seed=int(cfg.BISSL.SEED),
            rank=rank,
            world_size=world_size,
            num_workers=int(cfg.DATALOADER.NUM_WORKERS),
        )
    )
