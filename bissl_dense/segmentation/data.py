"""mmseg/mmdet datasets under the project's seeded sampling, and the held-out validation splits of
the segmentation data sets.

* :class:`SeededMMDataset` lets an OpenMMLab dataset take the ``(index, seed)`` draws of
  :class:`~bissl_dense.engine.datasets.SeededSampler`: its pipeline's random transforms (flip,
  resize, crop) then run under the draw's seed, so a resumed fine-tuning run sees the same
  augmentations as an uninterrupted one (:class:`~bissl_dense.engine.loops.ResumableTrainLoop`).
* Validation is held out of the training images (SPEC §5; paper App. B.1: "we reserve roughly
  20 % of the training data for validation"), so that the best checkpoint and the searches never
  select on the split that is reported:

  - Cityscapes (:func:`write_cityscapes_split`): within each city ("this split is applied
    separately within each city"); the official validation set is the test set;
  - VOC aug (:func:`write_voc_aug_split`): from each of the two training lists that mmseg's
    ``voc_aug`` converter leaves (VOC2012 seg ``train.txt`` with VOC's own masks, SBD's ``aug.txt``
    with ``SegmentationClassAug`` masks); VOC2012 seg ``val.txt`` is the test set.

  ``python -m bissl_dense.segmentation.data DATA_ROOT --out DATA_ROOT/splits`` writes the mmseg
  ``ann_file`` lists the configs read. A split is written once: every list atomically, then
  ``split.json`` (its seed, fraction and sizes), which marks it complete. A second call, another
  process or a later run reads it back instead of drawing again, after checking that it still
  partitions the training lists; a call with another seed or fraction is refused.
* :class:`VOCAugDataset` and :class:`CityscapesSplitDataset` are mmseg's ``PascalVOCDataset`` and
  ``CityscapesDataset`` reading such lists; a missing list fails in one line naming the command
  that writes it (mmseg's own datasets stop at a bare ``AssertionError``).
"""

from __future__ import annotations

import argparse
import json
import os.path as osp
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from mmengine.fileio import list_from_file
from mmengine.registry import DATASETS
from mmseg.datasets import CityscapesDataset, PascalVOCDataset

from bissl_dense.errors import ConfigError, DataError
from bissl_dense.fileio import atomic_write_text
from bissl_dense.stage import SeededDataset

__all__ = [
    "CityscapesSplitDataset",
    "SeededMMDataset",
    "VOCAugDataset",
    "cityscapes_city_split",
    "holdout_per_group",
    "main",
    "voc_aug_split",
    "write_cityscapes_split",
    "write_voc_aug_split",
]

CITYSCAPES_SUFFIX = "_leftImg8bit.png"
SPLIT_META = "split.json"
COMMAND = "python -m bissl_dense.segmentation.data"
# mmseg's voc_aug converter writes these under VOC2012/ (README, "VOC aug and Cityscapes")
VOC_SEG_LISTS = "ImageSets/Segmentation"


@DATASETS.register_module()
class SeededMMDataset(SeededDataset):
    """``dataset[(index, seed)]`` for an OpenMMLab dataset (config or instance).

    ``metainfo`` is the wrapped dataset's (the runner gives it to the evaluator and visualiser).
    """

    def __init__(self, dataset: Mapping[str, Any] | Any) -> None:
        if isinstance(dataset, Mapping):
            dataset = DATASETS.build(dict(dataset))
        super().__init__(dataset)

    @property
    def metainfo(self) -> dict[str, Any]:
        return dict(getattr(self.dataset, "metainfo", {}))


# --------------------------------------------------------------------------------------------
# Drawing the splits
# --------------------------------------------------------------------------------------------


def holdout_per_group(
    groups: Mapping[str, Sequence[str]], val_fraction: float, seed: int
) -> dict[str, tuple[list[str], list[str]]]:
    """Hold out ``round(val_fraction * n)`` items of every group: ``{group: (train, val)}``.

    A group of at least two items gives at least one and at most ``n - 1``; a one-item group
    stays in training. One generator seeded by ``seed`` draws the groups in sorted order, each
    group's items sorted first, so the result depends only on the items and the seed. Both
    lists of a group are sorted.
    """
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must lie in (0, 1), got {val_fraction}")
    rng = np.random.default_rng(seed)
    out: dict[str, tuple[list[str], list[str]]] = {}
    for group in sorted(groups):
        items = sorted(groups[group])
        n_val = min(len(items) - 1, max(1, round(val_fraction * len(items))))
        if len(items) < 2:
            n_val = 0
        chosen = set(rng.permutation(len(items))[:n_val].tolist())
        out[group] = (
            [s for k, s in enumerate(items) if k not in chosen],
            [s for k, s in enumerate(items) if k in chosen],
        )
    return out


