"""Caltech-UCSD Birds-200-2011 from ``CUB_200_2011/`` as the official archive unpacks.

torchvision has no class for it. The archive's metadata files are whitespace-separated
``<image id> <value>`` lines:

* ``images.txt``: image id -> path under ``images/`` (``001.Black_footed_Albatross/...jpg``);
* ``image_class_labels.txt``: image id -> class id (1..200);
* ``train_test_split.txt``: image id -> 1 (training) or 0 (test);
* ``classes.txt``: class id -> ``001.Black_footed_Albatross``.

Class names drop the numeric prefix (``Black_footed_Albatross``); labels are class id - 1.
Items keep the order of ``images.txt`` (ascending ids in the official archive): the authors'
loader lists them in that order, and their published split indices count in it.
"""

from __future__ import annotations

from pathlib import Path

from classification.datasets.base import Catalog, DatasetLayoutError, Pool
from classification.datasets.readers import require_dir, require_file

__all__ = ["CUB_ARCHIVE_MD5", "CUB_ARCHIVE_URL", "read_cub200"]

CUB_ARCHIVE_URL = "https://data.caltech.edu/records/65de6-vp158/files/CUB_200_2011.tgz"
CUB_ARCHIVE_MD5 = "97eceeb196236b17998738112f37df78"


def _pairs(path: Path) -> dict[str, str]:
    """``<id> <value>`` lines as a dict (the value may contain no further whitespace split)."""
    pairs: dict[str, str] = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split(maxsplit=1)
        if len(parts) != 2:
            raise DatasetLayoutError(f"{path} line {number}: expected '<id> <value>', got {line!r}")
        if parts[0] in pairs:
            raise DatasetLayoutError(f"{path} line {number}: id {parts[0]} appears twice")
        pairs[parts[0]] = parts[1].strip()
    return pairs


def read_cub200(root: Path) -> Catalog:
    folder = root / "CUB_200_2011"
    images_dir = require_dir(folder / "images", "CUB-200-2011 image folder")
    tables = {
        name: _pairs(require_file(folder / f"{name}.txt", f"CUB-200-2011 {name}.txt"))
        for name in ("images", "image_class_labels", "train_test_split", "classes")
    }
    class_ids = sorted(tables["classes"], key=int)
    if [int(c) for c in class_ids] != list(range(1, len(class_ids) + 1)):
        raise DatasetLayoutError(f"{folder / 'classes.txt'}: class ids must run 1..N")
    classes = [tables["classes"][c].split(".", 1)[-1] for c in class_ids]

    image_ids = list(tables["images"])  # images.txt order (the authors' indices count in it)
    for name in ("image_class_labels", "train_test_split"):
        if set(tables[name]) != set(image_ids):
            extra = sorted(set(tables[name]) ^ set(image_ids), key=int)
            raise DatasetLayoutError(
                f"{folder / (name + '.txt')} and {folder / 'images.txt'} list different image "
                f"ids (e.g. {extra[0]}); the archive's files belong together"
            )
    members: dict[str, tuple[list[str], list[int], list[Path]]] = {
        "train": ([], [], []),
        "test": ([], [], []),
    }
    for image_id in image_ids:
        relative = tables["images"][image_id]
        flag = tables["train_test_split"][image_id]
        label = int(tables["image_class_labels"][image_id]) - 1
        if flag not in ("0", "1"):
            raise DatasetLayoutError(
                f"{folder / 'train_test_split.txt'}: image {image_id} has flag {flag!r} (0 or 1)"
            )
        if not 0 <= label < len(classes):
            raise DatasetLayoutError(
                f"{folder / 'image_class_labels.txt'}: image {image_id} has class {label + 1}, "
                f"outside 1..{len(classes)}"
            )
        ids, labels, files = members["train" if flag == "1" else "test"]
        ids.append(relative)
        labels.append(label)
        files.append(images_dir / relative)
    pools = {
        split: Pool(ids=ids, targets=labels, files=files)
        for split, (ids, labels, files) in members.items()
    }
    return Catalog(classes=classes, pools=pools, folder=folder)
