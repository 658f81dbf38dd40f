"""The 12 classification datasets read from tiny copies of their real on-disk layouts.

Ground truth comes from the writers in ``_layouts.py`` (what they put in the metadata files) and
from the images themselves (each class has its own colour), never from the code under test.
"""

from __future__ import annotations

import json
import pickle
import shutil
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torchvision.datasets as tvd
from PIL import Image

from bissl_dense.cli import build_parser, main
from classification.datasets import (
    CALTECH_TRAIN_PER_CLASS,
    DATASET_NAMES,
    DATASETS,
    SPLITS,
    DatasetLayoutError,
    SplitFileError,
    build_dataset,
    build_splits,
)
from classification.datasets.cifar import load_cifar_pickle
from classification.datasets.splits import holdout_count, stratified_holdout
from tests.classification._layouts import WRITERS, nearest_class

OFFICIAL_VAL = {"aircraft", "flowers", "dtd", "voc2007"}
HOLDOUT = {"food101", "cifar10", "cifar100", "cub200", "sun397", "cars", "pets"}


@pytest.fixture(scope="module")
def layouts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, dict[str, Any]]]:
    """Every dataset written once under its own root (a few hundred 8x8 JPEGs in all)."""
    written = {}
    for name, write in WRITERS.items():
        root = tmp_path_factory.mktemp(name)
        written[name] = (root, write(root))
    return written


def _labels_by_id(truth: dict[str, Any], split: str) -> dict[str, Any]:
    entry = truth["splits"][split]
    return dict(zip(entry["ids"], entry["labels"]))


def _as_label(target: Any) -> Any:
    return target.tolist() if isinstance(target, torch.Tensor) else target


def test_the_twelve_names() -> None:
    assert (
        "food101 cifar10 cifar100 cub200 sun397 cars aircraft voc2007 dtd pets caltech101 flowers"
    ).split() == list(DATASET_NAMES)
    assert set(WRITERS) == set(DATASET_NAMES)
    assert {name for name, spec in DATASETS.items() if spec.scheme == "official"} == OFFICIAL_VAL
    assert {name for name, spec in DATASETS.items() if spec.scheme == "holdout"} == HOLDOUT


@pytest.mark.parametrize("name", DATASET_NAMES)
def test_reads_real_layout_with_paper_splits(name: str, layouts: dict, tmp_path: Path) -> None:
    root, truth = layouts[name]
    splits = {split: build_dataset(name, root, split, seed=3) for split in SPLITS}
    classes = truth["classes"]
    for dataset in splits.values():
        assert dataset.classes == classes
        assert len(dataset.targets) == len(dataset) == len(dataset.ids)

    # train and val are disjoint and make up trainval
    train_ids, val_ids = splits["train"].ids, splits["val"].ids
    assert not set(train_ids) & set(val_ids)
    assert sorted(splits["trainval"].ids) == sorted(train_ids + val_ids)
    assert len(set(splits["trainval"].ids)) == len(splits["trainval"])
    assert not set(splits["trainval"].ids) & set(splits["test"].ids)

    if name in OFFICIAL_VAL:
        for split in ("train", "val", "test"):
            assert splits[split].ids == truth["splits"][split]["ids"], split
            assert [_as_label(t) for t in splits[split].targets] == truth["splits"][split]["labels"]
    elif name in HOLDOUT:
        official = _labels_by_id(truth, "train")
        assert sorted(train_ids + val_ids) == sorted(official)
        assert splits["test"].ids == truth["splits"]["test"]["ids"]
        assert splits["test"].targets == truth["splits"]["test"]["labels"]
        # stratified: per class round(20%) of the official training images, at least one
        per_class = Counter(official.values())
        held_out = Counter(official[i] for i in val_ids)
        assert held_out == Counter({k: holdout_count(n) for k, n in per_class.items()})
        assert all(held_out[k] >= 1 for k in per_class)
    else:  # caltech101: 30 per class for training (train + val), the rest for test
        everything = _labels_by_id(truth, "all")
        assert set(splits["trainval"].ids) | set(splits["test"].ids) == set(everything)
        trainval = Counter(everything[i] for i in splits["trainval"].ids)
        assert trainval == Counter({k: CALTECH_TRAIN_PER_CLASS for k in range(len(classes))})
        test = Counter(everything[i] for i in splits["test"].ids)
        assert test == Counter({0: 1, 1: 3, 2: 5})  # 31, 33, 35 images per class
        assert Counter(everything[i] for i in val_ids) == Counter({0: 6, 1: 6, 2: 6})
        assert not any(i.startswith("BACKGROUND_Google") for i in everything)
        assert all(not i.startswith("BACKGROUND") for s in splits.values() for i in s.ids)

    # reproducible for a seed; another seed draws another (still stratified) validation split
    again = build_splits(name, root, seed=3)
    assert all(again[split].ids == splits[split].ids for split in SPLITS)
    if name not in OFFICIAL_VAL:
        other = build_splits(name, root, seed=4)
        assert set(other["val"].ids) != set(val_ids)
        assert Counter(other["val"].targets) == Counter(splits["val"].targets)
        assert other["test"].ids == splits["test"].ids

    # every item carries its own label, and its image is the RGB image of that class
    truth_by_id = {}
    for split in truth["splits"]:
        truth_by_id.update(_labels_by_id(truth, split))
    for dataset in splits.values():
        for index, item_id in enumerate(dataset.ids):
            assert _as_label(dataset.targets[index]) == truth_by_id[item_id], (name, item_id)
        if name != "voc2007":
            for index in range(len(dataset)):
                image, target = dataset[index]
                assert isinstance(image, Image.Image) and image.mode == "RGB"
                assert nearest_class(image) == target, (name, dataset.ids[index])


