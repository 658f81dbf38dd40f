"""Data sets: generated data in the real on-disk layouts (:mod:`.synthetic`).

The names below are imported lazily, so that ``python -m bissl_dense.datasets.synthetic`` does
not import the module twice (runpy warns when the package has already imported it).
"""

from __future__ import annotations

import importlib
from typing import Any

_SYNTHETIC_NAMES = (
    "CITYSCAPES_LABELS",
    "CITYSCAPES_TRAIN_CLASSES",
    "VOC_CLASSES",
    "class_appearance",
    "imagefolder_class_name",
    "voc_colormap",
    "write_cityscapes",
    "write_imagefolder",
    "write_unlabeled",
    "write_voc",
)

__all__ = list(_SYNTHETIC_NAMES)


def __getattr__(name: str) -> Any:
    if name in _SYNTHETIC_NAMES:
        return getattr(importlib.import_module("bissl_dense.datasets.synthetic"), name)
    raise AttributeError(f"module 'bissl_dense.datasets' has no attribute {name!r}")
