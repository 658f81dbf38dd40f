"""The generated data sets: reproducibility, layout, counts and label / box / mask consistency.

References are independent of the generator: the VOC colour map and Cityscapes ids are typed
in from the devkits' tables, boxes are recomputed from the mask pixels, list files from the
files on disk, per-class flags by counting the XML objects.
"""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bissl_dense.datasets import synthetic
from bissl_dense.datasets.synthetic import (
    VOC_CLASSES,
    write_cityscapes,
    write_imagefolder,
    write_unlabeled,
    write_voc,
)

REPO = Path(__file__).resolve().parents[2]

# VOC devkit colours (VOClabelcolormap), typed in by hand: index -> RGB.
VOC_COLOURS = {
    0: (0, 0, 0),
    1: (128, 0, 0),
    2: (0, 128, 0),
    3: (128, 128, 0),
    4: (0, 0, 128),
    5: (128, 0, 128),
    8: (64, 0, 0),
    15: (192, 128, 128),
    20: (0, 64, 128),
    255: (224, 224, 192),
}
# Cityscapes (labelId -> trainId, colour) for some labels, typed in from cityscapesscripts.
CS_FACTS = {
    0: (255, (0, 0, 0)),
    1: (255, (0, 0, 0)),
    7: (0, (128, 64, 128)),
    8: (1, (244, 35, 232)),
    11: (2, (70, 70, 70)),
    21: (8, (107, 142, 35)),
    23: (10, (70, 130, 180)),
    24: (11, (220, 20, 60)),
    26: (13, (0, 0, 142)),
    28: (15, (0, 60, 100)),
    33: (18, (119, 11, 32)),
}


def tree_digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def read_ids(path: Path) -> list[str]:
    return path.read_text().split()


WRITERS = {
    "voc": lambda root, seed: write_voc(root, 6, seed=seed, size=64),
    "cityscapes": lambda root, seed: write_cityscapes(root, 4, seed=seed, size=(64, 32)),
    "imagefolder": lambda root, seed: write_imagefolder(
        root, 15, num_classes=3, seed=seed, size=32
    ),
    "unlabeled": lambda root, seed: write_unlabeled(root, 4, seed=seed, size=32),
}


@pytest.mark.parametrize("kind", sorted(WRITERS))
def test_same_seed_same_bytes_other_seed_other_images(tmp_path: Path, kind: str) -> None:
    write = WRITERS[kind]
    write(tmp_path / "a", 3)
    write(tmp_path / "b", 3)
    write(tmp_path / "c", 4)
    a, b, c = (tree_digest(tmp_path / name) for name in "abc")
    assert a == b and len(a) > 0
    images = [k for k in a if k.endswith((".jpg", "_leftImg8bit.png"))]
    assert images
    for name in images:
        assert name not in c or c[name] != a[name], f"{name} identical for seeds 3 and 4"
    # nothing is left behind beside the outputs (the staging directories were renamed)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b", "c"]


def test_an_image_does_not_depend_on_how_many_follow(tmp_path: Path) -> None:
    write_unlabeled(tmp_path / "few", 2, seed=7, size=32)
    write_unlabeled(tmp_path / "more", 5, seed=7, size=32)
    few, more = tree_digest(tmp_path / "few"), tree_digest(tmp_path / "more")
    assert len(few) == 2 and len(more) == 5
    assert all(more[name] == digest for name, digest in few.items())