def test_voc2007_multi_hot_counts_difficult_as_present(layouts: dict) -> None:
    """The class files' 0 (only difficult objects) is a positive; ``difficult`` marks it. The
    expectation is recomputed from the XML annotations (any object of the class, difficult or
    not, as in the BiSSL authors' VOC loader)."""
    import xml.etree.ElementTree as ET

    root, truth = layouts["voc2007"]
    test = build_dataset("voc2007", root, "test")
    assert test.multilabel and len(test.classes) == 20
    annotations = root / "VOCdevkit" / "VOC2007" / "Annotations"
    for index, image_id in enumerate(test.ids):
        objects = ET.parse(annotations / f"{image_id}.xml").getroot().findall("object")
        names = {o.findtext("name") for o in objects}
        expected = torch.tensor([float(c in names) for c in test.classes])
        image, target = test[index]
        assert torch.equal(target, expected) and target.dtype == torch.float32
        assert isinstance(image, Image.Image)
        easy = {o.findtext("name") for o in objects if o.findtext("difficult") == "0"}
        only_difficult = torch.tensor([c in names and c not in easy for c in test.classes])
        assert test.difficult is not None and torch.equal(test.difficult[index], only_difficult)
    assert any(bool(d.any()) for d in test.difficult)  # the fixture has difficult-only classes
    counts = test.class_counts()
    assert [k for k, n in enumerate(counts) if n] == [0, 2, 6, 14, 19] and sum(counts) == 5


def test_deterministic_and_seed_changes_validation(layouts: dict) -> None:
    root, truth = layouts["food101"]
    first = build_splits("food101", root, seed=0)
    again = build_splits("food101", root, seed=0)
    other = build_splits("food101", root, seed=1)
    assert first["val"].ids == again["val"].ids and first["train"].ids == again["train"].ids
    assert set(first["val"].ids) != set(other["val"].ids)
    official = _labels_by_id(truth, "train")
    assert Counter(official[i] for i in other["val"].ids) == Counter(
        official[i] for i in first["val"].ids
    )  # still stratified: same count per class
    assert first["test"].ids == other["test"].ids


def test_caltech_test_set_does_not_depend_on_seed(layouts: dict) -> None:
    root, _ = layouts["caltech101"]
    a, b = build_splits("caltech101", root, seed=0), build_splits("caltech101", root, seed=5)
    assert a["test"].ids == b["test"].ids
    assert sorted(a["trainval"].ids) == sorted(b["trainval"].ids)
    assert set(a["val"].ids) != set(b["val"].ids)


def test_holdout_ignores_listing_order() -> None:
    """The same items listed in another order (another file system) give the same val ids."""
    ids = [f"c{k}/img{i}" for k in range(3) for i in range(9)]
    labels = [k for k in range(3) for _ in range(9)]
    _, val = stratified_holdout(ids, labels, seed=4, stream="x")
    order = np.random.default_rng(0).permutation(len(ids))
    _, val_shuffled = stratified_holdout(
        [ids[i] for i in order], [labels[i] for i in order], seed=4, stream="x"
    )
    assert {ids[i] for i in val} == {ids[order[i]] for i in val_shuffled}
    assert [holdout_count(n) for n in (1, 2, 3, 5, 7, 8, 10, 13)] == [0, 1, 1, 1, 1, 2, 2, 3]