def cityscapes_city_split(
    stems: Sequence[str], val_fraction: float = 0.2, seed: int = 0
) -> tuple[list[str], list[str]]:
    """Split ``city/city_seq_frame`` stems into (train, val), ``val_fraction`` of *each* city
    (:func:`holdout_per_group` with the cities as groups). Both lists are sorted."""
    by_city: dict[str, list[str]] = {}
    for stem in stems:
        by_city.setdefault(stem.split("/", 1)[0], []).append(stem)
    parts = holdout_per_group(by_city, val_fraction, seed)
    train = [s for part, _ in parts.values() for s in part]
    val = [s for _, part in parts.values() for s in part]
    return sorted(train), sorted(val)


def voc_aug_split(
    train_ids: Sequence[str], aug_ids: Sequence[str], val_fraction: float = 0.2, seed: int = 0
) -> dict[str, list[str]]:
    """Hold out ``val_fraction`` of VOC aug's two training lists, each separately.

    ``train_ids`` are VOC2012 seg ``train.txt`` (VOC's masks), ``aug_ids`` SBD's extra images
    (``aug.txt``, ``SegmentationClassAug`` masks). Stratifying by list keeps both annotation
    sources in the validation set in their training proportions (VOC's masks have a 255 band
    around objects, SBD's do not). Returns the four lists the configs read: ``train``,
    ``train_aug``, ``val``, ``val_aug`` (sorted).
    """
    parts = holdout_per_group({"train": train_ids, "aug": aug_ids}, val_fraction, seed)
    return {
        "train": parts["train"][0],
        "train_aug": parts["aug"][0],
        "val": parts["train"][1],
        "val_aug": parts["aug"][1],
    }


# --------------------------------------------------------------------------------------------
# Writing a split once, reading it back
# --------------------------------------------------------------------------------------------


def _read_ids(path: Path) -> list[str]:
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def _write_once(
    out: Path,
    meta: dict[str, Any],
    draw: Callable[[], dict[str, list[str]]],
    sources: Mapping[str, tuple[Sequence[str], tuple[str, str]]],
) -> tuple[dict[str, list[str]], bool]:
    """The split in ``out``: read back if ``out/split.json`` exists, else drawn and written.

    ``meta`` identifies the split (data set, seed, fraction); ``draw()`` returns ``{file stem:
    ids}``; ``sources`` maps a name to ``(training list, (train stem, val stem))``: a stored split
    must still partition each training list. Returns the lists and whether they were written.
    """
    meta_path = out / SPLIT_META
    if meta_path.is_file():
        stored = json.loads(meta_path.read_text())
        for key, value in meta.items():
            if stored.get(key) != value:
                raise DataError(
                    f"'{out}' already holds a split with {key}={stored.get(key)!r} (asked: "
                    f"{value!r}); a split is written once: keep it, or write the new one to "
                    "another --out directory"
                )
        lists: dict[str, list[str]] = {}
        for stem in stored["lists"]:
            path = out / f"{stem}.txt"
            if not path.is_file():
                raise DataError(
                    f"'{path}' is missing from the split in '{out}'; remove '{out}' and write "
                    "the split again"
                )
            lists[stem] = _read_ids(path)
        for name, (ids, (train_stem, val_stem)) in sources.items():
            held = lists[train_stem] + lists[val_stem]
            if sorted(held) != sorted(set(ids)) or len(held) != len(set(held)):
                raise DataError(
                    f"the split in '{out}' ({train_stem}.txt + {val_stem}.txt) no longer "
                    f"partitions the {len(set(ids))} images of {name}: the data changed since "
                    f"it was written; remove '{out}' and write the split again"
                )
        return lists, False
    lists = draw()
    for stem, ids in lists.items():
        atomic_write_text(out / f"{stem}.txt", "".join(f"{s}\n" for s in ids))
    # last: a split.json means every list above is complete. A writer killed before it leaves
    # lists without one, and the next call draws them again; processes that start together draw
    # the same lists (the draw depends only on the training lists and the seed).
    record = dict(meta, lists=sorted(lists), counts={k: len(v) for k, v in lists.items()})
    atomic_write_text(meta_path, json.dumps(record, indent=1, sort_keys=True) + "\n")
    return lists, True


