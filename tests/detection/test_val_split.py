"""The validation split held out of VOC07+12 trainval (issue 21, item 5; SPEC §5): disjoint from
the training images, deterministic by seed, written once and then read by every run, and what
the evaluator of ``voc_0712_val`` evaluates (its images and their ground truth)."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from tests.detection._d2 import TINY_CONFIG, oracle, require_detectron2, tiny_cfg, write_voc_data

require_detectron2()

from detectron2.data import DatasetCatalog  # noqa: E402

from bissl_dense.detection.data import (  # noqa: E402
    TRAIN_MINUS_VAL,
    VAL_SET,
    pretext_dataset,
    upper_dataset,
    val_split_path,
)
from bissl_dense.detection.evaluation import evaluate_voc  # noqa: E402
from bissl_dense.errors import ConfigError, DataError  # noqa: E402

TRAIN = ["DATASETS.TRAIN", f"('{TRAIN_MINUS_VAL}',)"]


@pytest.fixture(scope="module")
def voc(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_voc_data(
        tmp_path_factory.mktemp("voc"), n=16, size=48, num_classes=4, difficult_prob=0.0
    )


def _trainval(voc: Path) -> set[str]:
    out = set()
    for year in ("VOC2007", "VOC2012"):
        lines = (voc / "VOCdevkit" / year / "ImageSets" / "Main" / "trainval.txt").read_text()
        out |= {f"{year}/{i}" for i in lines.split()}
    return out


def _ids(name: str) -> list[str]:
    return [d["image_id"] for d in DatasetCatalog.get(name)]


def _split(voc: Path, out: Path, fraction: str = "0.25", seed: str = "0", file: str = ""):  # noqa: ANN202
    opts = [*TRAIN, "DATASETS.VAL_FRACTION", fraction, "DATASETS.VAL_SEED", seed]
    return tiny_cfg(voc, out, *opts, "DATASETS.VAL_SPLIT_FILE", file)


def test_split_is_disjoint_deterministic_and_written_once(voc: Path, tmp_path: Path) -> None:
    cfg = _split(voc, tmp_path)
    path = val_split_path(cfg)
    assert path.parent == voc / "VOCdevkit" / "bissl_splits" and path.is_file()
    val, rest = _ids(VAL_SET), _ids(TRAIN_MINUS_VAL)
    trainval = _trainval(voc)
    assert len(val) == len(set(val)) and not set(val) & set(rest)
    assert set(val) | set(rest) == trainval
    # a quarter of each year's 8 trainval images
    assert sorted(i.split("/")[0] for i in val) == ["VOC2007"] * 2 + ["VOC2012"] * 4
    # the training data of both levels lacks the held-out images
    held_out_files = {
        str(voc / "VOCdevkit" / i.split("/")[0] / "JPEGImages" / f"{i.split('/')[1]}.jpg")
        for i in val
    }
    records = upper_dataset(cfg).dataset
    upper = {records[k]["file_name"] for k in range(len(records))}
    assert upper and not upper & held_out_files
    assert not {str(f) for f in pretext_dataset(cfg).files} & held_out_files

    # written once: a second registration (another run or process) reads the file as it is ...
    stat, text = path.stat(), path.read_text()
    assert _ids(VAL_SET) == val and path.read_text() == text
    _split(voc, tmp_path / "again")
    assert path.stat().st_ino == stat.st_ino and path.stat().st_mtime_ns == stat.st_mtime_ns
    assert _ids(VAL_SET) == val
    # ... and follows it, not a recomputation: an edited file is what gets registered
    edited = json.loads(text)
    moved = edited["val"]["VOC2007"].pop()
    path.write_text(json.dumps(edited))
    _split(voc, tmp_path / "edited")
    assert f"VOC2007/{moved}" in _ids(TRAIN_MINUS_VAL) and f"VOC2007/{moved}" not in _ids(VAL_SET)
    path.write_text(text)

    # deterministic by seed: the same draw written to another file; another seed differs
    _split(voc, tmp_path / "b", file=str(tmp_path / "b.json"))
    assert _ids(VAL_SET) == val
    assert json.loads((tmp_path / "b.json").read_text())["val"] == json.loads(text)["val"]
    _split(voc, tmp_path / "c", seed="1", file=str(tmp_path / "c.json"))
    assert set(_ids(VAL_SET)) != set(val)

    # a file written for another fraction or seed is refused, not silently used
    with pytest.raises(DataError, match="DATASETS.VAL_SEED=0"):
        _split(voc, tmp_path / "d", seed="3", file=str(path))


def test_training_on_the_held_out_images_is_refused(voc: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="voc_2007_trainval.*voc_0712_trainval_minus_val"):
        tiny_cfg(voc, tmp_path, "DATASETS.VAL_FRACTION", "0.25")  # TRAIN: voc_2007_trainval
    with pytest.raises(ConfigError, match="need DATASETS.VAL_FRACTION > 0"):
        tiny_cfg(voc, tmp_path, "DATASETS.TEST", f"('{VAL_SET}',)")


def _classes_with_objects(voc: Path, ids: list[str]) -> set[str]:
    names = set()
    for image_id in ids:
        year, file_id = image_id.split("/")
        tree = ET.parse(voc / "VOCdevkit" / year / "Annotations" / f"{file_id}.xml")
        names |= {o.find("name").text for o in tree.findall("object")}
    return names


def test_evaluation_uses_the_held_out_images(voc: Path, tmp_path: Path) -> None:
    """AP50 on ``voc_0712_val`` is computed on exactly the held-out images of both years, with
    their own annotation files: detections equal to their ground truth give 100 for every class
    present there (the metric averages over the 20 VOC classes: an absent class scores 0), and
    dropping the detections of one year's images lowers it."""
    cfg = _split(voc, tmp_path, file=str(tmp_path / "split.json"))
    dicts = DatasetCatalog.get(VAL_SET)
    val = [d["image_id"] for d in dicts]
    present = _classes_with_objects(voc, val)
    model = oracle(dicts)
    perfect = evaluate_voc(cfg, model, VAL_SET)
    assert sorted(model.seen) == sorted(val)
    assert perfect["AP50"] == pytest.approx(100.0 * len(present) / 20)

    only_2012 = oracle([d for d in dicts if d["image_id"].startswith("VOC2012/")])
    only_2012.by_id.update(
        {
            d["image_id"]: {**d, "annotations": []}
            for d in dicts
            if d["image_id"].startswith("VOC2007/")
        }
    )
    assert evaluate_voc(cfg, only_2012, VAL_SET)["AP50"] < perfect["AP50"]


