"""The unmodified mmdet, mmseg and torchvision loaders read the generated data sets.

The dataset configurations are those of the libraries' own base configs
(mmdet ``configs/_base_/datasets/voc0712.py``, mmseg ``configs/_base_/datasets/
pascal_voc12_aug.py`` and ``cityscapes.py``), built through the registries as a config would.
Expected values come from what the generator reports it wrote and from the files read with PIL.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torchvision
from PIL import Image

from bissl_dense.datasets.synthetic import (
    CITYSCAPES_TRAIN_CLASSES,
    write_cityscapes,
    write_imagefolder,
    write_voc,
)

LOAD_DET = [dict(type="LoadImageFromFile"), dict(type="LoadAnnotations", with_bbox=True)]
LOAD_SEG = [dict(type="LoadImageFromFile"), dict(type="LoadAnnotations")]
# voc0712.py filters images under 32 px and ignores boxes under 32 px
VOC0712_FILTER = dict(filter_empty_gt=True, min_size=32, bbox_min_size=32)


@pytest.fixture(scope="module")
def voc(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("voc")
    summary = write_voc(root / "data", 16, seed=11, size=128, difficult_prob=0.2)
    return root / "data" / "VOCdevkit", summary


def read_ids(path: Path) -> list[str]:
    return path.read_text().split()


def rgb_of(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.array(image.convert("RGB"))


def labels_of(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.array(image)


def voc_det_cfg(devkit: Path, year: str, split: str, **extra: object) -> dict:
    return dict(
        type="VOCDataset",
        data_root=f"{devkit}/",
        ann_file=f"VOC{year}/ImageSets/Main/{split}.txt",
        data_prefix=dict(sub_data_root=f"VOC{year}/"),
        pipeline=LOAD_DET,
        **extra,
    )


def expected_instances(summary: dict, key: str, classes: tuple[str, ...]) -> list[dict]:
    """What mmdet's XMLDataset should make of an image: 0-based boxes (VOC minus 1), labels in
    METAINFO order, ignored when difficult or narrower / lower than bbox_min_size=32."""
    out = []
    for obj in summary["images"][key]["objects"]:
        box = [v - 1 for v in obj["bbox"]]
        small = box[2] - box[0] < 32 or box[3] - box[1] < 32
        out.append(
            {
                "bbox": box,
                "bbox_label": classes.index(obj["name"]),
                "ignore_flag": int(bool(obj["difficult"]) or small),
            }
        )
    return out


def test_mmdet_voc_trainval_and_test(voc: tuple[Path, dict]) -> None:
    from mmdet.registry import DATASETS
    from mmdet.utils import register_all_modules
    from mmengine.registry import init_default_scope

    register_all_modules(init_default_scope=False)
    init_default_scope("mmdet")
    devkit, summary = voc
    dataset = DATASETS.build(voc_det_cfg(devkit, "2007", "trainval", filter_cfg=VOC0712_FILTER))
    classes = dataset.metainfo["classes"]
    ids = read_ids(devkit / "VOC2007/ImageSets/Main/trainval.txt")
    assert len(dataset) == len(ids) == summary["counts"]["VOC2007"]["Main/trainval"]
    assert dataset.metainfo["dataset_type"] == "VOC2007"
    n_ignored = n_kept = n_masks = 0
    for index in range(len(dataset)):
        info = dataset.get_data_info(index)
        key = f"VOC2007/{info['img_id']}"
        expected = expected_instances(summary, key, classes)
        assert [
            {k: inst[k] for k in ("bbox", "bbox_label", "ignore_flag")}
            for inst in info["instances"]
        ] == expected
        assert (info["width"], info["height"]) == (
            summary["images"][key]["width"],
            summary["images"][key]["height"],
        )
        object_png = devkit / "VOC2007/SegmentationObject" / f"{info['img_id']}.png"
        if object_png.exists():  # mmdet's 0-based box is the pixel extent of the object's mask
            instances = labels_of(object_png)
            for number, inst in enumerate(info["instances"], start=1):
                rows, cols = np.nonzero(instances == number)
                assert inst["bbox"] == [cols.min(), rows.min(), cols.max(), rows.max()]
            n_masks += 1
        n_ignored += sum(e["ignore_flag"] for e in expected)
        n_kept += sum(1 - e["ignore_flag"] for e in expected)

        item = dataset[index]  # through the pipeline
        reference = rgb_of(devkit / "VOC2007/JPEGImages" / f"{info['img_id']}.jpg")
        assert item["img"].shape == reference.shape
        # mmcv decodes with OpenCV into BGR; the decoders may round differently by a level
        assert np.abs(item["img"][..., ::-1].astype(int) - reference).max() <= 2
        np.testing.assert_array_equal(
            item["gt_bboxes"].tensor.numpy(),
            np.array([e["bbox"] for e in expected], dtype=np.float32),
        )
        np.testing.assert_array_equal(item["gt_bboxes_labels"], [e["bbox_label"] for e in expected])
        np.testing.assert_array_equal(
            item["gt_ignore_flags"], [bool(e["ignore_flag"]) for e in expected]
        )
    assert n_ignored > 0 and n_kept > 0  # both branches of the ignore rule were exercised
    assert n_masks > 0

    test_set = DATASETS.build(voc_det_cfg(devkit, "2007", "test", test_mode=True))
    assert len(test_set) == summary["counts"]["VOC2007"]["Main/test"]
    assert [test_set.get_data_info(i)["img_id"] for i in range(len(test_set))] == read_ids(
        devkit / "VOC2007/ImageSets/Main/test.txt"
    )


def test_mmdet_voc0712_concat_as_the_base_config(voc: tuple[Path, dict]) -> None:
    from mmdet.registry import DATASETS
    from mmdet.utils import register_all_modules
    from mmengine.registry import init_default_scope

    register_all_modules(init_default_scope=False)
    init_default_scope("mmdet")
    devkit, summary = voc
    cfg = dict(
        type="RepeatDataset",
        times=3,
        dataset=dict(
            type="ConcatDataset",
            ignore_keys=["dataset_type"],
            datasets=[
                voc_det_cfg(devkit, year, "trainval", filter_cfg=VOC0712_FILTER)
                for year in ("2007", "2012")
            ],
        ),
    )
    dataset = DATASETS.build(cfg)
    n07 = summary["counts"]["VOC2007"]["Main/trainval"]
    n12 = summary["counts"]["VOC2012"]["Main/trainval"]
    assert len(dataset) == 3 * (n07 + n12)
    classes = dataset.metainfo["classes"]
    for index in (0, n07 - 1, n07, n07 + n12 - 1, n07 + n12):  # both years, and the repeat
        info = dataset.get_data_info(index)
        year = "2012" if (index % (n07 + n12)) >= n07 else "2007"
        assert info["img_path"].endswith(f"VOC{year}/JPEGImages/{info['img_id']}.jpg")
        expected = expected_instances(summary, f"VOC{year}/{info['img_id']}", classes)
        assert [inst["bbox"] for inst in info["instances"]] == [e["bbox"] for e in expected]
        assert [inst["bbox_label"] for inst in info["instances"]] == [
            e["bbox_label"] for e in expected
        ]


def test_torchvision_voc_readers(voc: tuple[Path, dict]) -> None:
    devkit, summary = voc
    detection = torchvision.datasets.VOCDetection(
        str(devkit.parent), year="2007", image_set="trainval"
    )
    assert len(detection) == summary["counts"]["VOC2007"]["Main/trainval"]
    image, target = detection[0]
    ann = target["annotation"]
    record = summary["images"][f"VOC2007/{Path(ann['filename']).stem}"]
    assert image.size == (record["width"], record["height"])
    assert [o["name"] for o in ann["object"]] == [o["name"] for o in record["objects"]]
    assert [int(o["bndbox"]["xmin"]) for o in ann["object"]] == [
        o["bbox"][0] for o in record["objects"]
    ]
    segmentation = torchvision.datasets.VOCSegmentation(
        str(devkit.parent), year="2012", image_set="train"
    )
    assert len(segmentation) == summary["counts"]["VOC2012"]["Segmentation/train"]
    image, mask = segmentation[0]
    assert mask.mode == "P" and mask.size == image.size


def test_mmseg_voc_aug_as_the_base_config(voc: tuple[Path, dict]) -> None:
    from mmengine.registry import init_default_scope
    from mmseg.registry import DATASETS
    from mmseg.utils import register_all_modules

    register_all_modules(init_default_scope=False)
    init_default_scope("mmseg")
    devkit, summary = voc
    base = devkit / "VOC2012"
    common = dict(type="PascalVOCDataset", data_root=str(base), pipeline=LOAD_SEG)
    train = dict(
        common,
        data_prefix=dict(img_path="JPEGImages", seg_map_path="SegmentationClass"),
        ann_file="ImageSets/Segmentation/train.txt",
    )
    aug = dict(
        common,
        data_prefix=dict(img_path="JPEGImages", seg_map_path="SegmentationClassAug"),
        ann_file="ImageSets/Segmentation/aug.txt",
    )
    val = dict(train, ann_file="ImageSets/Segmentation/val.txt", test_mode=True)
    dataset = DATASETS.build(dict(type="ConcatDataset", datasets=[train, aug]))
    train_ids = read_ids(base / "ImageSets/Segmentation/train.txt")
    aug_ids = read_ids(base / "ImageSets/Segmentation/aug.txt")
    assert len(dataset) == len(train_ids) + len(aug_ids)
    assert len(dataset) == (
        summary["counts"]["VOC2012"]["Segmentation/train"]
        + summary["counts"]["VOC2012"]["Segmentation/aug"]
    )
    assert dataset.metainfo["classes"][0] == "background" and len(dataset.metainfo["classes"]) == 21
    for index in range(len(dataset)):
        item = dataset[index]
        image_id = Path(item["img_path"]).stem
        folder = "SegmentationClass" if index < len(train_ids) else "SegmentationClassAug"
        assert item["seg_map_path"] == str(base / folder / f"{image_id}.png")
        expected = labels_of(base / folder / f"{image_id}.png")
        np.testing.assert_array_equal(item["gt_seg_map"], expected)
        assert item["img"].shape[:2] == expected.shape
        names = {o["name"] for o in summary["images"][f"VOC2012/{image_id}"]["objects"]}
        present = {dataset.metainfo["classes"][v] for v in np.unique(expected) if 0 < v < 255}
        assert present == names
        assert {0, 255} <= set(np.unique(item["gt_seg_map"]).tolist())
    val_set = DATASETS.build(val)
    assert len(val_set) == summary["counts"]["VOC2012"]["Segmentation/val"]
    assert not {Path(val_set.get_data_info(i)["img_path"]).stem for i in range(len(val_set))} & set(
        aug_ids
    )


def test_mmseg_cityscapes(tmp_path: Path) -> None:
    from mmengine.registry import init_default_scope
    from mmseg.registry import DATASETS
    from mmseg.utils import register_all_modules

    register_all_modules(init_default_scope=False)
    init_default_scope("mmseg")
    root = tmp_path / "cityscapes"
    summary = write_cityscapes(root, 7, seed=4, size=(128, 64), n_val=3, num_cities=2)
    for split in ("train", "val"):
        dataset = DATASETS.build(
            dict(
                type="CityscapesDataset",
                data_root=str(root),
                data_prefix=dict(img_path=f"leftImg8bit/{split}", seg_map_path=f"gtFine/{split}"),
                pipeline=LOAD_SEG,
            )
        )
        assert len(dataset) == summary["counts"][split]
        assert tuple(dataset.metainfo["classes"]) == CITYSCAPES_TRAIN_CLASSES
        palette = np.array(dataset.metainfo["palette"])
        for index in range(len(dataset)):
            item = dataset[index]
            image_path = Path(item["img_path"])
            stem = image_path.name.removesuffix("_leftImg8bit.png")
            label_dir = root / "gtFine" / split / image_path.parent.name
            assert item["seg_map_path"] == str(label_dir / f"{stem}_gtFine_labelTrainIds.png")
            train_ids = labels_of(label_dir / f"{stem}_gtFine_labelTrainIds.png")
            np.testing.assert_array_equal(item["gt_seg_map"], train_ids)
            assert item["img"].shape == (64, 128, 3)
            np.testing.assert_array_equal(item["img"][..., ::-1], rgb_of(image_path))
            # the colour PNG is mmseg's palette indexed by trainId wherever the pixel counts
            colour = labels_of(label_dir / f"{stem}_gtFine_color.png")[..., :3]
            valid = train_ids != 255
            np.testing.assert_array_equal(colour[valid], palette[train_ids[valid]])


def test_torchvision_imagefolder(tmp_path: Path) -> None:
    summary = write_imagefolder(tmp_path / "folder", 30, num_classes=3, seed=5, size=48)
    for split in ("train", "val", "test"):
        dataset = torchvision.datasets.ImageFolder(str(tmp_path / "folder" / split))
        assert dataset.classes == summary["classes"]
        assert len(dataset) == sum(summary["counts"][split].values())
        counts = np.bincount(dataset.targets, minlength=3)
        assert counts.tolist() == [summary["counts"][split][name] for name in dataset.classes]
        for path, target in dataset.samples:
            assert Path(path).parent.name == dataset.classes[target]
        image, target = dataset[len(dataset) - 1]
        assert image.size == (48, 48) and image.mode == "RGB"


def base_config(package: str, name: str) -> Path:
    """A dataset base config as the installed library ships it (under ``.mim/configs``)."""
    import importlib

    module = importlib.import_module(package)
    path = Path(module.__file__).parent / ".mim" / "configs" / "_base_" / "datasets" / name
    assert path.is_file(), f"{package} does not ship {path}; is it installed from a wheel?"
    return path


def with_data_root(cfg: object, root: str) -> object:
    """``cfg`` with every ``data_root`` replaced by ``root`` (nothing else changes)."""
    if isinstance(cfg, dict):
        return {k: root if k == "data_root" else with_data_root(v, root) for k, v in cfg.items()}
    if isinstance(cfg, list):
        return [with_data_root(v, root) for v in cfg]
    return cfg


def test_shipped_base_configs_load_the_data_unchanged(
    voc: tuple[Path, dict], tmp_path: Path
) -> None:
    """The libraries' own dataset configs, full pipelines included, with only data_root set."""
    from mmengine.config import Config, ConfigDict
    from mmengine.registry import init_default_scope

    devkit, summary = voc
    counts07, counts12 = summary["counts"]["VOC2007"], summary["counts"]["VOC2012"]

    from mmdet.registry import DATASETS as DET_DATASETS
    from mmdet.utils import register_all_modules as register_mmdet

    register_mmdet(init_default_scope=False)
    init_default_scope("mmdet")
    cfg = Config.fromfile(base_config("mmdet", "voc0712.py"))
    train = DET_DATASETS.build(
        ConfigDict(with_data_root(cfg.train_dataloader.dataset.to_dict(), f"{devkit}/"))
    )
    assert len(train) == 3 * (counts07["Main/trainval"] + counts12["Main/trainval"])
    test = DET_DATASETS.build(
        ConfigDict(with_data_root(cfg.test_dataloader.dataset.to_dict(), f"{devkit}/"))
    )
    assert len(test) == counts07["Main/test"]
    for dataset in (train, test):  # item 0 is a VOC2007 image in both
        item = dataset[0]
        sample = item["data_samples"]
        assert item["inputs"].shape[0] == 3 and item["inputs"].shape[1:] == sample.img_shape
        record = summary["images"][f"VOC2007/{sample.img_id}"]
        expected = sorted(dataset.metainfo["classes"].index(o["name"]) for o in record["objects"])
        # PackDetInputs puts the ignored (difficult / small) boxes in ignored_instances
        loaded = sample.gt_instances.labels.tolist() + sample.ignored_instances.labels.tolist()
        assert sorted(loaded) == expected

    from mmseg.registry import DATASETS as SEG_DATASETS
    from mmseg.utils import register_all_modules as register_mmseg

    register_mmseg(init_default_scope=False)
    init_default_scope("mmseg")
    cfg = Config.fromfile(base_config("mmseg", "pascal_voc12_aug.py"))
    root12 = str(devkit / "VOC2012")
    train = SEG_DATASETS.build(
        ConfigDict(with_data_root(cfg.train_dataloader.dataset.to_dict(), root12))
    )
    assert len(train) == counts12["Segmentation/train"] + counts12["Segmentation/aug"]
    val = SEG_DATASETS.build(
        ConfigDict(with_data_root(cfg.val_dataloader.dataset.to_dict(), root12))
    )
    assert len(val) == counts12["Segmentation/val"]

    cityscapes = tmp_path / "cityscapes"
    write_cityscapes(cityscapes, 4, seed=9, size=(128, 64), n_val=2)
    cfg = Config.fromfile(base_config("mmseg", "cityscapes.py"))
    city_train = SEG_DATASETS.build(
        ConfigDict(with_data_root(cfg.train_dataloader.dataset.to_dict(), f"{cityscapes}/"))
    )
    city_val = SEG_DATASETS.build(
        ConfigDict(with_data_root(cfg.val_dataloader.dataset.to_dict(), f"{cityscapes}/"))
    )
    assert (len(city_train), len(city_val)) == (2, 2)
    for dataset, training in ((train, True), (val, False), (city_train, True), (city_val, False)):
        item = dataset[0]
        sample = item["data_samples"]
        seg = sample.gt_sem_seg.data
        # training pipelines resize and crop the labels with the image; the test pipelines load
        # the labels after resizing, at the original size, for evaluation
        expected_shape = tuple(item["inputs"].shape[1:]) if training else tuple(sample.ori_shape)
        assert tuple(seg.shape[1:]) == expected_shape
        assert set(seg.unique().tolist()) <= set(range(21)) | {255}
