"""Detection data: VOC07+12 registration and the two BiSSL batch sources (SPEC §3, §5).

* :func:`register_voc` points detectron2's ``voc_2007_*`` / ``voc_2012_*`` data sets at a VOC
  root in the real layout (``VOC2007/``, ``VOC2012/``, or their ``VOCdevkit/`` parent) with
  detectron2's own ``register_pascal_voc``, so the loader and ``PascalVOCDetectionEvaluator`` are
  detectron2's, unchanged.
* :func:`register_voc_val_split` holds a validation split out of VOC07+12 trainval
  (``DATASETS.VAL_FRACTION`` of each year's trainval, drawn by ``DATASETS.VAL_SEED``; SPEC §5:
  validation is held out of the training data) and registers it as ``voc_0712_val``, the rest
  as ``voc_0712_trainval_minus_val``. The split is written once to a JSON file
  (``DATASETS.VAL_SPLIT_FILE``) and every later run and process reads that file, so a search's
  trials, the BiSSL stage and a rerun all hold out the same images. VOC07 test stays the test set.
* The upper level draws detectron2 batches (``DatasetMapper``: multi-scale resize and flip) in the
  order of the core's stage-aware stack (:class:`~bissl_dense.stage.SeededBatchStack`), each image
  augmented under its own seed, so a resumed run sees exactly the batches of an uninterrupted
  one. ``DatasetMapper`` draws its randomness from numpy's global generator, which the seeded
  draw sets.
* The lower level draws two pretext views (SimCLR/BYOL augmentation) of the training images (or of
  a folder of images), through the same stack machinery.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from detectron2.config import CfgNode
from detectron2.data import DatasetCatalog, DatasetMapper, MetadataCatalog
from detectron2.data.build import get_detection_dataset_dicts, trivial_batch_collator
from detectron2.data.common import DatasetFromList
from detectron2.data.datasets.pascal_voc import CLASS_NAMES, load_voc_instances, register_pascal_voc
from torch.utils.data import Dataset

from bissl_dense.detection.config import bissl_config_of
from bissl_dense.engine.datasets import PretextImageFolder
from bissl_dense.errors import DataError
from bissl_dense.fileio import fsync_directory
from bissl_dense.pretext.transforms import PretextAugmentation
from bissl_dense.stage import SeededDataset, batch_source

__all__ = [
    "HELD_OUT_SETS",
    "TRAIN_MINUS_VAL",
    "VAL_SET",
    "VOC_SPLITS",
    "PretextImageList",
    "check_voc_data",
    "lower_batch_source",
    "register_voc",
    "register_voc_val_split",
    "resolve_voc_root",
    "upper_batch_source",
    "upper_dataset",
    "val_split_path",
    "voc_val_split",
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

VAL_SET = "voc_0712_val"
TRAIN_MINUS_VAL = "voc_0712_trainval_minus_val"
HELD_OUT_SETS = (VAL_SET, TRAIN_MINUS_VAL)
"""The data sets of the held-out validation split (``DATASETS.VAL_FRACTION`` > 0)."""
_VAL_YEARS = (("VOC2007", 2007), ("VOC2012", 2012))  # the trainval sets the split is taken from
# every VOC set a held-out image belongs to: training on one of them would train on it
_OVERLAPPING = tuple(name for name, _, split in VOC_SPLITS if split in ("trainval", "train", "val"))


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
    years = {folder for name, folder, _ in VOC_SPLITS if name in names}
    if set(names) & set(HELD_OUT_SETS):
        years |= {folder for folder, _ in _VAL_YEARS}
    base, where = _voc_base(cfg)
    for folder in sorted(years):
        if not (base / folder / "Annotations").is_dir():
            needed = [n for n in names if folder[3:] in n or n in HELD_OUT_SETS]
            raise DataError(
                f"{where}: missing {(base / folder / 'Annotations').resolve()} (needed by "
                f"{', '.join(needed)}). Set DATASETS.VOC_ROOT or "
                "DETECTRON2_DATASETS to the folder that holds VOC2007/ and VOC2012/."
            )


def _voc_base(cfg: CfgNode) -> tuple[Path, str]:
    """The folder holding ``VOC2007/`` and ``VOC2012/`` for ``cfg``, and how it was chosen."""
    if cfg.DATASETS.VOC_ROOT:
        return resolve_voc_root(
            cfg.DATASETS.VOC_ROOT
        ), f"DATASETS.VOC_ROOT={cfg.DATASETS.VOC_ROOT!r}"
    where = (
        "DATASETS.VOC_ROOT is empty, so detectron2 reads $DETECTRON2_DATASETS="
        f"{os.environ.get('DETECTRON2_DATASETS', '(unset: datasets)')!r}"
    )
    return Path(os.environ.get("DETECTRON2_DATASETS", "datasets")).expanduser(), where


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


def val_split_path(cfg: CfgNode, base: Path | None = None) -> Path:
    """``DATASETS.VAL_SPLIT_FILE``, or by default
    ``<VOC root>/bissl_splits/voc0712_val_<fraction>_seed<seed>.json`` beside the data, where every
    run that reads this VOC root finds it."""
    if cfg.DATASETS.VAL_SPLIT_FILE:
        return Path(cfg.DATASETS.VAL_SPLIT_FILE).expanduser()
    base = base if base is not None else _voc_base(cfg)[0]
    fraction = float(cfg.DATASETS.VAL_FRACTION)
    return base / "bissl_splits" / f"voc0712_val_{fraction:g}_seed{int(cfg.DATASETS.VAL_SEED)}.json"


def _trainval_ids(base: Path, folder: str) -> list[str]:
    path = base / folder / "ImageSets" / "Main" / "trainval.txt"
    if not path.is_file():
        raise DataError(f"no {path}: the validation split is held out of VOC07+12 trainval")
    return sorted(line.strip() for line in path.read_text().splitlines() if line.strip())


def _draw_val_split(base: Path, fraction: float, seed: int) -> dict[str, Any]:
    """``round(fraction · n)`` images of each year's trainval (at least 1, at most n − 1), drawn
    by a generator seeded with ``(seed, year)`` from the sorted ids: the same split on any
    machine for the same data, and each year represented in proportion."""
    val: dict[str, list[str]] = {}
    counts: dict[str, int] = {}
    for folder, year in _VAL_YEARS:
        ids = _trainval_ids(base, folder)
        if len(ids) < 2:
            raise DataError(f"{folder} trainval has {len(ids)} images; a split needs at least 2")
        n_val = min(len(ids) - 1, max(1, round(fraction * len(ids))))
        order = np.random.default_rng([seed, year]).permutation(len(ids))
        val[folder] = sorted(ids[i] for i in order[:n_val])
        counts[folder] = len(ids)
    return {
        "fraction": fraction,
        "seed": seed,
        "held_out_of": {folder: "trainval" for folder, _ in _VAL_YEARS},
        "trainval_images": counts,
        "val": val,
    }


def _write_once(path: Path, text: str) -> bool:
    """Create ``path`` with ``text`` unless it exists; True when this call created it.

    The complete file is linked into place (``os.link`` fails if the name exists), so of several
    processes creating it at once exactly one wins and the others read the winner's file: never
    a partly written one, and never a second version.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
        fsync_directory(path.parent)
        return True
    finally:
        Path(tmp).unlink(missing_ok=True)