def write_cityscapes_split(
    data_root: str | Path,
    out_dir: str | Path,
    val_fraction: float = 0.2,
    seed: int = 0,
) -> dict[str, Any]:
    """Write ``out_dir/{train,val}.txt`` (mmseg ``ann_file`` lines, relative to
    ``leftImg8bit/train``) from the images of ``data_root/leftImg8bit/train``, once."""
    images = Path(data_root) / "leftImg8bit" / "train"
    if not images.is_dir():
        raise DataError(
            f"no Cityscapes training images: '{images}' does not exist (data_root must hold "
            "leftImg8bit/ and gtFine/)"
        )
    stems = sorted(
        str(p.relative_to(images))[: -len(CITYSCAPES_SUFFIX)]
        for p in images.glob(f"*/*{CITYSCAPES_SUFFIX}")
    )
    if len(stems) < 2:
        raise DataError(f"'{images}' holds {len(stems)} images; the split needs at least two")
    out = Path(out_dir)

    def draw() -> dict[str, list[str]]:
        train, val = cityscapes_city_split(stems, val_fraction, seed)
        return {"train": train, "val": val}

    meta = {"dataset": "cityscapes", "seed": seed, "val_fraction": val_fraction}
    lists, written = _write_once(out, meta, draw, {str(images): (stems, ("train", "val"))})
    cities = sorted({s.split("/", 1)[0] for s in stems})
    return {
        "dataset": "cityscapes",
        "train": len(lists["train"]),
        "val": len(lists["val"]),
        "cities": len(cities),
        "val_fraction": val_fraction,
        "seed": seed,
        "written": written,
        "files": [str(out / "train.txt"), str(out / "val.txt")],
    }


def write_voc_aug_split(
    data_root: str | Path,
    out_dir: str | Path,
    val_fraction: float = 0.2,
    seed: int = 0,
) -> dict[str, Any]:
    """Write ``out_dir/{train,train_aug,val,val_aug}.txt`` from VOC aug's training lists, once.

    ``data_root`` is ``VOCdevkit/VOC2012`` after mmseg's ``voc_aug`` converter: its
    ``ImageSets/Segmentation/train.txt`` and ``aug.txt`` are the training images (see
    :func:`voc_aug_split`), ``val.txt`` the test images, which must not appear in either.
    """
    root = Path(data_root)
    seg = root / VOC_SEG_LISTS
    if not (seg / "train.txt").is_file():
        raise DataError(
            f"no VOC2012 segmentation lists: '{seg / 'train.txt'}' does not exist (data_root "
            "must be VOCdevkit/VOC2012)"
        )
    if not (seg / "aug.txt").is_file():
        raise DataError(
            f"'{seg / 'aug.txt'}' does not exist: convert SBD with mmseg's voc_aug converter "
            "first (README: 'VOC aug and Cityscapes')"
        )
    train_ids = sorted(set(_read_ids(seg / "train.txt")))
    # the converter's aug.txt excludes VOC seg train; an older list that does not is fixed here
    # (an image is trained on once, with VOC's own mask)
    aug_ids = sorted(set(_read_ids(seg / "aug.txt")) - set(train_ids))
    if (seg / "val.txt").is_file():
        leaked = sorted(set(_read_ids(seg / "val.txt")) & (set(train_ids) | set(aug_ids)))
        if leaked:
            raise DataError(
                f"{len(leaked)} images of the test list '{seg / 'val.txt'}' are in the training "
                f"lists (e.g. {leaked[0]}); aug.txt must exclude VOC2012 seg val (mmseg's "
                "voc_aug converter does)"
            )
    if len(train_ids) + len(aug_ids) < 2:
        raise DataError(
            f"'{seg}' lists {len(train_ids) + len(aug_ids)} training images; the split needs at "
            "least two"
        )
    out = Path(out_dir)
    meta = {"dataset": "voc_aug", "seed": seed, "val_fraction": val_fraction}
    lists, written = _write_once(
        out,
        meta,
        lambda: voc_aug_split(train_ids, aug_ids, val_fraction, seed),
        {
            str(seg / "train.txt"): (train_ids, ("train", "val")),
            str(seg / "aug.txt"): (aug_ids, ("train_aug", "val_aug")),
        },
    )
    return {
        "dataset": "voc_aug",
        **{name: len(ids) for name, ids in lists.items()},
        "val_fraction": val_fraction,
        "seed": seed,
        "written": written,
        "files": [str(out / f"{name}.txt") for name in sorted(lists)],
    }


# --------------------------------------------------------------------------------------------
# mmseg datasets reading the split lists
# --------------------------------------------------------------------------------------------


def split_list_path(ann_file: str, data_root: str | None) -> Path:
    """Where mmengine's ``BaseDataset`` reads ``ann_file``: joined onto ``data_root`` unless
    absolute."""
    path = Path(ann_file)
    return path if path.is_absolute() or not data_root else Path(data_root) / path


