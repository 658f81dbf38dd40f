"""The BiSSL authors' published split files (``<name>_{train,val[,test]}_split.txt``) read from a
split directory, on tiny copies of the real on-disk layouts.

The authors' code applies each file's integers as positions in the dataset it builds
(``[dataset[i] for i in indices]``): torchvision's Food101 / CIFAR / StanfordCars /
OxfordIIITPet ('trainval') / Caltech101, and for CUB-200-2011 and SUN397 its own lists
(``images.txt`` order of the training flag; ``Partitions/Training_01.txt``). The expected items
below come from torchvision's classes reading the same fabricated files, or from listing those
metadata files here, never from the code under test.
"""

from __future__ import annotations

import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torchvision.datasets as tvd

from bissl_dense.cli import main
from classification.datasets import SplitFileError, build_dataset, build_splits
from classification.datasets.splits import AUTHOR_SPLIT_FILES, AUTHOR_SPLIT_NAMES
from tests.classification._layouts import WRITERS, nearest_class

# Small copies: the authors' convention draws nothing, so Caltech-101 needs no 31 per class.
SIZES: dict[str, dict[str, Any]] = {"caltech101": {"per_class": (4, 5, 6)}}


@pytest.fixture(scope="module")
def roots(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, dict[str, Any]]]:
    written = {}
    for name in AUTHOR_SPLIT_FILES:
        root = tmp_path_factory.mktemp(name)
        written[name] = (root, WRITERS[name](root, **SIZES.get(name, {})))
    # CUB: images.txt in another order than its ids (the authors' loader keeps the file order)
    images = written["cub200"][0] / "CUB_200_2011" / "images.txt"
    lines = images.read_text().splitlines()
    order = np.random.default_rng(200).permutation(len(lines))
    images.write_text("".join(lines[i] + "\n" for i in order))
    return written


def _reference_items(name: str, root: Path, truth: dict[str, Any]) -> list[tuple[Any, int]]:
    """The dataset the authors' indices count in, as ``(item, label)``: item is the image file,
    or for CIFAR the ``32 x 32 x 3`` array."""
    if name == "food101":
        ds = tvd.Food101(str(root), split="train")
        return [(Path(f), label) for f, label in zip(ds._image_files, ds._labels, strict=True)]
    if name in ("cifar10", "cifar100"):
        cls = tvd.CIFAR10 if name == "cifar10" else tvd.CIFAR100
        ds = cls(str(root), train=True)
        return list(zip(ds.data, ds.targets, strict=True))
    if name == "cars":
        return [
            (Path(f), label) for f, label in tvd.StanfordCars(str(root), split="train")._samples
        ]
    if name == "pets":
        ds = tvd.OxfordIIITPet(str(root), split="trainval")
        return [(Path(f), label) for f, label in zip(ds._images, ds._labels, strict=True)]
    if name == "caltech101":
        ds = tvd.Caltech101(str(root))
        folder = root / "caltech101" / "101_ObjectCategories"
        return [
            (folder / ds.categories[label] / f"image_{number:04d}.jpg", label)
            for label, number in zip(ds.y, ds.index, strict=True)
        ]
    labels = dict(zip(truth["splits"]["train"]["ids"], truth["splits"]["train"]["labels"]))
    if name == "cub200":
        folder = root / "CUB_200_2011"
        return [(folder / "images" / path, labels[path]) for path in _cub_listing(root, "1")]
    assert name == "sun397"  # Partitions/Training_01.txt order
    folder = root / "SUN397"
    listed = (folder / "Partitions" / "Training_01.txt").read_text().split()
    return [(folder / line.lstrip("/"), labels[line.lstrip("/")]) for line in listed]


def _cub_listing(root: Path, flag: str) -> list[str]:
    """CUB's images of one train/test flag in images.txt order (the authors' loader merges the
    metadata tables on the image id, which keeps the order of images.txt)."""
    folder = root / "CUB_200_2011"
    flags = dict(
        line.split() for line in (folder / "train_test_split.txt").read_text().splitlines()
    )
    listed = [line.split() for line in (folder / "images.txt").read_text().splitlines()]
    return [path for image_id, path in listed if flags[image_id] == flag]


