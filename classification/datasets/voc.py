"""PASCAL VOC 2007 as a 20-class multi-label classification dataset.

Read from ``VOCdevkit/VOC2007/ImageSets/Main``: ``{train,val,test}.txt`` list the image ids of
each official split and ``<class>_<split>.txt`` give, per image, ``1`` (the class is present),
``-1`` (absent) or ``0`` (present only through objects marked *difficult*).

``0`` counts as **present**. That is what the BiSSL authors' code does (it marks a class present
when any object of it, difficult or not, is in the image's annotation XML), and what an
image-level label means: the object is in the picture. The VOC devkit's classification
evaluation ignores such image/class pairs instead of scoring them either way, so the
dataset also exposes them (``DatasetSplit.difficult``) for an evaluation that wants to.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from bissl_dense.datasets.synthetic import VOC_CLASSES
from classification.datasets.base import Catalog, DatasetLayoutError, Pool
from classification.datasets.readers import require_dir, require_file

__all__ = ["VOC2007_SPLITS", "read_voc2007"]

VOC2007_SPLITS = ("train", "val", "test")


def _class_file(path: Path, ids: list[str]) -> dict[str, int]:
    values: dict[str, int] = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 2 or parts[1] not in ("1", "0", "-1"):
            raise DatasetLayoutError(
                f"{path} line {number}: expected '<image id> <1|0|-1>', got {line!r}"
            )
        values[parts[0]] = int(parts[1])
    missing = [image_id for image_id in ids if image_id not in values]
    if missing:
        raise DatasetLayoutError(
            f"{path} has no entry for {len(missing)} image(s) of the split (e.g. {missing[0]})"
        )
    return values


def read_voc2007(root: Path) -> Catalog:
    folder = root / "VOCdevkit" / "VOC2007"
    main = require_dir(folder / "ImageSets" / "Main", "VOC2007 image set folder")
    images = require_dir(folder / "JPEGImages", "VOC2007 image folder")
    pools = {}
    for split in VOC2007_SPLITS:
        listing = require_file(main / f"{split}.txt", f"VOC2007 {split} list")
        ids = listing.read_text().split()
        values = np.zeros((len(ids), len(VOC_CLASSES)), dtype=np.int8)
        for column, name in enumerate(VOC_CLASSES):
            labels = _class_file(
                require_file(main / f"{name}_{split}.txt", f"VOC2007 '{name}' {split} labels"), ids
            )
            values[:, column] = [labels[image_id] for image_id in ids]
        pools[split] = Pool(
            ids=ids,
            targets=list(torch.from_numpy((values >= 0).astype(np.float32)).unbind(0)),
            files=[images / f"{image_id}.jpg" for image_id in ids],
            difficult=list(torch.from_numpy(values == 0).unbind(0)),
        )
    return Catalog(classes=list(VOC_CLASSES), pools=pools, multilabel=True, folder=folder)