@pytest.mark.parametrize("name", ["cub200", "caltech101"])
def test_split_file_is_written_then_reused(name: str, layouts: dict, tmp_path: Path) -> None:
    root, _ = layouts[name]
    split_dir = tmp_path / "splits"
    first = build_splits(name, root, seed=2, split_dir=split_dir)
    path = split_dir / f"{name}_seed2.json"
    assert first["train"].split_file == path and path.is_file()
    document = json.loads(path.read_text())
    assert document["dataset"] == name and document["seed"] == 2
    assert document["splits"]["val"] == first["val"].ids
    again = build_splits(name, root, seed=2, split_dir=split_dir)
    for split in SPLITS:
        assert again[split].ids == first[split].ids

    # A later build takes the file's word for it: move one val item of class 0 to train.
    labels = dict(zip(first["trainval"].ids, first["trainval"].targets))
    moved = next(i for i in document["splits"]["val"] if labels[i] == 0)
    document["splits"]["val"].remove(moved)
    document["splits"]["train"].append(moved)
    path.write_text(json.dumps(document))
    edited = build_splits(name, root, seed=2, split_dir=split_dir)
    assert moved in edited["train"].ids and moved not in edited["val"].ids

    # other seeds get their own file
    build_splits(name, root, seed=3, split_dir=split_dir)
    assert (split_dir / f"{name}_seed3.json").is_file()


def test_split_file_for_other_data_is_refused(layouts: dict, tmp_path: Path) -> None:
    root, _ = layouts["pets"]
    split_dir = tmp_path / "splits"
    build_splits("pets", root, seed=0, split_dir=split_dir)
    path = split_dir / "pets_seed0.json"

    other_root = tmp_path / "other"
    WRITERS["pets"](other_root, train_per_class=(5, 6, 5))  # one more training image
    with pytest.raises(SplitFileError, match=r"does not match the pets data on disk") as info:
        build_dataset("pets", other_root, "train", split_dir=split_dir)
    assert str(path) in str(info.value)

    document = json.loads(path.read_text())
    document["splits"]["train"].append(document["splits"]["val"][0])
    path.write_text(json.dumps(document))
    with pytest.raises(SplitFileError, match="disjoint"):
        build_dataset("pets", root, "val", split_dir=split_dir)

    document["dataset"] = "cub200"
    path.write_text(json.dumps(document))
    with pytest.raises(SplitFileError, match="'cub200'"):
        build_dataset("pets", root, "val", split_dir=split_dir)
    path.write_text("{not json")
    with pytest.raises(SplitFileError, match="cannot be read"):
        build_dataset("pets", root, "val", split_dir=split_dir)


@pytest.mark.parametrize("name", DATASET_NAMES)
def test_missing_dataset_names_path_and_layout(name: str, tmp_path: Path) -> None:
    with pytest.raises(DatasetLayoutError) as info:
        build_dataset(name, tmp_path, "train")
    message = str(info.value)
    assert str(tmp_path) in message and "Expected layout:" in message
    assert DATASETS[name].expected(tmp_path).splitlines()[0] in message
    assert not any(tmp_path.iterdir())  # nothing created (torchvision's Caltech101 would)


def test_incomplete_dataset_names_missing_file(layouts: dict, tmp_path: Path) -> None:
    root = tmp_path / "copy"
    shutil.copytree(layouts["flowers"][0], root)
    victim = root / "flowers-102" / "jpg" / f"{layouts['flowers'][1]['splits']['val']['ids'][0]}"
    victim.unlink()
    build_dataset("flowers", root, "train")  # other splits are complete
    with pytest.raises(DatasetLayoutError, match=r"1 of the 6 images of the val split") as info:
        build_dataset("flowers", root, "val")
    assert str(victim) in str(info.value)

    (root / "flowers-102" / "setid.mat").unlink()
    with pytest.raises(DatasetLayoutError, match="setid.mat"):
        build_dataset("flowers", root, "train")


def test_caltech_class_with_too_few_images(tmp_path: Path) -> None:
    WRITERS["caltech101"](tmp_path, per_class=(31, 30, 35))
    with pytest.raises(DatasetLayoutError, match=r"has 30 items; 30 per class"):
        build_dataset("caltech101", tmp_path, "test")