def require_split_list(ann_file: str, data_root: str | None) -> Path:
    """The list's path; a missing list raises :class:`DataError` naming the command that
    writes it."""
    path = split_list_path(ann_file, data_root)
    if not path.is_file():
        root = data_root or "<data_root>"
        raise DataError(
            f"split list '{path}' does not exist; write the split with: {COMMAND} {root} "
            f"--out {path.parent}"
        )
    return path


@DATASETS.register_module()
class VOCAugDataset(PascalVOCDataset):
    """PASCAL VOC aug from one or two id lists with their own mask folders.

    ``ann_file`` lists images whose masks are in ``data_prefix.seg_map_path`` (VOC2012's
    ``SegmentationClass``); ``aug_ann_file`` (optional) lists images whose masks are in
    ``data_prefix.aug_seg_map_path`` (SBD's ``SegmentationClassAug``). One dataset holds
    both, so the training and validation splits of VOC aug are one ``dataset`` entry each,
    as Cityscapes' are. Items keep mmseg's ``PascalVOCDataset`` form.
    """

    def __init__(self, ann_file: str, aug_ann_file: str | None = None, **kwargs: Any):
        data_root = kwargs.get("data_root")
        require_split_list(ann_file, data_root)
        self.aug_ann_file: str | None = None
        if aug_ann_file:
            prefix = kwargs.get("data_prefix") or {}
            if "aug_seg_map_path" not in prefix:
                raise ConfigError(
                    "VOCAugDataset: aug_ann_file needs data_prefix.aug_seg_map_path (the "
                    "folder of its masks, SegmentationClassAug)"
                )
            self.aug_ann_file = str(require_split_list(aug_ann_file, data_root))
        super().__init__(ann_file=ann_file, **kwargs)

    def load_data_list(self) -> list[dict]:
        data_list = super().load_data_list()
        if self.aug_ann_file is None:
            return data_list
        img_dir = self.data_prefix["img_path"]
        mask_dir = self.data_prefix["aug_seg_map_path"]
        for line in list_from_file(self.aug_ann_file, backend_args=self.backend_args):
            name = line.strip()
            if not name:
                continue
            data_list.append(
                dict(
                    img_path=osp.join(img_dir, f"{name}{self.img_suffix}"),
                    seg_map_path=osp.join(mask_dir, f"{name}{self.seg_map_suffix}"),
                    label_map=self.label_map,
                    reduce_zero_label=self.reduce_zero_label,
                    seg_fields=[],
                )
            )
        return data_list


@DATASETS.register_module()
class CityscapesSplitDataset(CityscapesDataset):
    """mmseg's ``CityscapesDataset`` on a written split list (``ann_file``)."""

    def __init__(self, ann_file: str, **kwargs: Any) -> None:
        require_split_list(ann_file, kwargs.get("data_root"))
        super().__init__(ann_file=ann_file, **kwargs)


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------


def _detect(root: Path) -> str | None:
    if (root / "leftImg8bit" / "train").is_dir():
        return "cityscapes"
    if (root / VOC_SEG_LISTS / "train.txt").is_file():
        return "voc_aug"
    return None


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m bissl_dense.segmentation.data DATA_ROOT [--out DIR] [--val-fraction 0.2]``."""
    parser = argparse.ArgumentParser(
        prog=COMMAND,
        description="Hold out a validation split of a segmentation data set's training images "
        "and write mmseg ann_file lists, once: Cityscapes within each city (train.txt, "
        "val.txt), VOC aug from VOC2012 seg train and SBD's aug list separately (train.txt, "
        "train_aug.txt, val.txt, val_aug.txt). The configs read them from DATA_ROOT/splits.",
    )
    parser.add_argument(
        "data_root", help="Cityscapes root (leftImg8bit/, gtFine/) or VOCdevkit/VOC2012"
    )
    parser.add_argument("--out", help="directory for the lists (default: DATA_ROOT/splits)")
    parser.add_argument(
        "--dataset", choices=("auto", "cityscapes", "voc_aug"), default="auto",
        help="which layout DATA_ROOT holds (default: recognised from its folders)",
    )  # fmt: skip
    parser.add_argument("--val-fraction", type=float, default=0.2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    root = Path(args.data_root)
    out = Path(args.out) if args.out else root / "splits"
    kind = _detect(root) if args.dataset == "auto" else args.dataset
    writers = {"cityscapes": write_cityscapes_split, "voc_aug": write_voc_aug_split}
    try:
        if kind is None:
            raise DataError(
                f"'{root}' holds neither Cityscapes (leftImg8bit/train/) nor VOC aug "
                f"({VOC_SEG_LISTS}/train.txt, aug.txt)"
            )
        summary = writers[kind](root, out, args.val_fraction, args.seed)
    except (DataError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