def voc_val_split(cfg: CfgNode) -> dict[str, Any]:
    """The held-out split of ``cfg`` (see the module docstring): read from its file, or drawn and
    written there once if the file does not exist yet.

    Raises:
        DataError: the file was written for another fraction or seed, names images that are not
            in trainval any more, or cannot be written (then set ``DATASETS.VAL_SPLIT_FILE``).
    """
    fraction, seed = float(cfg.DATASETS.VAL_FRACTION), int(cfg.DATASETS.VAL_SEED)
    base = _voc_base(cfg)[0]
    path = val_split_path(cfg, base)
    if not path.is_file():
        text = json.dumps(_draw_val_split(base, fraction, seed), indent=1, sort_keys=True) + "\n"
        try:
            _write_once(path, text)
        except OSError as err:
            raise DataError(
                f"cannot write the validation split to {path} ({err}); set "
                "DATASETS.VAL_SPLIT_FILE to a writable path that every run can read"
            ) from err
    try:
        split = json.loads(path.read_text())
        val = {folder: list(split["val"][folder]) for folder, _ in _VAL_YEARS}
        written_for = (float(split["fraction"]), int(split["seed"]))
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise DataError(f"{path} is not a validation split file of this project ({err})") from err
    if written_for != (fraction, seed):
        raise DataError(
            f"{path} holds the split for DATASETS.VAL_FRACTION={written_for[0]} "
            f"DATASETS.VAL_SEED={written_for[1]}, not {fraction} / {seed}; set "
            "DATASETS.VAL_SPLIT_FILE to another file (or remove this one if no run uses it)"
        )
    for folder, ids in val.items():
        unknown = sorted(set(ids) - set(_trainval_ids(base, folder)))
        if unknown:
            raise DataError(
                f"{path}: {len(unknown)} held-out images are not in {folder} trainval "
                f"({unknown[:5]}); the data changed since the split was written"
            )
    return {**split, "val": val, "file": str(path)}