def test_train_net_writes_the_split_before_the_workers_and_registers_it(
    voc: Path, tmp_path: Path
) -> None:
    """``tools/train_net.py``: the launching process writes the split file once (preflight), and
    each worker's setup registers the held-out sets from it."""
    from bissl_dense.detection import train_net

    split_file = tmp_path / "split.json"
    argv = ["--config-file", str(TINY_CONFIG), "MODEL.WEIGHTS", "random", *TRAIN]
    argv += ["DATASETS.VOC_ROOT", str(voc), "OUTPUT_DIR", str(tmp_path / "out")]
    argv += ["DATASETS.VAL_FRACTION", "0.25", "DATASETS.VAL_SPLIT_FILE", str(split_file)]
    argv += ["DATASETS.TEST", f"('{VAL_SET}', 'voc_2007_test')"]
    args = train_net.parse_args(argv)
    for name in (VAL_SET, TRAIN_MINUS_VAL):  # registered by the earlier tests: not here
        if name in DatasetCatalog.list():
            DatasetCatalog.remove(name)
    train_net.preflight(args)
    written = json.loads(split_file.read_text())["val"]
    cfg = train_net.setup(args)
    assert cfg.DATASETS.TEST == (VAL_SET, "voc_2007_test")
    assert sorted(_ids(VAL_SET)) == sorted(f"{y}/{i}" for y, ids in written.items() for i in ids)
