"""Generated splits (SPEC §5): the stratified validation hold-out, Caltech-101's 30 per class, and
the split files that make both reusable; and the BiSSL authors' published index files.

Paper App. B.1: datasets without an official validation split hold out "roughly 20%" of the
training set for validation, "randomly sampled while ensuring that the class proportions are
preserved"; Caltech-101 takes "30 random images per class" for training and tests on the rest.

Determinism does not depend on the order in which a file system lists a folder: items are
grouped by class and sorted by their stable id before a seeded generator permutes them, and the
generator is keyed by the seed *and* a fixed per-purpose stream
(``numpy.random.default_rng([seed, crc32(stream)])``), so two datasets or two purposes never
share a random sequence.

The authors' reference code fixes its splits instead as index files,
``<dir>/<name>_{train,val[,test]}_split.txt``: one integer per line, each a position in the
torchvision dataset of the official training set (Pets: ``trainval``; Caltech-101: the whole
dataset, which also gets a ``test`` file), applied as ``[dataset[i] for i in indices]``.
:func:`read_author_splits` reads them for the datasets they exist for
(:data:`AUTHOR_SPLIT_FILES`).
"""

from __future__ import annotations

import json
import math
import zlib
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bissl_dense.fileio import atomic_write_text
from classification.datasets.base import SplitFileError

__all__ = [
    "AUTHOR_SPLIT_FILES",
    "AUTHOR_SPLIT_NAMES",
    "CONVENTIONS",
    "HOLDOUT_FRACTION",
    "SPLIT_FILE_FORMAT",
    "holdout_count",
    "author_split_paths",
    "read_author_splits",
    "read_index_file",
    "read_split_file",
    "sample_per_class",
    "split_file_path",
    "stratified_holdout",
    "write_split_file",
]

HOLDOUT_FRACTION = 0.2
SPLIT_FILE_FORMAT = 1

# Where a split's members come from (DatasetSplit.split_convention, `bissl data check`):
# "official": the dataset's own lists, no file; "generated": drawn here, no split_dir to keep
# them; "bissl-json": drawn here and kept in / read from <split_dir>/<name>_seed<seed>.json;
# "authors-index": the authors' <split_dir>/<name>_{train,val[,test]}_split.txt.
CONVENTIONS = ("official", "generated", "bissl-json", "authors-index")

# The datasets the authors published index files for (their repository's data/tv_splits/) and
# the splits each has; the other four use official splits there too.
AUTHOR_SPLIT_FILES: dict[str, tuple[str, ...]] = {
    "food101": ("train", "val"),
    "cifar10": ("train", "val"),
    "cifar100": ("train", "val"),
    "cub200": ("train", "val"),
    "sun397": ("train", "val"),
    "cars": ("train", "val"),
    "pets": ("train", "val"),
    "caltech101": ("train", "val", "test"),
}
# The authors' dataset names where they differ from ours (their file is food_train_split.txt).
AUTHOR_SPLIT_NAMES: dict[str, str] = {"food101": "food"}


def _rng(seed: int, stream: str) -> np.random.Generator:
    if not isinstance(seed, int | np.integer) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    return np.random.default_rng([int(seed), zlib.crc32(stream.encode())])


def _by_class(ids: Sequence[str], labels: Sequence[Hashable]) -> list[list[int]]:
    """Item indices grouped by label (labels in sorted order), each group sorted by item id."""
    if len(ids) != len(labels):
        raise ValueError(f"{len(ids)} ids but {len(labels)} labels")
    groups: dict[Hashable, list[int]] = {}
    for index, label in enumerate(labels):
        groups.setdefault(label, []).append(index)
    return [sorted(groups[label], key=ids.__getitem__) for label in sorted(groups)]


def holdout_count(n: int, fraction: float = HOLDOUT_FRACTION) -> int:
    """Validation items for a class of ``n``: ``fraction * n`` rounded half up, at least 1 when
    the class has 2 or more items, and never the whole class (training keeps at least one)."""
    if n < 2:
        return 0
    return min(n - 1, max(1, math.floor(fraction * n + 0.5)))