def _write_author_files(name: str, size: int, split_dir: Path) -> dict[str, list[int]]:
    """Shuffled, disjoint index files; outside Caltech-101 two images stay in none (as the
    authors' CIFAR-10 files leave 10,000 training images out)."""
    order = np.random.default_rng(zlib.crc32(name.encode())).permutation(size).tolist()
    if "test" in AUTHOR_SPLIT_FILES[name]:
        half = size // 2
        groups = {"train": order[:half], "val": order[half : half + 3], "test": order[half + 3 :]}
    else:
        groups = {"train": order[: size - 5], "val": order[size - 5 : size - 2]}
    split_dir.mkdir(parents=True, exist_ok=True)
    stem = AUTHOR_SPLIT_NAMES.get(name, name)
    for key, indices in groups.items():
        (split_dir / f"{stem}_{key}_split.txt").write_text("".join(f"{i}\n" for i in indices))
    return groups


@pytest.mark.parametrize("name", sorted(AUTHOR_SPLIT_FILES))
def test_indices_select_the_references_images(
    name: str, roots: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # torchvision's CIFAR checks the official MD5s; the fabricated batches are read unchecked
    monkeypatch.setattr("torchvision.datasets.cifar.check_integrity", lambda *a, **k: True)
    root, truth = roots[name]
    reference = _reference_items(name, root, truth)
    groups = _write_author_files(name, len(reference), tmp_path)
    splits = build_splits(name, root, seed=3, split_dir=tmp_path)

    for key, indices in groups.items():
        ours = splits[key]
        assert ours.split_convention == "authors-index"
        assert ours.split_file is not None and ours.split_file.name.endswith(f"_{key}_split.txt")
        # position k of our split is position k of theirs: reference[indices[k]]
        assert ours.targets == [reference[i][1] for i in indices], key
        if name.startswith("cifar"):
            for k, i in enumerate(indices):
                assert np.array_equal(np.asarray(ours[k][0]), reference[i][0]), (key, k)
        else:
            assert ours.files() == [reference[i][0] for i in indices], key
            assert all(nearest_class(ours[k][0]) == ours.targets[k] for k in range(len(ours)))
    assert not set(splits["train"].ids) & set(splits["val"].ids)
    assert splits["trainval"].ids == splits["train"].ids + splits["val"].ids
    if "test" not in groups:  # the official test set, in the reference's order
        test = _cub_listing(root, "0") if name == "cub200" else truth["splits"]["test"]["ids"]
        assert splits["test"].ids == test
        labels = dict(zip(truth["splits"]["test"]["ids"], truth["splits"]["test"]["labels"]))
        assert splits["test"].targets == [labels[i] for i in test]
    assert not set(splits["trainval"].ids) & set(splits["test"].ids)

    # the seed changes nothing, and no bissl split file is written next to the authors' files
    again = build_splits(name, root, seed=7, split_dir=tmp_path)
    assert all(again[key].ids == splits[key].ids for key in splits)
    assert not list(tmp_path.glob("*.json"))


def test_authors_files_take_precedence_over_a_bissl_split_file(roots: dict, tmp_path: Path) -> None:
    root, _ = roots["pets"]
    generated = build_splits("pets", root, seed=0, split_dir=tmp_path)
    assert generated["train"].split_convention == "bissl-json"
    json_file = tmp_path / "pets_seed0.json"
    before = json_file.read_text()
    groups = _write_author_files("pets", 15, tmp_path)
    val = build_dataset("pets", root, "val", seed=0, split_dir=tmp_path)
    assert val.split_convention == "authors-index" and len(val) == len(groups["val"])
    assert json_file.read_text() == before
    assert build_dataset("pets", root, "val").split_convention == "generated"
    # datasets with official splits read no file (the authors use the official ones too)
    WRITERS["flowers"](tmp_path / "flowers")
    (tmp_path / "flowers_train_split.txt").write_text("0\n")
    flowers = build_dataset("flowers", tmp_path / "flowers", "train", split_dir=tmp_path)
    assert flowers.split_convention == "official" and len(flowers) == 9


def test_our_dataset_name_is_read_too(roots: dict, tmp_path: Path) -> None:
    """Food-101's files are the authors' ``food_*``; ``food101_*`` (our name) works as well."""
    root, _ = roots["food101"]
    groups = _write_author_files("food101", 15, tmp_path)
    for key in groups:
        (tmp_path / f"food_{key}_split.txt").rename(tmp_path / f"food101_{key}_split.txt")
    train = build_dataset("food101", root, "train", split_dir=tmp_path)
    assert train.split_convention == "authors-index"
    assert train.split_file == tmp_path / "food101_train_split.txt"


# (what is wrong, how the val file / train file are written, the message)
BAD_FILES = {
    "out of range": ("val", "3\n15\n", r"pets_val_split\.txt line 2: index 15 is out of range; "
                     r"Oxford-IIIT Pet's trainval set .* has 15 images \(indices 0\.\.14\)"),
    "negative": ("val", "-1\n", r"pets_val_split\.txt line 1: index -1 is out of range"),
    "duplicate": ("train", "0\n1\n\n0\n", r"pets_train_split\.txt line 4: index 0 repeats line 1"),
    "not an integer": ("val", "3.0\n", r"pets_val_split\.txt line 1: expected one integer, "
                       r"got '3.0'"),
    "empty": ("val", "\n", r"pets_val_split\.txt holds no indices"),
    "overlap": ("val", "1\n9\n", r"pets_train_split\.txt and .*pets_val_split\.txt share 1 indices "
                r"\(e\.g\. 1\); train / val must be disjoint"),
    "missing": ("val", None, r"pets_val_split\.txt not found; the authors' convention needs "
                r"pets_train_split\.txt, pets_val_split\.txt together"),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_bad_index_file_is_one_clear_line(case: str, roots: dict, tmp_path: Path) -> None:
    root, _ = roots["pets"]
    which, text, message = BAD_FILES[case]
    (tmp_path / "pets_train_split.txt").write_text("0\n1\n2\n")
    (tmp_path / "pets_val_split.txt").write_text("3\n4\n")
    path = tmp_path / f"pets_{which}_split.txt"
    if text is None:
        path.unlink()
    else:
        path.write_text(text)
    with pytest.raises(SplitFileError, match=message) as info:
        build_dataset("pets", root, "train", split_dir=tmp_path)
    assert "\n" not in str(info.value) and str(path) in str(info.value)


def test_caltech_needs_its_test_file(roots: dict, tmp_path: Path) -> None:
    root, _ = roots["caltech101"]
    _write_author_files("caltech101", 15, tmp_path)
    (tmp_path / "caltech101_test_split.txt").unlink()
    with pytest.raises(SplitFileError, match=r"caltech101_test_split\.txt not found"):
        build_dataset("caltech101", root, "train", split_dir=tmp_path)


def test_cli_data_check_says_which_convention(
    roots: dict, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    root, _ = roots["pets"]
    argv = ["data", "check", "--dataset", "pets", "--root", str(root), "--split-dir"]
    assert main([*argv, str(tmp_path / "ours")]) == 0
    out = capsys.readouterr().out
    assert "convention: drawn here, kept in a bissl split file" in out
    assert f"split file: {tmp_path / 'ours' / 'pets_seed0.json'} (written)" in out

    groups = _write_author_files("pets", 15, tmp_path / "authors")
    assert main([*argv, str(tmp_path / "authors")]) == 0
    out = capsys.readouterr().out
    assert "convention: the BiSSL authors' index files" in out
    files = ", ".join(str(tmp_path / "authors" / f"pets_{k}_split.txt") for k in ("train", "val"))
    assert f"split file: {files} (2 indexed images in none of them)" in out
    sizes = (len(groups["train"]), len(groups["val"]), len(groups["train"]) + len(groups["val"]))
    assert "splits:     train {}  val {}  trainval {}  test 6".format(*sizes) in out
    assert "the seed is not used" in out

    (tmp_path / "authors" / "pets_val_split.txt").write_text("99\n")
    assert main([*argv, str(tmp_path / "authors")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("bissl data check: error: authors' split file ")
    assert "index 99 is out of range" in err and err.count("\n") == 1