def test_sun397_partition_lists_unknown_image(layouts: dict, tmp_path: Path) -> None:
    root = tmp_path / "copy"
    shutil.copytree(layouts["sun397"][0], root)
    listing = root / "SUN397" / "Partitions" / "Testing_01.txt"
    listing.write_text(listing.read_text() + "/a/abbey/sun_missing.jpg\n")
    with pytest.raises(DatasetLayoutError, match=r"1 of the 7 images listed in .*Testing_01"):
        build_dataset("sun397", root, "test")


def test_dtd_unpacked_one_level_too_high(layouts: dict, tmp_path: Path) -> None:
    shutil.copytree(layouts["dtd"][0] / "dtd" / "dtd", tmp_path / "dtd")
    with pytest.raises(DatasetLayoutError, match="move it to"):
        build_dataset("dtd", tmp_path, "train")


def test_dtd_split_without_a_class_keeps_labels(layouts: dict, tmp_path: Path) -> None:
    """torchvision's DTD numbers the classes of each split on its own; a split lacking one class
    must still use the dataset's class indices."""
    root = tmp_path / "copy"
    shutil.copytree(layouts["dtd"][0], root)
    listing = root / "dtd" / "dtd" / "labels" / "val1.txt"
    listing.write_text("".join(f"{i}\n" for i in listing.read_text().split() if "banded" not in i))
    val = build_dataset("dtd", root, "val")
    assert val.classes == ["banded", "blotchy", "braided"]
    assert sorted(set(val.targets)) == [1, 2]
    assert all(nearest_class(val[i][0]) == val.targets[i] for i in range(len(val)))


def test_cifar_pickle_with_code_is_refused(tmp_path: Path) -> None:
    class Evil:
        def __reduce__(self) -> tuple:
            return (print, ("pwned",))

    path = tmp_path / "data_batch_1"
    path.write_bytes(pickle.dumps({"data": Evil()}, protocol=2))
    with pytest.raises(DatasetLayoutError, match=r"refusing to load (__builtin__|builtins)\.print"):
        load_cifar_pickle(path)


def test_cifar_matches_torchvision_reading_the_same_files(layouts: dict, monkeypatch) -> None:
    """Our restricted reader and torchvision's own CIFAR10 (MD5 check off) agree pixel for pixel."""
    root, _ = layouts["cifar10"]
    monkeypatch.setattr(tvd.CIFAR10, "_check_integrity", lambda self: True)
    monkeypatch.setattr("torchvision.datasets.cifar.check_integrity", lambda *a, **k: True)
    for split, train in (("trainval", True), ("test", False)):
        ours = build_dataset("cifar10", root, split)
        theirs = tvd.CIFAR10(str(root), train=train)
        assert ours.classes == theirs.classes and ours.targets == theirs.targets
        for index in range(len(ours)):
            assert np.array_equal(np.asarray(ours[index][0]), np.asarray(theirs[index][0]))


def test_transform_is_applied(layouts: dict) -> None:
    root, _ = layouts["pets"]
    dataset = build_dataset("pets", root, "test", transform=lambda image: image.size)
    assert dataset[0] == ((8, 8), dataset.targets[0])


@pytest.mark.parametrize("name", ["voc2007", "cifar100"])
def test_batches_through_a_dataloader_after_pickling(name: str, layouts: dict) -> None:
    """Data-loader workers receive the dataset pickled; targets collate (VOC: a float matrix)."""
    from torch.utils.data import DataLoader
    from torchvision.transforms import v2

    root, _ = layouts[name]
    transform = v2.Compose([v2.PILToTensor(), v2.Resize(8), v2.ToDtype(torch.float32)])
    dataset = pickle.loads(pickle.dumps(build_dataset(name, root, "train", transform=transform)))
    images, targets = next(iter(DataLoader(dataset, batch_size=3)))
    assert images.shape == (3, 3, 8, 8)
    if name == "voc2007":
        assert targets.shape == (3, 20) and targets.dtype == torch.float32
    else:
        assert targets.tolist() == dataset.targets[:3]


def test_download_hands_over_to_torchvision(monkeypatch, tmp_path: Path) -> None:
    calls = []

    def fake_download(self: tvd.OxfordIIITPet) -> None:
        calls.append(Path(self.root))
        WRITERS["pets"](Path(self.root))

    monkeypatch.setattr(tvd.OxfordIIITPet, "_download", fake_download)
    dataset = build_dataset("pets", tmp_path, "train", download=True)
    assert calls == [tmp_path] and len(dataset) == 12
    build_dataset("pets", tmp_path, "train", download=True)
    assert len(calls) == 1  # present now: no second download

    with pytest.raises(DatasetLayoutError, match="cannot be downloaded automatically"):
        build_dataset("cars", tmp_path / "none", "train", download=True)