@pytest.fixture(scope="module")
def voc(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("voc") / "data"
    summary = write_voc(root, 12, seed=1, size=96, difficult_prob=0.3, border=2)
    return root / "VOCdevkit", summary


def test_voc_split_lists(voc: tuple[Path, dict]) -> None:
    devkit, summary = voc
    for year, splits in (
        ("2007", {"train", "val", "trainval", "test"}),
        ("2012", {"train", "val", "trainval"}),
    ):
        base = devkit / f"VOC{year}"
        all_ids = sorted(p.stem for p in (base / "JPEGImages").glob("*.jpg"))
        assert len(all_ids) == 12
        assert sorted(p.stem for p in (base / "Annotations").glob("*.xml")) == all_ids
        main = {s: read_ids(base / "ImageSets/Main" / f"{s}.txt") for s in splits}
        assert {
            p.stem for p in (base / "ImageSets/Main").glob("*.txt") if "_" not in p.stem
        } == splits
        assert sorted(main["train"] + main["val"]) == main["trainval"]
        assert not set(main["train"]) & set(main["val"])
        if "test" in splits:
            assert not set(main["test"]) & set(main["trainval"])
            assert sorted(main["test"] + main["trainval"]) == all_ids
        else:
            assert main["trainval"] == all_ids
        seg = {s: read_ids(base / "ImageSets/Segmentation" / f"{s}.txt") for s in splits}
        assert sorted(seg["train"] + seg["val"]) == seg["trainval"]
        for split in splits:
            assert set(seg[split]) <= set(main[split])
            assert summary["counts"][f"VOC{year}"][f"Main/{split}"] == len(main[split])
        segmented = sorted(p.stem for p in (base / "SegmentationClass").glob("*.png"))
        assert segmented == sorted(set().union(*seg.values()))
        assert sorted(p.stem for p in (base / "SegmentationObject").glob("*.png")) == segmented
    ids2012 = {p.stem for p in (devkit / "VOC2012/JPEGImages").glob("*.jpg")}
    assert all(re.fullmatch(r"2012_\d{6}", i) for i in ids2012)
    assert not (devkit / "VOC2012/ImageSets/Main/test.txt").exists()


def parse_xml(path: Path) -> dict:
    root = ET.parse(path).getroot()
    size = root.find("size")
    objects = []
    for obj in root.findall("object"):
        box = obj.find("bndbox")
        objects.append(
            {
                "name": obj.findtext("name"),
                "pose": obj.findtext("pose"),
                "truncated": int(obj.findtext("truncated")),
                "difficult": int(obj.findtext("difficult")),
                "bbox": [int(box.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax")],
            }
        )
    return {
        "folder": root.findtext("folder"),
        "filename": root.findtext("filename"),
        "width": int(size.findtext("width")),
        "height": int(size.findtext("height")),
        "depth": int(size.findtext("depth")),
        "segmented": int(root.findtext("segmented")),
        "objects": objects,
    }


def test_voc_xml_boxes_and_masks_agree(voc: tuple[Path, dict]) -> None:
    devkit, summary = voc
    n_objects = n_difficult = n_truncated = n_checked_masks = 0
    for year in ("2007", "2012"):
        base = devkit / f"VOC{year}"
        for xml_path in sorted((base / "Annotations").glob("*.xml")):
            image_id = xml_path.stem
            ann = parse_xml(xml_path)
            with Image.open(base / "JPEGImages" / f"{image_id}.jpg") as jpeg:
                assert jpeg.format == "JPEG" and jpeg.mode == "RGB"
                assert (ann["width"], ann["height"]) == jpeg.size
            assert ann["folder"] == f"VOC{year}" and ann["filename"] == f"{image_id}.jpg"
            assert ann["depth"] == 3 and ann["objects"]
            record = summary["images"][f"VOC{year}/{image_id}"]
            assert [
                {k: o[k] for k in ("name", "truncated", "difficult", "bbox")}
                for o in ann["objects"]
            ] == record["objects"]
            for obj in ann["objects"]:
                assert obj["name"] in VOC_CLASSES and obj["pose"] == "Unspecified"
                x0, y0, x1, y1 = obj["bbox"]
                assert 1 <= x0 <= x1 <= ann["width"] and 1 <= y0 <= y1 <= ann["height"]
                edge = x0 == 1 or y0 == 1 or x1 == ann["width"] or y1 == ann["height"]
                assert obj["truncated"] == int(edge)
                n_difficult += obj["difficult"]
                n_truncated += obj["truncated"]
            n_objects += len(ann["objects"])

            png = base / "SegmentationClass" / f"{image_id}.png"
            assert ann["segmented"] == int(png.exists())
            if not png.exists():
                continue
            with (
                Image.open(png) as cls_png,
                Image.open(base / "SegmentationObject" / png.name) as obj_png,
            ):
                assert cls_png.mode == "P" and obj_png.mode == "P"
                palette = np.array(cls_png.getpalette()[: 256 * 3]).reshape(256, 3)
                for index, rgb in VOC_COLOURS.items():
                    assert tuple(palette[index]) == rgb
                classes, instances = np.array(cls_png), np.array(obj_png)
            assert classes.shape == (ann["height"], ann["width"])
            assert set(np.unique(classes)) <= set(range(21)) | {255}
            assert np.array_equal(classes == 255, instances == 255)
            assert set(np.unique(instances)) - {0, 255} == set(range(1, len(ann["objects"]) + 1))
            for number, obj in enumerate(ann["objects"], start=1):
                rows, cols = np.nonzero(instances == number)
                # the box encloses the object's mask pixels tightly (VOC boxes are 1-based)
                assert [cols.min() + 1, rows.min() + 1, cols.max() + 1, rows.max() + 1] == obj[
                    "bbox"
                ]
                assert np.all(classes[rows, cols] == VOC_CLASSES.index(obj["name"]) + 1)
            labelled = (classes > 0) & (classes < 255)
            assert np.array_equal(labelled, (instances > 0) & (instances < 255))
            # the 255 band lies within `border` (=2) pixels of an object, and surrounds each
            by, bx = np.nonzero(classes == 255)
            oy, ox = np.nonzero(labelled)
            chebyshev = np.maximum(np.abs(by[:, None] - oy), np.abs(bx[:, None] - ox)).min(axis=1)
            assert chebyshev.max() <= 2 and chebyshev.min() == 1
            n_checked_masks += 1
    assert n_objects == sum(summary["counts"][f"VOC{y}"]["objects"] for y in ("2007", "2012"))
    assert n_checked_masks >= 6 and n_difficult > 0 and n_objects > n_difficult


def test_voc_per_class_main_lists(voc: tuple[Path, dict]) -> None:
    devkit, _ = voc
    base = devkit / "VOC2007"
    for split in ("train", "val", "trainval", "test"):
        ids = read_ids(base / "ImageSets/Main" / f"{split}.txt")
        objects = {i: parse_xml(base / "Annotations" / f"{i}.xml")["objects"] for i in ids}
        for cls in VOC_CLASSES:
            lines = (base / "ImageSets/Main" / f"{cls}_{split}.txt").read_text().splitlines()
            assert [line.split()[0] for line in lines] == ids
            for line in lines:
                image_id, flag = line.split()
                assert re.fullmatch(r"\S+ (-1| 0| 1)", line)
                mine = [o for o in objects[image_id] if o["name"] == cls]
                expected = -1 if not mine else (0 if all(o["difficult"] for o in mine) else 1)
                assert int(flag) == expected


def test_voc_aug_files_follow_the_converter(voc: tuple[Path, dict]) -> None:
    devkit, summary = voc
    base = devkit / "VOC2012"
    seg_sets = base / "ImageSets/Segmentation"
    train, val = read_ids(seg_sets / "train.txt"), read_ids(seg_sets / "val.txt")
    sbd = {p.stem for p in (base / "SegmentationClassAug").glob("*.png")}
    aug, trainaug = read_ids(seg_sets / "aug.txt"), read_ids(seg_sets / "trainaug.txt")
    # mmseg voc_aug.py: aug = SBD - (train + val); trainaug = (train + SBD) - val
    assert aug == sorted(sbd - set(train) - set(val)) and aug
    assert trainaug == sorted((set(train) | sbd) - set(val))
    assert summary["counts"]["VOC2012"]["Segmentation/aug"] == len(aug)
    for image_id in sorted(sbd):
        assert (base / "JPEGImages" / f"{image_id}.jpg").exists()
        with Image.open(base / "SegmentationClassAug" / f"{image_id}.png") as png:
            assert png.mode == "L"
            labels = np.array(png)
        ann = parse_xml(base / "Annotations" / f"{image_id}.xml")
        assert labels.shape == (ann["height"], ann["width"])
        assert {VOC_CLASSES[v - 1] for v in np.unique(labels) if 0 < v < 255} == {
            o["name"] for o in ann["objects"]
        }
        voc_png = base / "SegmentationClass" / f"{image_id}.png"
        if voc_png.exists():
            with Image.open(voc_png) as png:
                assert np.array_equal(np.array(png), labels)


def test_voc_class_subset(tmp_path: Path) -> None:
    summary = write_voc(tmp_path / "v", 8, seed=0, size=64, num_classes=3)
    names = {o["name"] for record in summary["images"].values() for o in record["objects"]}
    assert names <= set(VOC_CLASSES[:3]) and summary["classes"] == list(VOC_CLASSES[:3])


CS_NAME = re.compile(r"([a-z]+)_(\d{6})_(\d{6})_leftImg8bit\.png")


def test_cityscapes_layout_and_labels(tmp_path: Path) -> None:
    root = tmp_path / "cityscapes"
    summary = write_cityscapes(root, 10, seed=2, size=(128, 64), n_val=4, num_cities=2)
    assert summary["counts"] == {"train": 6, "val": 4}
    cities = {}
    histograms = {}
    for split in ("train", "val"):
        images = sorted((root / "leftImg8bit" / split).rglob("*.png"))
        assert len(images) == summary["counts"][split]
        cities[split] = {p.parent.name for p in images}
        histogram = np.zeros(256, dtype=np.int64)
        for image_path in images:
            match = CS_NAME.fullmatch(image_path.name)
            assert match and match.group(1) == image_path.parent.name
            stem = image_path.name[: -len("_leftImg8bit.png")]
            label_dir = root / "gtFine" / split / image_path.parent.name
            with Image.open(image_path) as im:
                assert im.format == "PNG" and im.mode == "RGB" and im.size == (128, 64)
            with Image.open(label_dir / f"{stem}_gtFine_labelIds.png") as im:
                label_ids = np.array(im)
                assert im.mode == "L"
            with Image.open(label_dir / f"{stem}_gtFine_labelTrainIds.png") as im:
                train_ids = np.array(im)
                assert im.mode == "L"
            with Image.open(label_dir / f"{stem}_gtFine_color.png") as im:
                colour = np.array(im)
                assert im.mode == "RGBA"
            assert label_ids.shape == train_ids.shape == colour.shape[:2] == (64, 128)
            assert set(np.unique(train_ids)) <= set(range(19)) | {255}
            assert np.all(colour[..., 3] == 255)
            for label_id, (train_id, rgb) in CS_FACTS.items():
                where = label_ids == label_id
                assert np.all(train_ids[where] == train_id)
                assert np.all(colour[where][:, :3] == rgb)
            # every street has road and sky
            assert (train_ids == 0).any() and (train_ids == 10).any()
            histogram += np.bincount(train_ids.ravel(), minlength=256)
        histograms[split] = [int(v) for v in histogram[:19]] + [int(histogram[255])]
    assert histograms == summary["pixel_counts"]
    assert not cities["train"] & cities["val"]
    assert len(cities["train"]) == len(cities["val"]) == 2
    assert sum(np.array(histograms["train"][:19]) > 0) >= 12  # most classes appear


def test_imagefolder_layout(tmp_path: Path) -> None:
    summary = write_imagefolder(tmp_path / "f", 40, num_classes=4, seed=0, size=40)
    names = summary["classes"]
    assert names == sorted(names) and len(names) == 4
    for split, expected_total in (("train", 24), ("val", 8), ("test", 8)):
        folders = sorted(p.name for p in (tmp_path / "f" / split).iterdir())
        assert folders == names
        per_class = {n: len(list((tmp_path / "f" / split / n).glob("*.jpg"))) for n in names}
        assert per_class == summary["counts"][split]
        assert sum(per_class.values()) == expected_total
        assert max(per_class.values()) - min(per_class.values()) <= 1
    with Image.open(next((tmp_path / "f" / "train" / names[0]).glob("*.jpg"))) as im:
        assert im.size == (40, 40) and im.mode == "RGB"


def test_class_appearances_are_distinct() -> None:
    pairs = {synthetic.class_appearance(k) for k in range(20)}
    assert len(pairs) == 20
    with pytest.raises(ValueError, match="outside 0..19"):
        synthetic.class_appearance(20)


def test_bad_arguments_and_existing_output(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="num_classes=21"):
        write_voc(tmp_path / "v", 8, num_classes=21)
    with pytest.raises(ValueError, match="n must be an integer >= 4"):
        write_voc(tmp_path / "v", 3)
    with pytest.raises(ValueError, match="val split only 2 images for 4 classes"):
        write_imagefolder(tmp_path / "f", 12, num_classes=4)
    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "keep.txt").write_text("user data")
    with pytest.raises(FileExistsError, match="occupied"):
        write_unlabeled(occupied, 2)
    assert (occupied / "keep.txt").read_text() == "user data"
    empty = tmp_path / "empty"
    empty.mkdir()
    assert write_unlabeled(empty, 2, size=32)["counts"] == {"images": 2}


def test_interrupted_write_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    real_save = synthetic._save_jpeg

    def failing_save(path: Path, image: np.ndarray) -> None:
        calls.append(path)
        if len(calls) == 3:
            raise OSError("disk full")
        real_save(path, image)

    monkeypatch.setattr(synthetic, "_save_jpeg", failing_save)
    with pytest.raises(OSError, match="disk full"):
        write_voc(tmp_path / "voc", 6, size=64)
    assert list(tmp_path.iterdir()) == []


def test_command_line(tmp_path: Path) -> None:
    out = tmp_path / "unlabeled"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "bissl_dense.datasets.synthetic",
            "--out",
            str(out),
            "--kind",
            "unlabeled",
            "--n",
            "3",
            "--seed",
            "5",
            "--size",
            "32",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "RuntimeWarning" not in result.stderr
    summary = json.loads(result.stdout)
    assert summary["counts"] == {"images": 3} and summary["seed"] == 5
    assert sorted(p.name for p in out.iterdir()) == [f"img_{i:06d}.jpg" for i in range(3)]
    # the same call again refuses to touch the existing output
    assert synthetic.main(["--out", str(out), "--kind", "unlabeled", "--n", "3"]) == 2
    assert (
        synthetic.main(
            ["--out", str(tmp_path / "v"), "--kind", "voc", "--n", "4", "--num-classes", "30"]
        )
        == 2
    )
    assert not (tmp_path / "v").exists()
    assert (
        synthetic.main(
            ["--out", str(tmp_path / "c"), "--kind", "cityscapes", "--n", "3", "--size", "64"]
        )
        == 0
    )
    assert len(list((tmp_path / "c" / "leftImg8bit").rglob("*.png"))) == 3
