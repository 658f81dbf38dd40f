"""VOC aug validates on images held out of its training lists, and tests on VOC2012 seg val
(SPEC §5: validation is held out of the training data; issue 21 item 5).

The split is checked against the generated data's own lists (``ImageSets/Segmentation``), and the
shipped configs (warm-up, BiSSL, fine-tuning, the 20k recipe) are loaded as a user runs them,
from a directory whose ``data/VOCdevkit`` is the generated VOC: the datasets they build must list
exactly the written split's images (train, val) and VOC2012 seg val (test).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bissl_dense.datasets.synthetic import write_voc
from bissl_dense.errors import DataError
from bissl_dense.segmentation.data import main, write_cityscapes_split, write_voc_aug_split

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "configs" / "segmentation"
VOC_AUG_CONFIGS = [
    "warmup_fcn_r50_voc_aug.py",
    "bissl_simclr_fcn_r50_voc_aug.py",
    "bissl_byol_fcn_r50_voc_aug.py",
    "finetune_fcn_r50_voc_aug.py",
    "finetune_fcn_r50_voc_aug_20k.py",
]
LISTS = ("train", "train_aug", "val", "val_aug")  # the lists of a VOC aug split
SPLIT_COMMAND = (
    "python -m bissl_dense.segmentation.data data/VOCdevkit/VOC2012 "
    "--out data/VOCdevkit/VOC2012/splits"
)


def ids(path: Path) -> list[str]:
    return path.read_text().split()


@pytest.fixture(scope="module")
def voc(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Generated VOC07+12 (24 images a year: 6 seg train, 6 seg val, 12 SBD-only); its VOCdevkit."""
    root = tmp_path_factory.mktemp("voc_aug")
    write_voc(root, 24, seed=5, size=48, num_classes=3)
    return root / "VOCdevkit"


def test_split_partitions_each_training_list_by_seed(voc: Path, tmp_path: Path) -> None:
    seg = voc / "VOC2012" / "ImageSets" / "Segmentation"
    train_ids, aug_ids, test_ids = (
        ids(seg / "train.txt"),
        ids(seg / "aug.txt"),
        ids(seg / "val.txt"),
    )
    assert len(train_ids) >= 4 and len(aug_ids) >= 8  # the generator's lists, as the converter's

    summary = write_voc_aug_split(voc / "VOC2012", tmp_path / "a", 0.25, seed=0)
    lists = {name: ids(tmp_path / "a" / f"{name}.txt") for name in LISTS}
    assert summary["written"] and {k: summary[k] for k in lists} == {
        k: len(v) for k, v in lists.items()
    }
    # each training list is cut in two: disjoint, together the whole list, a quarter held out
    assert sorted(lists["train"] + lists["val"]) == sorted(train_ids)
    assert sorted(lists["train_aug"] + lists["val_aug"]) == sorted(aug_ids)
    everything = [i for v in lists.values() for i in v]
    assert len(everything) == len(set(everything)) == len(train_ids) + len(aug_ids)
    assert len(lists["val"]) == round(0.25 * len(train_ids))
    assert len(lists["val_aug"]) == round(0.25 * len(aug_ids))
    assert not set(everything) & set(test_ids)  # VOC2012 seg val stays the test set

    # deterministic in the seed: the same seed draws the same lists elsewhere, another does not
    write_voc_aug_split(voc / "VOC2012", tmp_path / "b", 0.25, seed=0)
    write_voc_aug_split(voc / "VOC2012", tmp_path / "c", 0.25, seed=1)
    for name, expected in lists.items():
        assert ids(tmp_path / "b" / f"{name}.txt") == expected
    assert any(ids(tmp_path / "c" / f"{n}.txt") != lists[n] for n in ("val", "val_aug"))


def test_split_is_written_once(voc: Path, tmp_path: Path) -> None:
    out = tmp_path / "splits"
    assert write_voc_aug_split(voc / "VOC2012", out, 0.25, seed=0)["written"]
    files = sorted(out.iterdir())
    assert [f.name for f in files] == [
        "split.json", "train.txt", "train_aug.txt", "val.txt", "val_aug.txt"
    ]  # fmt: skip
    before = {f.name: (f.stat().st_ino, f.stat().st_mtime_ns) for f in files}
    # a second call (another process, a later run, the command again) reads the split back: an
    # atomic rewrite would give every file a new inode
    again = write_voc_aug_split(voc / "VOC2012", out, 0.25, seed=0)
    assert not again["written"]
    assert {f.name: (f.stat().st_ino, f.stat().st_mtime_ns) for f in out.iterdir()} == before
    # another seed or fraction is refused, not silently redrawn
    with pytest.raises(DataError, match="seed=0"):
        write_voc_aug_split(voc / "VOC2012", out, 0.25, seed=1)
    with pytest.raises(DataError, match="val_fraction=0.25"):
        write_voc_aug_split(voc / "VOC2012", out, 0.5, seed=0)
    assert {f.name: (f.stat().st_ino, f.stat().st_mtime_ns) for f in out.iterdir()} == before