def test_download_of_archives_without_a_torchvision_class(monkeypatch, tmp_path: Path) -> None:
    """CUB-200-2011 and SUN397's partitions go through torchvision's archive downloader, VOC2007
    through VOCDetection (trainval and test archives); each only when missing."""
    import classification.datasets.build as build_module

    archives: list[tuple[str, Path]] = []

    def fake_archive(url: str, download_root: str, **kwargs: Any) -> None:
        archives.append((url, Path(download_root)))
        if url.endswith("CUB_200_2011.tgz"):
            assert kwargs["md5"] == "97eceeb196236b17998738112f37df78"
            WRITERS["cub200"](Path(download_root))
        else:  # Partitions.zip, unpacked into SUN397/
            source = tmp_path / "sun_source" / "SUN397" / "Partitions"
            shutil.copytree(source, Path(download_root) / "Partitions")

    monkeypatch.setattr(build_module, "download_and_extract_archive", fake_archive)
    assert len(build_dataset("cub200", tmp_path / "cub", "test", download=True)) == 6
    assert archives == [(build_module.cub.CUB_ARCHIVE_URL, tmp_path / "cub")]

    WRITERS["sun397"](tmp_path / "sun_source")
    images_only = tmp_path / "sun"
    shutil.copytree(tmp_path / "sun_source", images_only)
    shutil.rmtree(images_only / "SUN397" / "Partitions")
    assert len(build_dataset("sun397", images_only, "test", download=True)) == 6
    assert archives[-1] == (build_module.SUN397_PARTITIONS_URL, images_only / "SUN397")

    image_sets: list[str] = []

    class FakeVOC:
        def __init__(self, root: str, year: str, image_set: str, download: bool) -> None:
            assert year == "2007" and download
            image_sets.append(image_set)
            if image_set == "test":
                WRITERS["voc2007"](Path(root))

    monkeypatch.setattr(tvd, "VOCDetection", FakeVOC)
    assert len(build_dataset("voc2007", tmp_path / "voc", "val", download=True)) == 3
    assert image_sets == ["trainval", "test"]


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="unknown dataset 'imagenet'; choose one of: food101"):
        build_dataset("imagenet", ".", "train")
    with pytest.raises(ValueError, match="unknown split 'dev'"):
        build_dataset("pets", ".", "dev")
    with pytest.raises(ValueError, match="seed must be a non-negative integer"):
        build_dataset("pets", ".", "train", seed=-1)


# --------------------------------------------------------------------------------------------
# bissl data check
# --------------------------------------------------------------------------------------------


def test_cli_data_check(layouts: dict, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    root, _ = layouts["caltech101"]
    argv = ["data", "check", "--dataset", "caltech101", "--root", str(root)]
    assert main([*argv, "--split-dir", str(tmp_path), "--seed", "1"]) == 0
    out = capsys.readouterr().out
    assert "classes:    3: Faces, Faces_easy, accordion" in out
    assert "train 72  val 18  trainval 90  test 9" in out
    assert f"{tmp_path / 'caltech101_seed1.json'} (written)" in out
    assert main([*argv, "--split-dir", str(tmp_path), "--seed", "1"]) == 0
    assert "(reused)" in capsys.readouterr().out

    root, _ = layouts["aircraft"]
    assert main(["data", "check", "--dataset", "aircraft", "--root", str(root)]) == 0
    out = capsys.readouterr().out
    assert "classes:    3: 707-320, F/A-18, Cessna 172" in out
    assert "train 9  val 6  trainval 15  test 6" in out and "none needed" in out


def test_cli_data_check_broken(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["data", "check", "--dataset", "cub200", "--root", str(tmp_path)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("bissl data check: error: CUB-200-2011 (cub200) under")
    assert str(tmp_path / "CUB_200_2011") in captured.err
    assert "images.txt, image_class_labels.txt, train_test_split.txt" in captured.err

    assert main(["data", "check", "--dataset", "nope", "--root", str(tmp_path)]) == 2
    assert "unknown dataset 'nope'" in capsys.readouterr().err


def test_cli_help_lists_every_dataset() -> None:
    parser = build_parser()
    data = parser._subparsers._group_actions[0].choices["data"]
    check = data._subparsers._group_actions[0].choices["check"]
    dataset_help = next(a.help for a in check._actions if a.dest == "dataset")
    assert dataset_help.split() == list(DATASET_NAMES)
