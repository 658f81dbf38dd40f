"""Tiny copies of the 12 classification datasets, in their real on-disk layouts.

``write_<name>(root, ...)`` writes under ``root`` exactly the folders, file names and metadata
formats of the official archive (as torchvision or the authors' documentation describe them:
JSON lists, CIFAR's pickled batches, MATLAB ``.mat`` files via ``scipy.io.savemat``, VOC image
sets and XML, ...) for a few classes with a few images each, and returns the ground truth::

    {"classes": [...], "splits": {official split: {"ids": [...], "labels": [...]}}}

with ``ids`` the item ids ``build_dataset`` reports and ``labels`` the 0-based class indices
(VOC: multi-hot lists, plus ``"difficult"``). Split names are the official ones: ``train``/
``test`` (Food-101, CIFAR, CUB, SUN397, Cars, and Pets' ``trainval`` under the name ``train``),
``train``/``val``/``test`` (Aircraft, DTD, Flowers, VOC2007) and ``all`` (Caltech-101).

Every image of class ``k`` is a solid square of colour :func:`class_colour` ``(k)``, so a test
can check that an image arrives with its own label, and a small model can learn the classes.
"""

from __future__ import annotations

import json
import pickle
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from bissl_dense.datasets.synthetic import VOC_CLASSES

__all__ = [
    "WRITERS",
    "class_colour",
    "nearest_class",
    "write_aircraft",
    "write_caltech101",
    "write_cars",
    "write_cifar10",
    "write_cifar100",
    "write_cub200",
    "write_dtd",
    "write_flowers",
    "write_food101",
    "write_pets",
    "write_sun397",
    "write_voc2007",
]

_PALETTE = (
    (230, 25, 75),
    (60, 180, 75),
    (0, 130, 200),
    (245, 130, 48),
    (145, 30, 180),
    (240, 240, 40),
    (70, 240, 240),
    (128, 128, 128),
)


def class_colour(label: int) -> tuple[int, int, int]:
    """The solid colour of every fabricated image of class ``label`` (up to 8 classes)."""
    return _PALETTE[label]