def test_split_refuses_changed_or_leaking_lists(voc: Path, tmp_path: Path) -> None:
    copy = tmp_path / "VOC2012"
    seg = copy / "ImageSets" / "Segmentation"
    seg.mkdir(parents=True)
    for name in ("train", "aug", "val"):
        source = voc / "VOC2012" / "ImageSets" / "Segmentation" / f"{name}.txt"
        (seg / f"{name}.txt").write_text(source.read_text())
    write_voc_aug_split(copy, copy / "splits", 0.25, seed=0)
    aug = ids(seg / "aug.txt")
    (seg / "aug.txt").write_text("".join(f"{i}\n" for i in aug[1:]))  # an image went away
    with pytest.raises(DataError, match="no longer partitions"):
        write_voc_aug_split(copy, copy / "splits", 0.25, seed=0)
    (seg / "aug.txt").write_text("".join(f"{i}\n" for i in [*aug, ids(seg / "val.txt")[0]]))
    with pytest.raises(DataError, match="test list"):  # a test image among the training lists
        write_voc_aug_split(copy, tmp_path / "other", 0.25, seed=0)
    assert main([str(tmp_path / "nothing")]) == 2  # neither layout: one line, exit status 2


def test_cityscapes_split_is_written_once_too(seg_data: dict[str, Path], tmp_path: Path) -> None:
    root = seg_data["cityscapes"]
    assert write_cityscapes_split(root, tmp_path, 0.25, seed=0)["written"]
    before = {f.name: f.stat().st_ino for f in tmp_path.iterdir()}
    assert not write_cityscapes_split(root, tmp_path, 0.25, seed=0)["written"]
    assert {f.name: f.stat().st_ino for f in tmp_path.iterdir()} == before
    with pytest.raises(DataError, match="seed=0"):
        write_cityscapes_split(root, tmp_path, 0.25, seed=3)


@pytest.fixture()
def user_dir(voc: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A working directory laid out as README asks: ``data/VOCdevkit`` is the VOC copy."""
    (tmp_path / "data").mkdir()
    os.symlink(voc, tmp_path / "data" / "VOCdevkit")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _image_ids(dataset) -> list[tuple[str, str]]:
    """(image id, mask folder) of every item, read from the built dataset's data list."""
    out = []
    for index in range(len(dataset)):
        info = dataset.get_data_info(index)
        assert Path(info["img_path"]).stem == Path(info["seg_map_path"]).stem
        out.append((Path(info["img_path"]).stem, Path(info["seg_map_path"]).parent.name))
    return out


@pytest.mark.parametrize("config", VOC_AUG_CONFIGS)
def test_configs_train_and_validate_on_the_split_and_test_on_voc2012_val(
    user_dir: Path, voc: Path, config: str
) -> None:
    from mmengine.registry import DATASETS, DefaultScope

    from bissl_dense.engine.runner import load_config
    from bissl_dense.segmentation.model import register_mmseg

    splits = voc / "VOC2012" / "splits"
    if not (splits / "split.json").is_file():  # the command of README, in its default place
        assert main(["data/VOCdevkit/VOC2012", "--out", "data/VOCdevkit/VOC2012/splits",
                     "--val-fraction", "0.25"]) == 0  # fmt: skip
    lists = {name: ids(splits / f"{name}.txt") for name in LISTS}
    test_ids = ids(voc / "VOC2012" / "ImageSets" / "Segmentation" / "val.txt")

    cfg = load_config(CONFIGS / config)
    register_mmseg()
    with DefaultScope.overwrite_default_scope("mmseg"):
        built = {
            split: DATASETS.build(cfg[f"{split}_dataloader"]["dataset"])
            for split in ("train", "val", "test")
        }
    train = _image_ids(built["train"].dataset)  # inside SeededMMDataset
    assert train == [(i, "SegmentationClass") for i in lists["train"]] + [
        (i, "SegmentationClassAug") for i in lists["train_aug"]
    ]
    assert _image_ids(built["val"]) == [(i, "SegmentationClass") for i in lists["val"]] + [
        (i, "SegmentationClassAug") for i in lists["val_aug"]
    ]
    assert _image_ids(built["test"]) == [(i, "SegmentationClass") for i in test_ids]
    assert not {i for i, _ in train} & {i for i, _ in _image_ids(built["val"])}
    assert len(built["val"].metainfo["classes"]) == 21


def test_a_missing_split_fails_in_one_line_naming_its_command(
    voc: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    from bissl_dense.cli import main as cli

    # a VOC copy without splits/ (only the lists and the folders the datasets open)
    copy = tmp_path / "data" / "VOCdevkit" / "VOC2012"
    (copy / "ImageSets").mkdir(parents=True)
    os.symlink(voc / "VOC2012" / "ImageSets" / "Segmentation", copy / "ImageSets" / "Segmentation")
    for folder in ("JPEGImages", "SegmentationClass", "SegmentationClassAug"):
        os.symlink(voc / "VOC2012" / folder, copy / folder)
    monkeypatch.chdir(tmp_path)
    assert cli(["train", str(CONFIGS / "finetune_fcn_r50_voc_aug.py"), "--work-dir",
                str(tmp_path / "work")]) == 2  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and SPLIT_COMMAND in err[0], err
    assert "splits/train.txt" in err[0]


def test_a_missing_cityscapes_list_names_its_command_too(seg_data: dict[str, Path]) -> None:
    from mmengine.registry import DATASETS, DefaultScope

    from bissl_dense.segmentation.model import register_mmseg

    root = seg_data["cityscapes"]
    register_mmseg()
    with DefaultScope.overwrite_default_scope("mmseg"), pytest.raises(DataError) as caught:
        DATASETS.build(
            dict(
                type="CityscapesSplitDataset",
                data_root=str(root),
                ann_file="other/val.txt",
                data_prefix=dict(img_path="leftImg8bit/train", seg_map_path="gtFine/train"),
                pipeline=[],
            )
        )
    command = f"python -m bissl_dense.segmentation.data {root} --out {root / 'other'}"
    assert command in str(caught.value) and "\n" not in str(caught.value)