def _held_out_dicts(base: Path, val: dict[str, list[str]], held_out: bool) -> list[dict[str, Any]]:
    """The trainval images of both years that are (``held_out``) or are not in ``val``.

    ``image_id`` is ``<year folder>/<file id>`` (unique across the years, and how the evaluator
    finds each image's annotation file: :class:`~bissl_dense.detection.evaluation.
    HeldOutVOCEvaluator`).
    """
    out = []
    for folder, _ in _VAL_YEARS:
        chosen = set(val[folder])
        for record in load_voc_instances(str(base / folder), "trainval", CLASS_NAMES):
            if (record["image_id"] in chosen) == held_out:
                out.append({**record, "image_id": f"{folder}/{record['image_id']}"})
    return out


def register_voc_val_split(cfg: CfgNode) -> dict[str, Any] | None:
    """Register ``voc_0712_val`` and ``voc_0712_trainval_minus_val`` when
    ``DATASETS.VAL_FRACTION`` > 0 (returns the split; None otherwise)."""
    if float(cfg.DATASETS.VAL_FRACTION) <= 0:
        return None
    split = voc_val_split(cfg)
    base = _voc_base(cfg)[0]
    for name, held_out in ((VAL_SET, True), (TRAIN_MINUS_VAL, False)):
        if name in DatasetCatalog.list():
            DatasetCatalog.remove(name)
        if name in MetadataCatalog.list():
            MetadataCatalog.remove(name)
        DatasetCatalog.register(
            name, lambda held_out=held_out: _held_out_dicts(base, split["val"], held_out)
        )
        MetadataCatalog.get(name).set(
            thing_classes=list(CLASS_NAMES),
            dirname=str(base),
            # the VOC07 11-point AP of the test set (PascalVOCDetectionEvaluator's year 2007)
            year=2007,
            split="held_out",  # no ImageSets list: HeldOutVOCEvaluator lists the images itself
            split_file=split["file"],
            held_out=held_out,
            evaluator_type="pascal_voc_held_out",
        )
    return split


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

    if hasattr(make, "shuffle_start"):  # where reference parity's Hessian batch lies
        wrapped.shuffle_start = make.shuffle_start  # type: ignore[attr-defined]
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
            stage_length=bissl_config_of(cfg).lower_stage_length,
            seed=int(cfg.BISSL.SEED),
            rank=rank,
            world_size=world_size,
            num_workers=int(cfg.DATALOADER.NUM_WORKERS),
        )
    )