def stratified_holdout(
    ids: Sequence[str],
    labels: Sequence[Hashable],
    seed: int,
    stream: str,
    fraction: float = HOLDOUT_FRACTION,
) -> tuple[list[int], list[int]]:
    """Split item positions into ``(train, val)``: per class, :func:`holdout_count` random items
    go to ``val``. Both lists are in ascending position order."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"fraction must lie in (0, 1), got {fraction}")
    rng = _rng(seed, stream)
    val: list[int] = []
    for members in _by_class(ids, labels):
        order = rng.permutation(len(members))
        val.extend(members[j] for j in order[: holdout_count(len(members), fraction)])
    chosen = set(val)
    return [i for i in range(len(ids)) if i not in chosen], sorted(val)


def sample_per_class(
    ids: Sequence[str],
    labels: Sequence[Hashable],
    count: int,
    seed: int,
    stream: str,
) -> tuple[list[int], list[int]]:
    """Split item positions into ``(picked, rest)`` with exactly ``count`` random items of every
    class picked. A class with ``count`` items or fewer is an error (nothing would be left)."""
    rng = _rng(seed, stream)
    picked: list[int] = []
    for members in _by_class(ids, labels):
        if len(members) <= count:
            raise ValueError(
                f"class of item {ids[members[0]]!r} has {len(members)} items; "
                f"{count} per class are needed for training and at least one for testing"
            )
        order = rng.permutation(len(members))
        picked.extend(members[j] for j in order[:count])
    chosen = set(picked)
    return sorted(picked), [i for i in range(len(ids)) if i not in chosen]


# --------------------------------------------------------------------------------------------
# Split files
# --------------------------------------------------------------------------------------------


def split_file_path(split_dir: str | Path, name: str, seed: int) -> Path:
    """``<split_dir>/<name>_seed<seed>.json``."""
    return Path(split_dir).expanduser() / f"{name}_seed{seed}.json"


def write_split_file(
    path: Path, name: str, seed: int, rule: str, groups: Mapping[str, Sequence[str]]
) -> None:
    """Write the generated splits as lists of item ids (atomically: a concurrent reader, e.g.
    another rank of the same run, sees no file or the whole file)."""
    document = {
        "format": SPLIT_FILE_FORMAT,
        "dataset": name,
        "seed": seed,
        "rule": rule,
        "sizes": {key: len(value) for key, value in groups.items()},
        "splits": {key: list(value) for key, value in groups.items()},
    }
    atomic_write_text(path, json.dumps(document, indent=1) + "\n")


def read_split_file(
    path: Path, name: str, seed: int, expected: Mapping[str, Sequence[str]]
) -> dict[str, list[str]]:
    """Read a split file written by :func:`write_split_file` and check it against the data.

    ``expected`` maps each stored split to the ids it may be drawn from: e.g. ``{"train": pool,
    "val": pool}`` means ``train`` and ``val`` must partition exactly the ids of ``pool``. A file
    for another dataset, seed or copy of the data (different items) is refused with a message
    naming the file and what differs.
    """
    fix = f"delete {path} to regenerate it, or pass another split directory"
    try:
        document: Any = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise SplitFileError(f"split file {path} cannot be read ({error}); {fix}") from error
    if not isinstance(document, dict) or document.get("format") != SPLIT_FILE_FORMAT:
        raise SplitFileError(
            f"split file {path} is not a bissl split file of format {SPLIT_FILE_FORMAT}; {fix}"
        )
    if document.get("dataset") != name or document.get("seed") != seed:
        raise SplitFileError(
            f"split file {path} is for dataset {document.get('dataset')!r} with seed "
            f"{document.get('seed')!r}, not {name!r} with seed {seed}; {fix}"
        )
    splits = document.get("splits")
    if not isinstance(splits, dict) or set(splits) != set(expected):
        found = sorted(splits) if isinstance(splits, dict) else splits
        raise SplitFileError(
            f"split file {path} holds splits {found}, expected {sorted(expected)}; {fix}"
        )
    result: dict[str, list[str]] = {}
    for key, value in splits.items():
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise SplitFileError(f"split file {path}: '{key}' is not a list of item ids; {fix}")
        result[key] = value

    # The stored splits must partition the pools they were drawn from, item for item.
    sources: dict[int, tuple[set[str], list[str]]] = {}
    for key, pool_ids in expected.items():
        entry = sources.setdefault(id(pool_ids), (set(pool_ids), []))
        entry[1].append(key)
    for pool_ids, keys in sources.values():
        stored = [item for key in keys for item in result[key]]
        stored_set = set(stored)
        if len(stored_set) != len(stored):
            raise SplitFileError(
                f"split file {path}: splits {keys} repeat item ids (they must be disjoint); {fix}"
            )
        if stored_set != pool_ids:
            missing = sorted(pool_ids - stored_set)
            unknown = sorted(stored_set - pool_ids)
            detail = []
            if unknown:
                detail.append(
                    f"{len(unknown)} ids not in the dataset on disk (e.g. {unknown[0]!r})"
                )
            if missing:
                detail.append(f"{len(missing)} items on disk not in the file (e.g. {missing[0]!r})")
            raise SplitFileError(
                f"split file {path} does not match the {name} data on disk: splits {keys} "
                f"hold {len(stored_set)} items, the data has {len(pool_ids)}; "
                f"{'; '.join(detail)}. It was made from another copy of the dataset; {fix}"
            )
    return result


# --------------------------------------------------------------------------------------------
# The authors' index files
# --------------------------------------------------------------------------------------------


def author_split_paths(split_dir: str | Path, name: str) -> dict[str, Path] | None:
    """The authors' index files of ``name`` in ``split_dir`` (``{split: path}``), or ``None``
    when there is none of them there (or the authors published none for ``name``).

    Files are looked for under the authors' dataset name (``food_train_split.txt``) first, then
    under ours (``food101_train_split.txt``); one present file is enough to choose the
    convention, and :func:`read_author_splits` then requires the others."""
    if name not in AUTHOR_SPLIT_FILES:
        return None
    folder = Path(split_dir).expanduser()
    for stem in dict.fromkeys((AUTHOR_SPLIT_NAMES.get(name, name), name)):
        paths = {key: folder / f"{stem}_{key}_split.txt" for key in AUTHOR_SPLIT_FILES[name]}
        if any(path.exists() for path in paths.values()):
            return paths
    return None


def read_index_file(path: Path, size: int, base: str) -> list[int]:
    """One authors' index file: integers, one a line (blank lines skipped, as ``numpy.loadtxt``
    skips them), each in ``0 .. size - 1`` and none twice; ``base`` names what they index."""
    try:
        text = path.read_text()
    except FileNotFoundError as error:
        raise SplitFileError(f"authors' split file {path} not found") from error
    except (OSError, UnicodeDecodeError) as error:
        raise SplitFileError(f"authors' split file {path} cannot be read ({error})") from error
    indices: list[int] = []
    seen: dict[int, int] = {}
    for number, line in enumerate(text.splitlines(), 1):
        token = line.strip()
        if not token:
            continue
        try:
            index = int(token)
        except ValueError:
            raise SplitFileError(
                f"authors' split file {path} line {number}: expected one integer, got {line!r}"
            ) from None
        if not 0 <= index < size:
            raise SplitFileError(
                f"authors' split file {path} line {number}: index {index} is out of range; "
                f"{base} has {size} images (indices 0..{size - 1}) - is it another copy or "
                "version of the dataset?"
            )
        if index in seen:
            raise SplitFileError(
                f"authors' split file {path} line {number}: index {index} repeats line "
                f"{seen[index]}"
            )
        seen[index] = number
        indices.append(index)
    if not indices:
        raise SplitFileError(f"authors' split file {path} holds no indices")
    return indices


def read_author_splits(paths: Mapping[str, Path], size: int, base: str) -> dict[str, list[int]]:
    """Read the authors' index files (``{split: path}`` from :func:`author_split_paths`) into
    positions in ``base`` (``size`` items), in file order, and check the splits are disjoint."""
    missing = [path for path in paths.values() if not path.is_file()]
    if missing:
        present = [path.name for path in paths.values() if path.is_file()]
        raise SplitFileError(
            f"authors' split file {missing[0]} not found; the authors' convention needs "
            f"{', '.join(path.name for path in paths.values())} together (found "
            f"{', '.join(present)} in {missing[0].parent})"
        )
    groups = {key: read_index_file(path, size, base) for key, path in paths.items()}
    keys = list(groups)
    for a, first in enumerate(keys):
        for second in keys[a + 1 :]:
            shared = set(groups[first]).intersection(groups[second])
            if shared:
                raise SplitFileError(
                    f"authors' split files {paths[first]} and {paths[second]} share "
                    f"{len(shared)} indices (e.g. {min(shared)}); {' / '.join(keys)} must be "
                    "disjoint"
                )
    return groups
