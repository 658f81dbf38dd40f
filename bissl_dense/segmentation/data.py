"""mmseg/mmdet datasets under the project's seeded sampling, and the Cityscapes validation split.

* :class:`SeededMMDataset` lets an OpenMMLab dataset take the ``(index, seed)`` draws of
  :class:`~bissl_dense.engine.datasets.SeededSampler`: its pipeline's random transforms (flip,
  resize, crop) then run under the draw's seed, so a resumed fine-tuning run sees the same
  augmentations as an uninterrupted one (:class:`~bissl_dense.engine.loops.ResumableTrainLoop`).
* :func:`write_cityscapes_split` holds out the validation images of Cityscapes' training set
  city by city (SPEC §5, paper App. B.1: "this split is applied separately within each city") and
  writes mmseg ``ann_file`` lists; the official validation set is then the test set.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from mmengine.registry import DATASETS

from bissl_dense.errors import DataError
from bissl_dense.fileio import atomic_write_text
from bissl_dense.stage import SeededDataset

__all__ = ["SeededMMDataset", "cityscapes_city_split", "main", "write_cityscapes_split"]

CITYSCAPES_SUFFIX = "_leftImg8bit.png"


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


def cityscapes_city_split(
    stems: Sequence[str], val_fraction: float = 0.2, seed: int = 0
) -> tuple[list[str], list[str]]:
    """Split ``city/city_seq_frame`` stems into (train, val), ``val_fraction`` of *each* city.

    Every city with at least two images gives ``round(val_fraction * n)`` of them, at least one
    and at most ``n - 1``, drawn with a generator seeded by ``seed``; a one-image city stays in
    training. Both lists are sorted.
    """
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must lie in (0, 1), got {val_fraction}")
    by_city: dict[str, list[str]] = {}
    for stem in stems:
        by_city.setdefault(stem.split("/", 1)[0], []).append(stem)
    rng = np.random.default_rng(seed)
    train: list[str] = []
    val: list[str] = []
    for city in sorted(by_city):
        items = sorted(by_city[city])
        n_val = min(len(items) - 1, max(1, round(val_fraction * len(items))))
        if len(items) < 2:
            n_val = 0
        chosen = set(rng.permutation(len(items))[:n_val].tolist())
        for k, stem in enumerate(items):
            (val if k in chosen else train).append(stem)
    return sorted(train), sorted(val)


def write_cityscapes_split(
    data_root: str | Path,
    out_dir: str | Path,
    val_fraction: float = 0.2,
    seed: int = 0,
) -> dict[str, Any]:
    """Write ``out_dir/{train,val}.txt`` (mmseg ``ann_file`` lines, relative to
    ``leftImg8bit/train``) from the images of ``data_root/leftImg8bit/train``."""
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
    train, val = cityscapes_city_split(stems, val_fraction, seed)
    out = Path(out_dir)
    atomic_write_text(out / "train.txt", "".join(f"{s}\n" for s in train))
    atomic_write_text(out / "val.txt", "".join(f"{s}\n" for s in val))
    cities = sorted({s.split("/", 1)[0] for s in stems})
    return {
        "train": len(train),
        "val": len(val),
        "cities": len(cities),
        "val_fraction": val_fraction,
        "seed": seed,
        "files": [str(out / "train.txt"), str(out / "val.txt")],
    }


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m bissl_dense.segmentation.data DATA_ROOT --out DIR [--val-fraction 0.2]``."""
    parser = argparse.ArgumentParser(
        prog="python -m bissl_dense.segmentation.data",
        description="Hold out a validation split of Cityscapes' training images within each "
        "city and write mmseg ann_file lists (train.txt, val.txt).",
    )
    parser.add_argument("data_root", help="Cityscapes root (leftImg8bit/, gtFine/)")
    parser.add_argument("--out", required=True, help="directory for train.txt and val.txt")
    parser.add_argument("--val-fraction", type=float, default=0.2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        summary = write_cityscapes_split(args.data_root, args.out, args.val_fraction, args.seed)
    except (DataError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
