"""CIFAR-10 and CIFAR-100 from the official "python version" archives.

The file names, label keys and downloader are torchvision's (``torchvision.datasets.CIFAR10`` /
``CIFAR100``). The batches themselves are Python pickles; torchvision unpickles them only after
their MD5 matches the official files, so any other copy (a re-packed mirror, the tests' tiny
fabricated batches) would be refused. Here they are read with a *restricted* unpickler that
resolves nothing but what a numpy array needs, so a tampered file cannot run code and a copy with
other checksums still loads.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torchvision.datasets as tvd

from classification.datasets.base import Catalog, DatasetLayoutError, Pool

__all__ = ["load_cifar_pickle", "read_cifar10", "read_cifar100"]

# (module, name) pairs an official CIFAR batch (or the same data pickled by numpy 1.x / 2.x)
# refers to; nothing else is ever resolved.
_ALLOWED_GLOBALS = frozenset(
    {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.numeric", "_frombuffer"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),  # bytes pickled by Python 3 at protocol 2
    }
)


class _ArrayUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(
                f"refusing to load {module}.{name}: a CIFAR batch holds only arrays, lists and "
                "strings"
            )
        return super().find_class(module, name)


def load_cifar_pickle(path: Path) -> dict[str, Any]:
    """Load one CIFAR batch (a dict of arrays, lists and strings) without running code.

    ``encoding="latin1"``: the official batches were written by Python 2, whose ``str`` holds
    the raw image bytes (torchvision reads them the same way)."""
    try:
        with open(path, "rb") as handle:
            data = _ArrayUnpickler(handle, encoding="latin1").load()
    except (OSError, EOFError, pickle.UnpicklingError, ValueError, TypeError) as error:
        raise DatasetLayoutError(f"cannot read the CIFAR batch {path}: {error}") from error
    if not isinstance(data, dict):
        raise DatasetLayoutError(f"{path} is not a CIFAR batch (a dict), got {type(data).__name__}")
    return {key.decode("latin1") if isinstance(key, bytes) else key: v for key, v in data.items()}


def _read(root: Path, cls: type[tvd.CIFAR10], label_key: str) -> Catalog:
    folder = root / cls.base_folder
    files = [name for name, _ in cls.train_list + cls.test_list] + [cls.meta["filename"]]
    for name in files:
        if not (folder / name).is_file():
            raise DatasetLayoutError(f"{cls.__name__} batch file not found: {folder / name}")
    meta = load_cifar_pickle(folder / cls.meta["filename"])
    if cls.meta["key"] not in meta:
        raise DatasetLayoutError(
            f"{folder / cls.meta['filename']} has no '{cls.meta['key']}' entry (the class names)"
        )
    classes = [str(name) for name in meta[cls.meta["key"]]]
    pools = {}
    for split, listing in (("train", cls.train_list), ("test", cls.test_list)):
        arrays, labels, ids = [], [], []
        for name, _ in listing:
            batch = load_cifar_pickle(folder / name)
            if "data" not in batch or label_key not in batch:
                raise DatasetLayoutError(
                    f"{folder / name} lacks 'data' or '{label_key}' (found {sorted(batch)})"
                )
            data = np.asarray(batch["data"], dtype=np.uint8)
            if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or len(batch[label_key]) != len(data):
                raise DatasetLayoutError(
                    f"{folder / name}: 'data' must be N x 3072 uint8 rows with N labels, got "
                    f"{data.shape} and {len(batch[label_key])} labels"
                )
            # rows are 1024 red, 1024 green, 1024 blue values of a 32x32 image
            arrays.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
            labels.extend(int(label) for label in batch[label_key])
            ids.extend(f"{name}:{row}" for row in range(len(data)))
        bad = [label for label in labels if not 0 <= label < len(classes)]
        if bad:
            raise DatasetLayoutError(
                f"{cls.__name__} {split} label {bad[0]} is outside the {len(classes)} classes "
                f"named in {folder / cls.meta['filename']}"
            )
        pools[split] = Pool(
            ids=ids, targets=labels, arrays=np.ascontiguousarray(np.concatenate(arrays))
        )
    return Catalog(classes=classes, pools=pools, folder=folder)


def read_cifar10(root: Path) -> Catalog:
    return _read(root, tvd.CIFAR10, "labels")


def read_cifar100(root: Path) -> Catalog:
    return _read(root, tvd.CIFAR100, "fine_labels")