def nearest_class(image: Image.Image) -> int:
    """The class whose colour is nearest to the centre pixel of ``image`` (JPEG shifts it a bit)."""
    pixel = np.asarray(image.convert("RGB"))[image.height // 2, image.width // 2].astype(int)
    return int(np.argmin([np.abs(pixel - np.array(c)).sum() for c in _PALETTE]))


def _jpeg(path: Path, label: int, size: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (size, size), class_colour(label)).save(path, quality=95)


def _lines(path: Path, lines: Sequence[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{line}\n" for line in lines))


def _truth(classes: Sequence[str], **splits: tuple[list[str], list[Any]]) -> dict[str, Any]:
    return {
        "classes": list(classes),
        "splits": {name: {"ids": ids, "labels": labels} for name, (ids, labels) in splits.items()},
    }


def _counts(per_class: int | Sequence[int], num_classes: int) -> list[int]:
    return [per_class] * num_classes if isinstance(per_class, int) else list(per_class)


# --------------------------------------------------------------------------------------------
# Food-101: food-101/meta/{train,test}.json + images/<class>/<id>.jpg
# --------------------------------------------------------------------------------------------


def write_food101(
    root: Path,
    train_per_class: int | Sequence[int] = (5, 6, 4),
    test_per_class: int = 2,
    size: int = 8,
) -> dict[str, Any]:
    classes = ["apple_pie", "baby_back_ribs", "beignets"]
    base = Path(root) / "food-101"
    splits: dict[str, tuple[list[str], list[int]]] = {"train": ([], []), "test": ([], [])}
    meta: dict[str, dict[str, list[str]]] = {"train": {}, "test": {}}
    number = 100000
    for label, name in enumerate(classes):
        counts = {"train": _counts(train_per_class, 3)[label], "test": test_per_class}
        for split, count in counts.items():
            for _ in range(count):
                number += 7919
                item = f"{name}/{number}"
                _jpeg(base / "images" / f"{item}.jpg", label, size)
                meta[split].setdefault(name, []).append(item)
                splits[split][0].append(item)
                splits[split][1].append(label)
    for split in ("train", "test"):
        (base / "meta").mkdir(parents=True, exist_ok=True)
        (base / "meta" / f"{split}.json").write_text(json.dumps(meta[split]))
        _lines(base / "meta" / f"{split}.txt", [i for items in meta[split].values() for i in items])
    _lines(base / "meta" / "classes.txt", classes)
    _lines(base / "meta" / "labels.txt", [c.replace("_", " ").capitalize() for c in classes])
    return _truth(classes, **splits)


# --------------------------------------------------------------------------------------------
# CIFAR: the "python version" pickled batches (written at protocol 2, as Python 2 did)
# --------------------------------------------------------------------------------------------


def _cifar_rows(labels: Sequence[int]) -> np.ndarray:
    """N x 3072 uint8 rows (1024 red, 1024 green, 1024 blue values of a 32x32 image)."""
    rows = np.zeros((len(labels), 3, 1024), dtype=np.uint8)
    for row, label in enumerate(labels):
        rows[row] = np.array(class_colour(label), dtype=np.uint8)[:, None]
    return rows.reshape(len(labels), 3072)


def _pickle(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as handle:
        pickle.dump(obj, handle, protocol=2)


def _cifar_labels(per_class: int | Sequence[int], num_classes: int) -> list[int]:
    counts = _counts(per_class, num_classes)
    # interleaved, as the real batches are not sorted by class
    labels = [k for round_ in range(max(counts)) for k in range(num_classes) if round_ < counts[k]]
    return labels


def write_cifar10(
    root: Path, train_per_class: int | Sequence[int] = (5, 6, 4), test_per_class: int = 2
) -> dict[str, Any]:
    classes = ["airplane", "automobile", "bird"]
    base = Path(root) / "cifar-10-batches-py"
    train_labels = _cifar_labels(train_per_class, 3)
    batches = np.array_split(np.arange(len(train_labels)), 5)
    train_ids: list[str] = []
    for number, rows in enumerate(batches, 1):
        labels = [train_labels[i] for i in rows]
        name = f"data_batch_{number}"
        _pickle(
            base / name,
            {
                "batch_label": f"training batch {number} of 5",
                "labels": labels,
                "data": _cifar_rows(labels),
                "filenames": [f"{classes[k]}_s_{i:06d}.png" for i, k in zip(rows, labels)],
            },
        )
        train_ids.extend(f"{name}:{row}" for row in range(len(labels)))
    test_labels = _cifar_labels(test_per_class, 3)
    _pickle(
        base / "test_batch",
        {
            "batch_label": "testing batch 1 of 1",
            "labels": test_labels,
            "data": _cifar_rows(test_labels),
            "filenames": [f"test_{i:06d}.png" for i in range(len(test_labels))],
        },
    )
    _pickle(
        base / "batches.meta",
        {"label_names": classes, "num_cases_per_batch": 10000, "num_vis": 3072},
    )
    (base / "readme.html").write_text("<html></html>\n")
    return _truth(
        classes,
        train=(train_ids, [train_labels[i] for i in np.concatenate(batches)]),
        test=([f"test_batch:{i}" for i in range(len(test_labels))], test_labels),
    )


def write_cifar100(
    root: Path, train_per_class: int | Sequence[int] = (5, 6, 4), test_per_class: int = 2
) -> dict[str, Any]:
    classes = ["apple", "aquarium_fish", "baby"]
    coarse = ["fruit_and_vegetables", "fish", "people"]
    base = Path(root) / "cifar-100-python"
    truth: dict[str, tuple[list[str], list[int]]] = {}
    for split, per_class in (("train", train_per_class), ("test", test_per_class)):
        labels = _cifar_labels(per_class, 3)
        _pickle(
            base / split,
            {
                "filenames": [f"{classes[k]}_s_{i:06d}.png" for i, k in enumerate(labels)],
                "batch_label": f"{split}ing batch 1 of 1",
                "fine_labels": labels,
                "coarse_labels": labels,
                "data": _cifar_rows(labels),
            },
        )
        truth[split] = ([f"{split}:{i}" for i in range(len(labels))], labels)
    _pickle(base / "meta", {"fine_label_names": classes, "coarse_label_names": coarse})
    return _truth(classes, **truth)


# --------------------------------------------------------------------------------------------
# CUB-200-2011: CUB_200_2011/{images,image_class_labels,train_test_split,classes}.txt + images/
# --------------------------------------------------------------------------------------------


def write_cub200(
    root: Path,
    train_per_class: int | Sequence[int] = (5, 6, 4),
    test_per_class: int = 2,
    size: int = 8,
) -> dict[str, Any]:
    folders = ["001.Black_footed_Albatross", "002.Laysan_Albatross", "003.Sooty_Albatross"]
    base = Path(root) / "CUB_200_2011"
    images, labels, split_flags = [], [], []
    splits: dict[str, tuple[list[str], list[int]]] = {"train": ([], []), "test": ([], [])}
    image_id = 0
    for label, folder in enumerate(folders):
        stem = folder.split(".", 1)[1].replace("_a", "_A")
        counts = [1] * _counts(train_per_class, 3)[label] + [0] * test_per_class
        for number, flag in enumerate(counts):
            image_id += 1
            relative = f"{folder}/{stem}_{number:04d}_{1000 + image_id}.jpg"
            _jpeg(base / "images" / relative, label, size)
            images.append(f"{image_id} {relative}")
            labels.append(f"{image_id} {label + 1}")
            split_flags.append(f"{image_id} {flag}")
            split = "train" if flag else "test"
            splits[split][0].append(relative)
            splits[split][1].append(label)
    _lines(base / "images.txt", images)
    _lines(base / "image_class_labels.txt", labels)
    _lines(base / "train_test_split.txt", split_flags)
    _lines(base / "classes.txt", [f"{k + 1} {name}" for k, name in enumerate(folders)])
    _lines(base / "bounding_boxes.txt", [f"{i + 1} 1.0 1.0 6.0 6.0" for i in range(image_id)])
    (Path(root) / "attributes.txt").write_text("1 has_bill_shape::curved_(up_or_down)\n")
    return _truth([f.split(".", 1)[1] for f in folders], **splits)


# --------------------------------------------------------------------------------------------
# SUN397: SUN397/ClassName.txt, <letter>/<class>[/<sub>]/sun_*.jpg, Partitions/*_NN.txt
# --------------------------------------------------------------------------------------------


def write_sun397(
    root: Path,
    train_per_class: int | Sequence[int] = (5, 6, 4),
    test_per_class: int = 2,
    extra_per_class: int = 1,
    size: int = 8,
) -> dict[str, Any]:
    """``extra_per_class`` images per class are in no partition-1 list (as in the real data,
    where the 10 partitions use 50 + 50 images of each class)."""
    class_paths = ["/a/abbey", "/b/bakery/shop", "/c/castle"]
    base = Path(root) / "SUN397"
    _lines(base / "ClassName.txt", class_paths)
    rng = np.random.default_rng(397)
    lists: dict[str, list[str]] = {"train": [], "test": [], "other": []}
    splits: dict[str, tuple[list[str], list[int]]] = {"train": ([], []), "test": ([], [])}
    for label, class_path in enumerate(class_paths):
        counts = {
            "train": _counts(train_per_class, 3)[label],
            "test": test_per_class,
            "other": extra_per_class,
        }
        for split, count in counts.items():
            for _ in range(count):
                name = "sun_" + "".join(rng.choice(list("abcdefghijklmnopqrstuvwxyz"), 16))
                relative = f"{class_path[1:]}/{name}.jpg"
                _jpeg(base / relative, label, size)
                lists[split].append(f"/{relative}")
                if split != "other":
                    splits[split][0].append(relative)
                    splits[split][1].append(label)
    _lines(base / "Partitions" / "ClassName.txt", class_paths)
    _lines(base / "Partitions" / "Training_01.txt", lists["train"])
    _lines(base / "Partitions" / "Testing_01.txt", lists["test"])
    # partition 2 swaps the roles of train and "other" (never read: the paper uses partition 1)
    _lines(base / "Partitions" / "Training_02.txt", lists["other"])
    _lines(base / "Partitions" / "Testing_02.txt", lists["test"])
    return _truth([p[3:] for p in class_paths], **splits)


# --------------------------------------------------------------------------------------------
# Stanford Cars: stanford_cars/devkit/*.mat, cars_test_annos_withlabels.mat, cars_{train,test}/
# --------------------------------------------------------------------------------------------


def _cars_annotations(labels: Sequence[int], with_class: bool = True) -> np.ndarray:
    fields = ["bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2"] + (["class"] if with_class else [])
    dtype = [(name, "O") for name in fields + ["fname"]]
    records = np.zeros((1, len(labels)), dtype=dtype)
    for i, label in enumerate(labels):
        for name in fields[:4]:
            records[0, i][name] = np.array([[1 if name.endswith("1") else 6]], dtype=np.uint8)
        if with_class:
            records[0, i]["class"] = np.array([[label + 1]], dtype=np.uint8)
        records[0, i]["fname"] = np.array([f"{i + 1:05d}.jpg"])
    return records


def write_cars(
    root: Path,
    train_per_class: int | Sequence[int] = (5, 6, 4),
    test_per_class: int = 2,
    size: int = 8,
) -> dict[str, Any]:
    import scipy.io

    classes = ["AM General Hummer SUV 2000", "Acura RL Sedan 2012", "Acura TL Sedan 2012"]
    base = Path(root) / "stanford_cars"
    (base / "devkit").mkdir(parents=True)
    names = np.empty((1, len(classes)), dtype=object)
    for k, name in enumerate(classes):
        names[0, k] = np.array([name])
    scipy.io.savemat(base / "devkit" / "cars_meta.mat", {"class_names": names})
    splits: dict[str, tuple[list[str], list[int]]] = {}
    for split, per_class in (("train", train_per_class), ("test", test_per_class)):
        labels = _cifar_labels(per_class, 3)  # interleaved classes, as in the real lists
        for i, label in enumerate(labels):
            _jpeg(base / f"cars_{split}" / f"{i + 1:05d}.jpg", label, size)
        records = _cars_annotations(labels)
        if split == "train":
            scipy.io.savemat(base / "devkit" / "cars_train_annos.mat", {"annotations": records})
        else:
            scipy.io.savemat(base / "cars_test_annos_withlabels.mat", {"annotations": records})
            scipy.io.savemat(  # the devkit's unlabeled test list (not read)
                base / "devkit" / "cars_test_annos.mat",
                {"annotations": _cars_annotations(labels, with_class=False)},
            )
        splits[split] = ([f"cars_{split}/{i + 1:05d}.jpg" for i in range(len(labels))], labels)
    return _truth(classes, **splits)


# --------------------------------------------------------------------------------------------
# FGVC Aircraft: fgvc-aircraft-2013b/data/{variants.txt, images_variant_<split>.txt, images/}
# --------------------------------------------------------------------------------------------


def write_aircraft(
    root: Path, per_class: dict[str, int] | None = None, size: int = 8
) -> dict[str, Any]:
    per_class = per_class or {"train": 3, "val": 2, "test": 2}
    variants = ["707-320", "F/A-18", "Cessna 172"]  # names with '/' and spaces, as the real ones
    families = ["Boeing 707", "F/A-18", "Cessna 172"]
    makers = ["Boeing", "McDonnell Douglas", "Cessna"]
    data = Path(root) / "fgvc-aircraft-2013b" / "data"
    _lines(data / "variants.txt", variants)
    _lines(data / "families.txt", families)
    _lines(data / "manufacturers.txt", makers)
    splits: dict[str, tuple[list[str], list[int]]] = {}
    number = 1000000
    for split, count in per_class.items():
        ids, labels = [], []
        for _ in range(count):
            for label in range(len(variants)):
                number += 1337
                image_id = f"{number:07d}"
                _jpeg(data / "images" / f"{image_id}.jpg", label, size)
                ids.append(image_id)
                labels.append(label)
        splits[split] = (ids, labels)
        for level, names in (("variant", variants), ("family", families), ("manufacturer", makers)):
            _lines(
                data / f"images_{level}_{split}.txt",
                [f"{i} {names[k]}" for i, k in zip(ids, labels)],
            )
        _lines(data / f"images_{split}.txt", ids)
    for level, names in (("variant", variants), ("family", families), ("manufacturer", makers)):
        trainval = [f"{i} {names[k]}" for split in ("train", "val") for i, k in zip(*splits[split])]
        _lines(data / f"images_{level}_trainval.txt", trainval)
    _lines(data / "images_box.txt", [f"{i} 1 1 6 6" for s in splits.values() for i in s[0]])
    return _truth(variants, **splits)


# --------------------------------------------------------------------------------------------
# DTD: dtd/dtd/{images/<class>/<class>_NNNN.jpg, labels/{train,val,test}<N>.txt}
# --------------------------------------------------------------------------------------------


def write_dtd(root: Path, per_class: dict[str, int] | None = None, size: int = 8) -> dict[str, Any]:
    per_class = per_class or {"train": 3, "val": 2, "test": 2}
    classes = ["banded", "blotchy", "braided"]
    base = Path(root) / "dtd" / "dtd"
    splits: dict[str, tuple[list[str], list[int]]] = {s: ([], []) for s in per_class}
    numbers = [0] * len(classes)
    for split, count in per_class.items():
        for label, name in enumerate(classes):
            for _ in range(count):
                numbers[label] += 1
                relative = f"{name}/{name}_{numbers[label] * 13:04d}.jpg"
                _jpeg(base / "images" / relative, label, size)
                splits[split][0].append(relative)
                splits[split][1].append(label)
    for partition in (1, 2):
        for split in per_class:
            ids = splits[split][0]
            # partition 2 lists the same images in another order (partition 1 is the one read)
            _lines(
                base / "labels" / f"{split}{partition}.txt", ids if partition == 1 else ids[::-1]
            )
    _lines(
        base / "labels" / "labels_joint_anno.txt",
        [f"{i} {i.split('/')[0]}" for s in splits.values() for i in s[0]],
    )
    (base / "imdb").mkdir(parents=True, exist_ok=True)
    return _truth(classes, **splits)


# --------------------------------------------------------------------------------------------
# Oxford-IIIT Pet: oxford-iiit-pet/{images/<Breed>_<n>.jpg, annotations/{trainval,test,list}.txt}
# --------------------------------------------------------------------------------------------


def write_pets(
    root: Path,
    train_per_class: int | Sequence[int] = (5, 6, 4),
    test_per_class: int = 2,
    size: int = 8,
) -> dict[str, Any]:
    # (image prefix, class id 1..37, species 1 cat / 2 dog, breed id within the species)
    breeds = [
        ("Abyssinian", 1, 1, 1),
        ("american_bulldog", 2, 2, 1),
        ("american_pit_bull_terrier", 3, 2, 2),
    ]
    base = Path(root) / "oxford-iiit-pet"
    files: dict[str, list[str]] = {"trainval": [], "test": []}
    splits: dict[str, tuple[list[str], list[int]]] = {"train": ([], []), "test": ([], [])}
    number = 0
    for label, (prefix, class_id, species, breed) in enumerate(breeds):
        counts = {"trainval": _counts(train_per_class, 3)[label], "test": test_per_class}
        for split, count in counts.items():
            for _ in range(count):
                number += 1
                image_id = f"{prefix}_{number}"
                _jpeg(base / "images" / f"{image_id}.jpg", label, size)
                files[split].append(f"{image_id} {class_id} {species} {breed}")
                key = "train" if split == "trainval" else "test"
                splits[key][0].append(image_id)
                splits[key][1].append(label)
    _lines(base / "annotations" / "trainval.txt", files["trainval"])
    _lines(base / "annotations" / "test.txt", files["test"])
    header = ["#Image CLASS-ID SPECIES BREED ID", "#ID: 1:37 Class ids", "#SPECIES: 1:Cat 2:Dog"]
    _lines(base / "annotations" / "list.txt", header + files["trainval"] + files["test"])
    (base / "annotations" / "trimaps").mkdir(parents=True, exist_ok=True)
    classes = ["Abyssinian", "American Bulldog", "American Pit Bull Terrier"]
    return _truth(classes, **splits)


# --------------------------------------------------------------------------------------------
# Caltech-101: caltech101/101_ObjectCategories/<class>/image_NNNN.jpg (+ BACKGROUND_Google)
# --------------------------------------------------------------------------------------------


def write_caltech101(
    root: Path, per_class: Sequence[int] = (31, 33, 35), background: int = 3, size: int = 8
) -> dict[str, Any]:
    """Classes sort as the real ones do: upper case first (``Faces`` < ``Faces_easy`` <
    ``accordion``); ``BACKGROUND_Google`` is written too and must be ignored."""
    classes = ["Faces", "Faces_easy", "accordion"]
    base = Path(root) / "caltech101" / "101_ObjectCategories"
    ids, labels = [], []
    for label, (name, count) in enumerate(zip(classes, per_class)):
        for number in range(1, count + 1):
            relative = f"{name}/image_{number:04d}.jpg"
            _jpeg(base / relative, label, size)
            ids.append(relative)
            labels.append(label)
    for number in range(1, background + 1):
        _jpeg(base / "BACKGROUND_Google" / f"image_{number:04d}.jpg", 7, size)
    return _truth(classes, all=(ids, labels))


# --------------------------------------------------------------------------------------------
# Oxford 102 Flowers: flowers-102/{jpg/image_NNNNN.jpg, imagelabels.mat, setid.mat}
# --------------------------------------------------------------------------------------------


def write_flowers(
    root: Path, per_class: dict[str, int] | None = None, size: int = 8
) -> dict[str, Any]:
    import scipy.io

    per_class = per_class or {"train": 3, "val": 2, "test": 2}
    base = Path(root) / "flowers-102"
    # image numbers are shuffled over classes and splits, as in the real setid.mat
    assignments = [
        (split, label) for split, n in per_class.items() for label in range(3) for _ in range(n)
    ]
    order = np.random.default_rng(102).permutation(len(assignments))
    image_labels = np.zeros(len(assignments), dtype=np.uint8)
    set_ids: dict[str, list[int]] = {split: [] for split in per_class}
    for number, position in enumerate(order, 1):
        split, label = assignments[position]
        _jpeg(base / "jpg" / f"image_{number:05d}.jpg", label, size)
        image_labels[number - 1] = label + 1
        set_ids[split].append(number)
    scipy.io.savemat(base / "imagelabels.mat", {"labels": image_labels[None, :]})
    key = {"train": "trnid", "val": "valid", "test": "tstid"}
    scipy.io.savemat(
        base / "setid.mat",
        {key[s]: np.array(sorted(v), dtype=np.uint16)[None, :] for s, v in set_ids.items()},
    )
    from torchvision.datasets import Flowers102

    splits = {
        split: (
            [f"image_{n:05d}.jpg" for n in sorted(numbers)],
            [int(image_labels[n - 1]) - 1 for n in sorted(numbers)],
        )
        for split, numbers in set_ids.items()
    }
    return _truth(Flowers102.classes, **splits)


# --------------------------------------------------------------------------------------------
# PASCAL VOC 2007: VOCdevkit/VOC2007/{ImageSets/Main, JPEGImages, Annotations}
# --------------------------------------------------------------------------------------------


# per split: for each image, the objects (class index, difficult flag)
_VOC_OBJECTS: dict[str, list[list[tuple[int, int]]]] = {
    "train": [[(0, 0)], [(1, 0), (14, 0)], [(14, 0), (14, 1)], [(2, 1), (14, 0)]],
    "val": [[(0, 0), (0, 1)], [(6, 0)], [(14, 1), (1, 0)]],
    "test": [[(0, 0)], [(2, 0), (14, 1)], [(6, 1), (6, 0)], [(19, 0)]],
}


def _voc_xml(image_id: str, objects: Sequence[tuple[int, int]], size: int) -> str:
    parts = [
        f"<annotation><folder>VOC2007</folder><filename>{image_id}.jpg</filename>"
        f"<size><width>{size}</width><height>{size}</height><depth>3</depth></size>"
        "<segmented>0</segmented>"
    ]
    for label, difficult in objects:
        parts.append(
            f"<object><name>{VOC_CLASSES[label]}</name><pose>Unspecified</pose>"
            f"<truncated>0</truncated><difficult>{difficult}</difficult><bndbox><xmin>1</xmin>"
            f"<ymin>1</ymin><xmax>{size}</xmax><ymax>{size}</ymax></bndbox></object>"
        )
    return "".join(parts) + "</annotation>\n"


def write_voc2007(root: Path, size: int = 8) -> dict[str, Any]:
    """``<class>_<split>.txt`` hold 1 (a non-difficult object of the class), 0 (only difficult
    ones) or -1 (none), as the devkit writes them; the XML annotations agree with them."""
    base = Path(root) / "VOCdevkit" / "VOC2007"
    main = base / "ImageSets" / "Main"
    truth: dict[str, Any] = {"classes": list(VOC_CLASSES), "splits": {}}
    number = 0
    split_ids: dict[str, list[str]] = {}
    for split, images in _VOC_OBJECTS.items():
        ids, labels, difficult = [], [], []
        for objects in images:
            number += 3
            image_id = f"{number:06d}"
            first = objects[0][0]
            _jpeg(base / "JPEGImages" / f"{image_id}.jpg", first % 8, size)
            (base / "Annotations").mkdir(parents=True, exist_ok=True)
            (base / "Annotations" / f"{image_id}.xml").write_text(_voc_xml(image_id, objects, size))
            present = [0.0] * len(VOC_CLASSES)
            only_difficult = [False] * len(VOC_CLASSES)
            for k in range(len(VOC_CLASSES)):
                flags = [d for label, d in objects if label == k]
                present[k] = 1.0 if flags else 0.0
                only_difficult[k] = bool(flags) and all(flags)
            ids.append(image_id)
            labels.append(present)
            difficult.append(only_difficult)
        split_ids[split] = ids
        truth["splits"][split] = {"ids": ids, "labels": labels, "difficult": difficult}
    split_ids["trainval"] = split_ids["train"] + split_ids["val"]
    for split, ids in split_ids.items():
        _lines(main / f"{split}.txt", ids)
        source = (
            [(i, lab, dif) for s in ("train", "val") for i, lab, dif in _zip_truth(truth, s)]
            if split == "trainval"
            else list(_zip_truth(truth, split))
        )
        for k, name in enumerate(VOC_CLASSES):
            _lines(
                main / f"{name}_{split}.txt",
                [
                    f"{image_id} {(0 if dif[k] else 1) if lab[k] else -1:>2}"
                    for image_id, lab, dif in source
                ],
            )
    return truth


def _zip_truth(truth: dict[str, Any], split: str) -> zip:
    entry = truth["splits"][split]
    return zip(entry["ids"], entry["labels"], entry["difficult"])


WRITERS = {
    "food101": write_food101,
    "cifar10": write_cifar10,
    "cifar100": write_cifar100,
    "cub200": write_cub200,
    "sun397": write_sun397,
    "cars": write_cars,
    "aircraft": write_aircraft,
    "voc2007": write_voc2007,
    "dtd": write_dtd,
    "pets": write_pets,
    "caltech101": write_caltech101,
    "flowers": write_flowers,
}
