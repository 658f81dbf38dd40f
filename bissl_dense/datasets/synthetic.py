"""Generated datasets in the exact on-disk layouts of the real ones.

The tests, the smoke runs and a user without the real data all need images that

* sit on disk exactly as PASCAL VOC (with the VOC-aug files), Cityscapes, a torchvision
  ``ImageFolder`` set or a flat folder of unlabeled JPEGs do, so that the unmodified mmdet /
  mmseg / torchvision loaders read them (``tests/datasets/test_loaders.py`` checks this);
* carry *learnable* structure: an object's class decides its shape and the orientation of the
  stripes on it (class ``k`` -> shape ``SHAPES[k % 5]``, stripes at ``STRIPE_ANGLES[k % 4]``;
  5 and 4 are coprime, so the 20 VOC classes get 20 distinct pairs), while position, scale,
  colours, stripe period and the noisy textured background are random. A small CNN separates
  the classes after a few hundred steps; nothing about the label is hidden in file names;
* are bit-for-bit reproducible from a seed. Every image draws from its own generator
  ``numpy.random.default_rng([seed, kind, stream, index])``, so an image does not depend on how
  many others are written after it.

Command line::

    python -m bissl_dense.datasets.synthetic --out DIR --kind voc|cityscapes|imagefolder|unlabeled \
        --n N [--seed S] [--size PX] [--num-classes K]

Each writer builds its tree in a hidden staging directory beside ``root`` and renames it into
place at the end, so an interrupted run never leaves a half-written data set behind; ``root``
must not exist yet or be an empty directory.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from PIL import Image

from bissl_dense.fileio import staged_directory

__all__ = [
    "CITYSCAPES_LABELS",
    "CITYSCAPES_TRAIN_CLASSES",
    "SHAPES",
    "STRIPE_ANGLES",
    "VOC_CLASSES",
    "CityscapesLabel",
    "class_appearance",
    "imagefolder_class_name",
    "main",
    "shape_mask",
    "voc_colormap",
    "write_cityscapes",
    "write_imagefolder",
    "write_unlabeled",
    "write_voc",
]

# --------------------------------------------------------------------------------------------
# Facts about the real data sets
# --------------------------------------------------------------------------------------------

# The 20 PASCAL VOC object classes, in the order of the VOC devkit (label i+1 in the
# segmentation PNGs, 0 = background, 255 = border / ignore).
VOC_CLASSES: tuple[str, ...] = (
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
)

VOC_IGNORE = 255


def voc_colormap(num_colors: int = 256) -> np.ndarray:
    """The VOC devkit colour map: the bits of the label index are spread over R, G and B,
    most significant bit first (index 1 -> (128, 0, 0), 255 -> (224, 224, 192))."""
    colours = np.zeros((num_colors, 3), dtype=np.uint8)
    for index in range(num_colors):
        value, rgb = index, [0, 0, 0]
        for bit in range(8):
            for channel in range(3):
                rgb[channel] |= ((value >> channel) & 1) << (7 - bit)
            value >>= 3
        colours[index] = rgb
    return colours


class CityscapesLabel(NamedTuple):
    name: str
    label_id: int
    train_id: int
    color: tuple[int, int, int]


# The Cityscapes label definitions this generator draws (``cityscapesscripts`` labels table):
# name, labelId, trainId (255 = ignored in training and evaluation), colour.
CITYSCAPES_LABELS: tuple[CityscapesLabel, ...] = (
    CityscapesLabel("unlabeled", 0, 255, (0, 0, 0)),
    CityscapesLabel("ego vehicle", 1, 255, (0, 0, 0)),
    CityscapesLabel("static", 4, 255, (0, 0, 0)),
    CityscapesLabel("ground", 6, 255, (81, 0, 81)),
    CityscapesLabel("road", 7, 0, (128, 64, 128)),
    CityscapesLabel("sidewalk", 8, 1, (244, 35, 232)),
    CityscapesLabel("building", 11, 2, (70, 70, 70)),
    CityscapesLabel("wall", 12, 3, (102, 102, 156)),
    CityscapesLabel("fence", 13, 4, (190, 153, 153)),
    CityscapesLabel("pole", 17, 5, (153, 153, 153)),
    CityscapesLabel("traffic light", 19, 6, (250, 170, 30)),
    CityscapesLabel("traffic sign", 20, 7, (220, 220, 0)),
    CityscapesLabel("vegetation", 21, 8, (107, 142, 35)),
    CityscapesLabel("terrain", 22, 9, (152, 251, 152)),
    CityscapesLabel("sky", 23, 10, (70, 130, 180)),
    CityscapesLabel("person", 24, 11, (220, 20, 60)),
    CityscapesLabel("rider", 25, 12, (255, 0, 0)),
    CityscapesLabel("car", 26, 13, (0, 0, 142)),
    CityscapesLabel("truck", 27, 14, (0, 0, 70)),
    CityscapesLabel("bus", 28, 15, (0, 60, 100)),
    CityscapesLabel("train", 31, 16, (0, 80, 100)),
    CityscapesLabel("motorcycle", 32, 17, (0, 0, 230)),
    CityscapesLabel("bicycle", 33, 18, (119, 11, 32)),
)
CITYSCAPES_TRAIN_CLASSES: tuple[str, ...] = tuple(
    label.name
    for label in sorted(CITYSCAPES_LABELS, key=lambda lb: lb.train_id)
    if label.train_id != 255
)
_CS = {label.name: label for label in CITYSCAPES_LABELS}

# --------------------------------------------------------------------------------------------
# What decides a class: shape and stripe orientation
# --------------------------------------------------------------------------------------------

SHAPES: tuple[str, ...] = ("disk", "square", "triangle", "cross", "ring")
STRIPE_ANGLES: tuple[int, ...] = (0, 45, 90, 135)
MAX_SYNTHETIC_CLASSES = len(SHAPES) * len(STRIPE_ANGLES)

# Stream codes keep the random streams of different kinds and purposes apart.
_KIND_CODE = {"voc2007": 1, "voc2012": 2, "cityscapes": 3, "imagefolder": 4, "unlabeled": 5}
_SPLIT_STREAM = 1_000_000_007


def class_appearance(label: int) -> tuple[str, int]:
    """The (shape, stripe angle in degrees) that class ``label`` is drawn with."""
    if not 0 <= label < MAX_SYNTHETIC_CLASSES:
        raise ValueError(
            f"class index {label} is outside 0..{MAX_SYNTHETIC_CLASSES - 1}; the generator has "
            f"{len(SHAPES)} shapes x {len(STRIPE_ANGLES)} stripe angles = "
            f"{MAX_SYNTHETIC_CLASSES} distinct classes"
        )
    return SHAPES[label % len(SHAPES)], STRIPE_ANGLES[label % len(STRIPE_ANGLES)]


def shape_mask(
    shape: str, height: int, width: int, cx: float, cy: float, rx: float, ry: float
) -> np.ndarray:
    """Boolean ``(height, width)`` mask of ``shape`` centred at (cx, cy) with half-extents
    (rx, ry) in pixels; pixel (r, c) is inside when its centre (c + 0.5, r + 0.5) is."""
    ys, xs = np.ogrid[:height, :width]
    u = (xs + 0.5 - cx) / rx
    v = (ys + 0.5 - cy) / ry
    if shape == "disk":
        return u * u + v * v <= 1.0
    if shape == "square":
        return (np.abs(u) <= 0.85) & (np.abs(v) <= 0.85)
    if shape == "triangle":  # apex up, base down
        return (v >= -0.9) & (v <= 0.8) & (np.abs(u) <= (v + 0.9) / 1.7)
    if shape == "cross":
        return ((np.abs(u) <= 0.3) & (np.abs(v) <= 0.95)) | (
            (np.abs(v) <= 0.3) & (np.abs(u) <= 0.95)
        )
    if shape == "ring":
        radius2 = u * u + v * v
        return (radius2 <= 1.0) & (radius2 >= 0.55**2)
    raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")


# --------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------


def _stripes(height: int, width: int, angle_deg: float, period: float, phase: float) -> np.ndarray:
    """Boolean square-wave stripes; the stripes run along ``angle_deg``."""
    ys, xs = np.ogrid[:height, :width]
    theta = math.radians(angle_deg + 90.0)  # the wave travels across the stripe direction
    wave = xs * math.cos(theta) + ys * math.sin(theta)
    return np.sin(2.0 * math.pi * wave / period + phase) >= 0.0


def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A smooth random colour field with pixel noise: structure, but no object-like edges."""
    base = rng.uniform(40, 215, size=3)
    ys, xs = np.ogrid[:height, :width]
    field = np.broadcast_to(base, (height, width, 3)).astype(np.float32).copy()
    size = max(height, width)
    for _ in range(3):
        # at most 1.5 cycles over the image: far slower than any object stripe
        fx, fy = rng.uniform(-1.5, 1.5, size=2) / size
        wave = np.sin(2 * math.pi * (fx * xs + fy * ys) + rng.uniform(0, 2 * math.pi))
        field += wave[..., None] * rng.uniform(-35, 35, size=3).astype(np.float32)
    field += rng.normal(0.0, 10.0, size=(height, width, 3)).astype(np.float32)
    return field


def _contrasting_colour(rng: np.random.Generator, avoid: np.ndarray) -> np.ndarray:
    colour = rng.uniform(0, 255, size=3)
    for _ in range(20):
        if np.linalg.norm(colour - avoid) > 90:
            break
        colour = rng.uniform(0, 255, size=3)
    return colour


def _paint_striped(
    rng: np.random.Generator,
    image: np.ndarray,
    mask: np.ndarray,
    angle: float,
    colour: np.ndarray,
    period_range: tuple[float, float] = (4.0, 7.0),
    contrast: float = 0.6,
) -> None:
    """Fill ``mask`` with ``colour`` striped at ``angle`` (random period and phase)."""
    height, width = mask.shape
    stripes = _stripes(height, width, angle, rng.uniform(*period_range), rng.uniform(0, 2 * np.pi))
    # the second stripe colour moves towards black or white, whichever is further away
    other = colour * (1 - contrast) if colour.mean() > 110 else colour + (255 - colour) * contrast
    texture = np.where(stripes[..., None], colour, other)
    image[mask] = texture[mask] + rng.normal(0.0, 6.0, size=(int(mask.sum()), 3))


def _to_uint8(image: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def _dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    """Binary dilation by a (2r+1)^2 square."""
    if radius <= 0:
        return mask.copy()
    height, width = mask.shape
    padded = np.pad(mask, radius)
    out = np.zeros_like(mask)
    for dy in range(2 * radius + 1):
        for dx in range(2 * radius + 1):
            out |= padded[dy : dy + height, dx : dx + width]
    return out


def _bbox(mask: np.ndarray) -> tuple[int, int, int, int]:
    """0-based inclusive (x_min, y_min, x_max, y_max) of the True pixels."""
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    return int(cols[0]), int(rows[0]), int(cols[-1]), int(rows[-1])


def _single_object_image(rng: np.random.Generator, size: int, label: int) -> np.ndarray:
    """A ``size`` x ``size`` RGB image with one object of class ``label`` on a background."""
    shape, angle = class_appearance(label)
    image = _background(rng, size, size)
    radius = rng.uniform(0.22, 0.4) * size
    rx, ry = radius * rng.uniform(0.85, 1.15), radius * rng.uniform(0.85, 1.15)
    cx = rng.uniform(rx, size - rx)
    cy = rng.uniform(ry, size - ry)
    mask = shape_mask(shape, size, size, cx, cy, rx, ry)
    colour = _contrasting_colour(rng, image.mean(axis=(0, 1)))
    _paint_striped(rng, image, mask, angle, colour)
    return _to_uint8(image)


# --------------------------------------------------------------------------------------------
# Staging and argument checks
# --------------------------------------------------------------------------------------------


def _check_count(name: str, value: int, minimum: int, why: str = "") -> None:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}{why}, got {value!r}")


def _rng(seed: int, kind: str, stream: int, index: int = 0) -> np.random.Generator:
    return np.random.default_rng([seed, _KIND_CODE[kind], stream, index])


def _write_lines(path: Path, lines: Sequence[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{line}\n" for line in lines))


def _save_jpeg(path: Path, image: np.ndarray) -> None:
    Image.fromarray(image).save(path, format="JPEG", quality=92)


def _save_palette_png(path: Path, labels: np.ndarray, palette: np.ndarray) -> None:
    png = Image.frombytes(
        "P", (labels.shape[1], labels.shape[0]), labels.astype(np.uint8).tobytes()
    )
    png.putpalette(palette.reshape(-1).tolist())
    png.save(path, format="PNG")


def _save_gray_png(path: Path, labels: np.ndarray) -> None:
    Image.fromarray(labels.astype(np.uint8)).save(path, format="PNG")


# --------------------------------------------------------------------------------------------
# ImageFolder and flat folder (classification, pretext)
# --------------------------------------------------------------------------------------------


def imagefolder_class_name(label: int) -> str:
    """Folder name of class ``label``; zero-padded so ImageFolder's sorted order is ``label``."""
    shape, angle = class_appearance(label)
    return f"{label:02d}_{shape}_{angle:03d}"


def write_imagefolder(
    root: str | os.PathLike[str],
    n: int,
    *,
    num_classes: int = 5,
    seed: int = 0,
    size: int = 96,
    split_fractions: tuple[float, float, float] = (0.6, 0.2, 0.2),
) -> dict[str, Any]:
    """Write a labeled set as ``root/{train,val,test}/<class>/<class>_<index>.jpg``.

    ``n`` images in total are split by ``split_fractions`` (train, val, test); within a split
    the classes take turns, so every split is balanced to within one image per class. Each
    split is a torchvision ``ImageFolder``; class ``k``'s folder is
    ``imagefolder_class_name(k)``, sorting to index ``k``.
    """
    _check_count("num_classes", num_classes, 2)
    if num_classes > MAX_SYNTHETIC_CLASSES:
        raise ValueError(
            f"num_classes={num_classes} exceeds the {MAX_SYNTHETIC_CLASSES} distinct "
            "shape/stripe classes the generator can draw"
        )
    _check_count("size", size, 16)
    if len(split_fractions) != 3 or min(split_fractions) <= 0 or sum(split_fractions) <= 0:
        raise ValueError(f"split_fractions must be three positive numbers, got {split_fractions}")
    _check_count("n", n, 3 * num_classes, " (every split needs at least one image per class)")
    total = float(sum(split_fractions))
    n_val = round(n * split_fractions[1] / total)
    n_test = round(n * split_fractions[2] / total)
    n_train = n - n_val - n_test
    sizes = {"train": n_train, "val": n_val, "test": n_test}
    for split, count in sizes.items():
        if count < num_classes:
            raise ValueError(
                f"n={n} gives the {split} split only {count} images for {num_classes} classes; "
                "raise n or change split_fractions"
            )
    root = Path(root)
    counts: dict[str, dict[str, int]] = {}
    with staged_directory(root) as staging:
        index = 0
        for split, count in sizes.items():
            counts[split] = {}
            for label in range(num_classes):
                (staging / split / imagefolder_class_name(label)).mkdir(parents=True)
            for position in range(count):
                label = position % num_classes
                name = imagefolder_class_name(label)
                image = _single_object_image(_rng(seed, "imagefolder", 0, index), size, label)
                _save_jpeg(staging / split / name / f"{name}_{index:06d}.jpg", image)
                counts[split][name] = counts[split].get(name, 0) + 1
                index += 1
    return {
        "kind": "imagefolder",
        "root": str(root),
        "seed": seed,
        "size": size,
        "classes": [imagefolder_class_name(k) for k in range(num_classes)],
        "counts": counts,
    }


def write_unlabeled(
    root: str | os.PathLike[str], n: int, *, seed: int = 0, size: int = 96, num_classes: int = 5
) -> dict[str, Any]:
    """Write ``n`` unlabeled JPEGs ``root/img_<index>.jpg`` (a flat folder, for pretext training).

    The images are drawn like :func:`write_imagefolder`'s (objects of ``num_classes`` classes,
    taking turns), so that a pretext model trained on them has structure to find; the labels
    are not written anywhere.
    """
    _check_count("n", n, 1)
    _check_count("size", size, 16)
    _check_count("num_classes", num_classes, 1)
    if num_classes > MAX_SYNTHETIC_CLASSES:
        raise ValueError(f"num_classes={num_classes} exceeds {MAX_SYNTHETIC_CLASSES}")
    root = Path(root)
    with staged_directory(root) as staging:
        for index in range(n):
            image = _single_object_image(
                _rng(seed, "unlabeled", 0, index), size, index % num_classes
            )
            _save_jpeg(staging / f"img_{index:06d}.jpg", image)
    return {
        "kind": "unlabeled",
        "root": str(root),
        "seed": seed,
        "size": size,
        "counts": {"images": n},
    }


# --------------------------------------------------------------------------------------------
# PASCAL VOC 2007 / 2012 with the VOC-aug (SBD) files
# --------------------------------------------------------------------------------------------


def _voc_scene(
    rng: np.random.Generator,
    size: int,
    class_names: Sequence[str],
    max_objects: int,
    difficult_prob: float,
    border: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[dict[str, Any]]]:
    """Render one VOC image: RGB, class map, instance map and the objects' annotations."""
    short = int(round(size * rng.uniform(0.7, 1.0)))
    width, height = (size, short) if rng.random() < 0.7 else (short, size)
    image = _background(rng, height, width)
    class_map = np.zeros((height, width), dtype=np.uint8)
    instance_map = np.zeros((height, width), dtype=np.uint8)
    occupied = np.zeros((height, width), dtype=bool)  # objects grown by the border + 1 px gap
    objects: list[dict[str, Any]] = []
    wanted = int(rng.integers(1, max_objects + 1))
    for _ in range(wanted * 30):
        if len(objects) == wanted:
            break
        label = int(rng.integers(len(class_names)))
        shape, angle = class_appearance(label)
        radius = rng.uniform(0.08, 0.28) * min(width, height)
        rx, ry = radius * rng.uniform(0.8, 1.25), radius * rng.uniform(0.8, 1.25)
        # one object in ten reaches over the image edge: VOC's "truncated"
        slack = 0.5 if rng.random() < 0.1 else 1.0
        cx = rng.uniform(rx * slack, width - rx * slack)
        cy = rng.uniform(ry * slack, height - ry * slack)
        mask = shape_mask(shape, height, width, cx, cy, rx, ry)
        if mask.sum() < 24 or (_dilate(mask, border + 1) & occupied).any():
            continue
        x0, y0, x1, y1 = _bbox(mask)
        touches_edge = x0 == 0 or y0 == 0 or x1 == width - 1 or y1 == height - 1
        colour = _contrasting_colour(rng, image[mask].mean(axis=0))
        _paint_striped(rng, image, mask, angle, colour)
        occupied |= _dilate(mask, 2 * border + 1)
        class_map[mask] = VOC_CLASSES.index(class_names[label]) + 1
        instance_map[mask] = len(objects) + 1
        objects.append(
            {
                "name": class_names[label],
                # VOC boxes are 1-based and inclusive
                "bbox": [x0 + 1, y0 + 1, x1 + 1, y1 + 1],
                "difficult": int(rng.random() < difficult_prob),
                "truncated": int(touches_edge),
            }
        )
    # VOC marks a band around every object as "void" (255): here a band of `border` pixels
    # outside each object, so an object's labelled pixels are exactly its shape.
    if border > 0:
        band = _dilate(instance_map > 0, border) & (instance_map == 0)
        class_map[band] = VOC_IGNORE
        instance_map[band] = VOC_IGNORE
    return _to_uint8(image), class_map, instance_map, objects


def _voc_xml(
    year: str,
    image_id: str,
    width: int,
    height: int,
    segmented: bool,
    objects: Sequence[dict[str, Any]],
) -> bytes:
    annotation = ET.Element("annotation")
    ET.SubElement(annotation, "folder").text = f"VOC{year}"
    ET.SubElement(annotation, "filename").text = f"{image_id}.jpg"
    source = ET.SubElement(annotation, "source")
    ET.SubElement(source, "database").text = "bissl_dense synthetic VOC"
    ET.SubElement(source, "annotation").text = f"PASCAL VOC{year} layout"
    ET.SubElement(source, "image").text = "generated"
    size = ET.SubElement(annotation, "size")
    ET.SubElement(size, "width").text = str(width)
    ET.SubElement(size, "height").text = str(height)
    ET.SubElement(size, "depth").text = "3"
    ET.SubElement(annotation, "segmented").text = str(int(segmented))
    for obj in objects:
        node = ET.SubElement(annotation, "object")
        ET.SubElement(node, "name").text = obj["name"]
        ET.SubElement(node, "pose").text = "Unspecified"
        ET.SubElement(node, "truncated").text = str(obj["truncated"])
        ET.SubElement(node, "difficult").text = str(obj["difficult"])
        box = ET.SubElement(node, "bndbox")
        for key, value in zip(("xmin", "ymin", "xmax", "ymax"), obj["bbox"], strict=True):
            ET.SubElement(box, key).text = str(value)
    ET.indent(annotation, space="\t")
    return ET.tostring(annotation, encoding="utf-8") + b"\n"


def _voc_presence(record: dict[str, Any], cls: str) -> int:
    """The flag of the per-class ``ImageSets/Main`` lists: 1 if the image has a ``cls`` object
    that is not difficult, 0 if it has only difficult ones, -1 if it has none."""
    difficult = [obj["difficult"] for obj in record["objects"] if obj["name"] == cls]
    if not difficult:
        return -1
    return 0 if all(difficult) else 1


def _split_ids(
    rng: np.random.Generator, ids: Sequence[str], fractions: Sequence[float]
) -> list[list[str]]:
    """Shuffle ``ids`` and cut them into consecutive parts of the given fractions."""
    order = [ids[i] for i in rng.permutation(len(ids))]
    parts, start = [], 0
    for k, fraction in enumerate(fractions):
        stop = len(order) if k == len(fractions) - 1 else start + round(fraction * len(order))
        parts.append(order[start:stop])
        start = stop
    return parts


def write_voc(
    root: str | os.PathLike[str],
    n: int,
    *,
    seed: int = 0,
    size: int = 160,
    num_classes: int = len(VOC_CLASSES),
    max_objects: int = 3,
    seg_fraction: float = 0.5,
    sbd_fraction: float = 0.7,
    difficult_prob: float = 0.05,
    border: int = 2,
) -> dict[str, Any]:
    """Write ``root/VOCdevkit/VOC2007`` and ``root/VOCdevkit/VOC2012``, ``n`` images each.

    Per year: ``JPEGImages/<id>.jpg``, ``Annotations/<id>.xml`` (VOC XML, 1-based inclusive
    boxes), ``ImageSets/Main/{train,val,trainval[,test]}.txt`` and ``<class>_<split>.txt``
    (1 / 0 = only difficult / -1); for the "segmented" ``seg_fraction`` of each split
    ``SegmentationClass`` and ``SegmentationObject`` palette PNGs (VOC colour map, 255 border)
    and ``ImageSets/Segmentation`` lists. VOC2007 has a test split (half the images), VOC2012
    does not. VOC2012 also gets what mmseg's ``tools/dataset_converters/voc_aug.py`` leaves
    behind from SBD: ``SegmentationClassAug/<id>.png`` (single channel, class ids, 255 border)
    for the SBD images, ``ImageSets/Segmentation/aug.txt`` (SBD minus VOC seg train and val)
    and ``trainaug.txt`` (VOC seg train plus SBD, minus VOC seg val). Here SBD covers every
    unsegmented VOC2012 image and ``sbd_fraction`` of the segmented ones.

    Objects use the first ``num_classes`` VOC class names; image ``i``'s long side is ``size``.
    """
    _check_count("n", n, 4, " (train, val and test each need an image)")
    _check_count("size", size, 32)
    _check_count("num_classes", num_classes, 1)
    _check_count("max_objects", max_objects, 1)
    _check_count("border", border, 0)
    if num_classes > len(VOC_CLASSES):
        raise ValueError(f"num_classes={num_classes} exceeds the {len(VOC_CLASSES)} VOC classes")
    for name, value in (
        ("seg_fraction", seg_fraction),
        ("sbd_fraction", sbd_fraction),
        ("difficult_prob", difficult_prob),
    ):
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"{name} must lie in [0, 1], got {value}")
    class_names = VOC_CLASSES[:num_classes]
    palette = voc_colormap()
    root = Path(root)
    images: dict[str, dict[str, Any]] = {}
    counts: dict[str, dict[str, int]] = {}

    with staged_directory(root) as staging:
        for year in ("2007", "2012"):
            kind = f"voc{year}"
            base = staging / "VOCdevkit" / f"VOC{year}"
            for sub in ("JPEGImages", "Annotations", "SegmentationClass", "SegmentationObject"):
                (base / sub).mkdir(parents=True)
            ids = [f"{i + 1:06d}" if year == "2007" else f"{year}_{i + 1:06d}" for i in range(n)]
            split_rng = _rng(seed, kind, _SPLIT_STREAM)
            if year == "2007":  # as the real VOC2007: half test, trainval halved into train/val
                test, train, val = _split_ids(split_rng, ids, (0.5, 0.25, 0.25))
                main = {"train": train, "val": val, "trainval": train + val, "test": test}
            else:
                train, val = _split_ids(split_rng, ids, (0.5, 0.5))
                main = {"train": train, "val": val, "trainval": train + val}
            seg = {
                split: main[split][: math.ceil(seg_fraction * len(main[split]))]
                for split in main
                if split != "trainval"
            }
            seg["trainval"] = seg["train"] + seg["val"]
            segmented = set(seg["trainval"]) | set(seg.get("test", []))
            sbd: set[str] = set()
            if year == "2012":
                unsegmented = [i for i in ids if i not in segmented]
                chosen = split_rng.permutation(sorted(segmented))
                sbd = set(unsegmented) | set(chosen[: round(sbd_fraction * len(chosen))].tolist())
                (base / "SegmentationClassAug").mkdir()

            n_objects = 0
            for index, image_id in enumerate(ids):
                rgb, class_map, instance_map, objects = _voc_scene(
                    _rng(seed, kind, 0, index),
                    size,
                    class_names,
                    max_objects,
                    difficult_prob,
                    border,
                )
                height, width = class_map.shape
                is_segmented = image_id in segmented
                _save_jpeg(base / "JPEGImages" / f"{image_id}.jpg", rgb)
                (base / "Annotations" / f"{image_id}.xml").write_bytes(
                    _voc_xml(year, image_id, width, height, is_segmented, objects)
                )
                if is_segmented:
                    _save_palette_png(
                        base / "SegmentationClass" / f"{image_id}.png", class_map, palette
                    )
                    _save_palette_png(
                        base / "SegmentationObject" / f"{image_id}.png", instance_map, palette
                    )
                if image_id in sbd:
                    _save_gray_png(base / "SegmentationClassAug" / f"{image_id}.png", class_map)
                images[f"VOC{year}/{image_id}"] = {
                    "width": width,
                    "height": height,
                    "segmented": is_segmented,
                    "objects": objects,
                }
                n_objects += len(objects)

            main_dir = base / "ImageSets" / "Main"
            for split, split_ids in main.items():
                _write_lines(main_dir / f"{split}.txt", sorted(split_ids))
                for cls in VOC_CLASSES:
                    _write_lines(
                        main_dir / f"{cls}_{split}.txt",
                        [
                            f"{image_id} {_voc_presence(images[f'VOC{year}/{image_id}'], cls):2d}"
                            for image_id in sorted(split_ids)
                        ],
                    )
            seg_dir = base / "ImageSets" / "Segmentation"
            for split, split_ids in seg.items():
                _write_lines(seg_dir / f"{split}.txt", sorted(split_ids))
            counts[f"VOC{year}"] = {
                "images": n,
                "objects": n_objects,
                **{f"Main/{split}": len(v) for split, v in main.items()},
                **{f"Segmentation/{split}": len(v) for split, v in seg.items()},
            }
            if year == "2012":
                # the lists voc_aug.py derives (there with set differences, here sorted)
                aug = sorted(sbd - set(seg["train"]) - set(seg["val"]))
                trainaug = sorted((set(seg["train"]) | sbd) - set(seg["val"]))
                _write_lines(seg_dir / "aug.txt", aug)
                _write_lines(seg_dir / "trainaug.txt", trainaug)
                counts["VOC2012"].update(
                    {
                        "SegmentationClassAug": len(sbd),
                        "Segmentation/aug": len(aug),
                        "Segmentation/trainaug": len(trainaug),
                    }
                )
    return {
        "kind": "voc",
        "root": str(root),
        "seed": seed,
        "size": size,
        "classes": list(class_names),
        "counts": counts,
        "images": images,
    }


# --------------------------------------------------------------------------------------------
# Cityscapes (fine annotations)
# --------------------------------------------------------------------------------------------

# How each labelId is drawn: base colour, stripe angle (None = plain), stripe period, noise.
# Colour and texture together make every class recognisable from a small neighbourhood.
_CS_LOOK: dict[str, tuple[tuple[int, int, int], int | None, float, float]] = {
    "ego vehicle": ((30, 30, 35), None, 0.0, 3.0),
    "static": ((120, 90, 150), 45, 3.0, 8.0),
    "ground": ((110, 80, 60), None, 0.0, 14.0),
    "road": ((105, 95, 110), None, 0.0, 7.0),
    "sidewalk": ((175, 150, 160), 0, 7.0, 6.0),
    "building": ((125, 100, 80), 90, 9.0, 6.0),
    "wall": ((150, 150, 175), 0, 4.0, 5.0),
    "fence": ((165, 130, 95), 90, 3.0, 5.0),
    "pole": ((85, 85, 90), None, 0.0, 4.0),
    "traffic light": ((35, 35, 30), None, 0.0, 4.0),
    "traffic sign": ((230, 215, 30), None, 0.0, 4.0),
    "vegetation": ((65, 120, 40), None, 0.0, 28.0),
    "terrain": ((150, 190, 105), None, 0.0, 14.0),
    "sky": ((140, 180, 230), None, 0.0, 3.0),
    "person": ((200, 60, 75), 45, 4.0, 6.0),
    "rider": ((230, 105, 40), 135, 4.0, 6.0),
    "car": ((40, 60, 165), 0, 5.0, 6.0),
    "truck": ((65, 65, 105), 90, 6.0, 6.0),
    "bus": ((30, 115, 135), 0, 9.0, 6.0),
    "train": ((55, 125, 115), 45, 8.0, 6.0),
    "motorcycle": ((70, 70, 235), 135, 6.0, 6.0),
    "bicycle": ((145, 30, 60), 45, 3.0, 6.0),
}


class _Canvas:
    """An RGB image and its labelId map, painted region by region."""

    def __init__(self, rng: np.random.Generator, width: int, height: int) -> None:
        self.rng = rng
        self.width, self.height = width, height
        self.image = np.zeros((height, width, 3), dtype=np.float32)
        self.label_ids = np.zeros((height, width), dtype=np.uint8)  # 0 = unlabeled
        self.ys, self.xs = np.ogrid[:height, :width]

    def paint(self, mask: np.ndarray, name: str) -> None:
        if not mask.any():
            return
        colour, angle, period, noise = _CS_LOOK[name]
        rgb = np.asarray(colour, dtype=np.float32) + self.rng.uniform(-18, 18, size=3)
        values = np.broadcast_to(rgb, (int(mask.sum()), 3)).copy()
        if angle is not None:
            stripes = _stripes(self.height, self.width, angle, period, self.rng.uniform(0, 6.3))
            values[stripes[mask]] *= 0.6
        values += self.rng.normal(0.0, noise, size=values.shape)
        self.image[mask] = values
        self.label_ids[mask] = _CS[name].label_id

    def rect(self, x0: float, y0: float, x1: float, y1: float) -> np.ndarray:
        return (self.xs >= x0) & (self.xs < x1) & (self.ys >= y0) & (self.ys < y1)

    def ellipse(self, cx: float, cy: float, rx: float, ry: float) -> np.ndarray:
        return ((self.xs + 0.5 - cx) / rx) ** 2 + ((self.ys + 0.5 - cy) / ry) ** 2 <= 1.0


def _cityscapes_scene(rng: np.random.Generator, width: int, height: int) -> _Canvas:
    """A street: sky, buildings, vegetation, road in perspective, sidewalks, poles with lights
    and signs, vehicles on the road, people and riders on the pavement, ignore regions."""
    c = _Canvas(rng, width, height)
    W, H = float(width), float(height)
    horizon = rng.uniform(0.38, 0.5) * H
    everywhere = np.ones((height, width), dtype=bool)
    c.paint(everywhere & (c.ys < horizon), "sky")
    x = 0.0
    while x < W:  # a row of buildings, some of them low walls
        block = rng.uniform(0.08, 0.25) * W
        is_wall = rng.random() < 0.2
        top = horizon - (rng.uniform(0.04, 0.1) if is_wall else rng.uniform(0.12, 0.35)) * H
        c.paint(c.rect(x, top, x + block, horizon + 1), "wall" if is_wall else "building")
        x += block
    for _ in range(int(rng.integers(1, 4))):
        c.paint(
            c.ellipse(
                rng.uniform(0, W),
                horizon - rng.uniform(0.0, 0.1) * H,
                rng.uniform(0.05, 0.12) * W,
                rng.uniform(0.08, 0.2) * H,
            ),
            "vegetation",
        )
    if rng.random() < 0.5:
        x0 = rng.uniform(0, 0.6) * W
        c.paint(c.rect(x0, horizon - 0.07 * H, x0 + rng.uniform(0.15, 0.4) * W, horizon), "fence")

    # ground: road in perspective towards a vanishing point, sidewalks, terrain at the sides
    vanish = rng.uniform(0.4, 0.6) * W
    depth = np.clip((c.ys + 0.5 - horizon) / (H - horizon), 0.0, None)
    road_half = depth * rng.uniform(0.45, 0.75) * W + 1.0
    walk_half = road_half * rng.uniform(1.4, 1.8)
    below = everywhere & (c.ys >= horizon)
    offset = np.abs(c.xs + 0.5 - vanish)
    c.paint(below & (offset > walk_half), "terrain" if rng.random() < 0.6 else "sidewalk")
    c.paint(below & (offset > road_half) & (offset <= walk_half), "sidewalk")
    c.paint(below & (offset <= road_half), "road")
    if rng.random() < 0.3:
        c.paint(c.ellipse(rng.uniform(0, W), rng.uniform(horizon, H), 0.06 * W, 0.05 * H), "ground")

    def ground_row(at_least: float) -> float:
        return rng.uniform(max(horizon + at_least * (H - horizon), horizon + 2), 0.97 * H)

    # things, painted far (small) to near (large)
    things: list[tuple[float, str]] = []
    for _ in range(int(rng.integers(1, 4))):
        things.append(
            (ground_row(0.25), str(rng.choice(["car", "car", "car", "truck", "bus", "train"])))
        )
    for _ in range(int(rng.integers(0, 4))):
        things.append((ground_row(0.15), str(rng.choice(["person", "person", "rider"]))))
    for _ in range(int(rng.integers(0, 3))):
        things.append((ground_row(0.1), "pole"))
    for bottom, kind in sorted(things):
        scale = (bottom - horizon) / (H - horizon)  # 0 at the horizon, 1 at the bottom row
        road_edge = float(road_half[min(int(bottom), height - 1), 0])  # road half-width there
        if kind in ("car", "truck", "bus", "train"):
            h = scale * H * {"car": 0.35, "truck": 0.5, "bus": 0.55, "train": 0.6}[kind]
            w = h * {"car": 1.8, "truck": 1.5, "bus": 2.2, "train": 3.0}[kind]
            cx = vanish + rng.uniform(-0.8, 0.8) * road_edge
            body = c.rect(cx - w / 2, bottom - 0.6 * h, cx + w / 2, bottom)
            cabin = c.rect(cx - 0.3 * w, bottom - h, cx + 0.3 * w, bottom - 0.55 * h)
            c.paint(
                body | cabin
                if kind == "car"
                else c.rect(cx - w / 2, bottom - h, cx + w / 2, bottom),
                kind,
            )
        elif kind in ("person", "rider"):
            h = scale * H * 0.45 + 4
            side = 1 if rng.random() < 0.5 else -1
            cx = vanish + side * road_edge * rng.uniform(1.1, 1.5)
            if kind == "rider":
                vehicle = "bicycle" if rng.random() < 0.6 else "motorcycle"
                wheel = max(h * 0.18, 1.5)
                wheels = c.ellipse(cx - 1.6 * wheel, bottom - wheel, wheel, wheel) | c.ellipse(
                    cx + 1.6 * wheel, bottom - wheel, wheel, wheel
                )
                frame = c.rect(
                    cx - 1.6 * wheel, bottom - 1.8 * wheel, cx + 1.6 * wheel, bottom - 1.2 * wheel
                )
                c.paint(wheels | frame, vehicle)
                bottom -= 1.6 * wheel
                h *= 0.75
            body = c.ellipse(cx, bottom - 0.4 * h, max(0.14 * h, 1.2), 0.4 * h)
            head = c.ellipse(cx, bottom - 0.88 * h, max(0.1 * h, 1.0), max(0.1 * h, 1.0))
            c.paint(body | head, kind)
        else:  # a pole with a traffic light or a sign on top
            side = 1 if rng.random() < 0.5 else -1
            cx = vanish + side * road_edge * rng.uniform(1.05, 1.4)
            top = rng.uniform(0.05, 0.3) * H
            half = max(scale * 2.0, 1.0)
            c.paint(c.rect(cx - half, top, cx + half, bottom), "pole")
            if rng.random() < 0.5:
                c.paint(
                    c.rect(cx - 2.5 * half, top - 6 * half, cx + 2.5 * half, top + 2 * half),
                    "traffic light",
                )
            else:
                c.paint(c.ellipse(cx, top, 4 * half, 4 * half), "traffic sign")
    if rng.random() < 0.3:
        c.paint(c.rect(rng.uniform(0, 0.8) * W, horizon - 0.1 * H, 1e9, horizon), "static")
    if rng.random() < 0.5:  # the car's bonnet at the bottom, as in most Cityscapes frames
        hood = c.ellipse(W / 2, H * 1.05, 0.7 * W, rng.uniform(0.08, 0.14) * H)
        c.paint(hood, "ego vehicle")
    c.image += rng.normal(0.0, 4.0, size=c.image.shape).astype(np.float32)
    return c


_TRAIN_CITIES = ("aachen", "bochum", "bremen", "cologne", "darmstadt", "dusseldorf", "erfurt")
_VAL_CITIES = ("frankfurt", "lindau", "munster")


def write_cityscapes(
    root: str | os.PathLike[str],
    n: int,
    *,
    seed: int = 0,
    size: tuple[int, int] = (256, 128),
    n_val: int | None = None,
    num_cities: int = 3,
) -> dict[str, Any]:
    """Write a Cityscapes tree under ``root``: ``n`` images, ``n_val`` of them (default a
    quarter, at least 1) in ``val``; ``size`` is (width, height).

    ``leftImg8bit/<split>/<city>/<city>_<seq:06d>_000019_leftImg8bit.png`` with
    ``gtFine/<split>/<city>/<city>_<seq:06d>_000019_gtFine_{labelIds,labelTrainIds,color}.png``
    (labelIds: Cityscapes ids; labelTrainIds: 0..18, 255 = ignore, as cityscapesscripts'
    ``createTrainIdLabelImgs`` writes them; color: RGBA in the Cityscapes palette). Train and
    val cities are distinct; images take turns over ``num_cities`` cities per split.
    """
    if n_val is None:
        n_val = max(1, n // 4)
    _check_count("n", n, 2, " (train and val each need an image)")
    _check_count("n_val", n_val, 1)
    if n_val >= n:
        raise ValueError(f"n_val={n_val} leaves no training image out of n={n}")
    width, height = size
    _check_count("size[0] (width)", width, 32)
    _check_count("size[1] (height)", height, 16)
    _check_count("num_cities", num_cities, 1)
    if num_cities > min(len(_TRAIN_CITIES), len(_VAL_CITIES)):
        raise ValueError(f"num_cities must be at most {len(_VAL_CITIES)}, got {num_cities}")
    to_train_id = np.full(256, 255, dtype=np.uint8)
    to_colour = np.zeros((256, 4), dtype=np.uint8)
    for label in CITYSCAPES_LABELS:
        to_train_id[label.label_id] = label.train_id
        to_colour[label.label_id] = (*label.color, 255)
    root = Path(root)
    splits = {
        "train": (n - n_val, _TRAIN_CITIES[:num_cities]),
        "val": (n_val, _VAL_CITIES[:num_cities]),
    }
    counts: dict[str, int] = {}
    pixel_counts: dict[str, list[int]] = {}
    with staged_directory(root) as staging:
        index = 0
        for split, (count, cities) in splits.items():
            histogram = np.zeros(256, dtype=np.int64)
            for position in range(count):
                city = cities[position % len(cities)]
                stem = f"{city}_{position // len(cities):06d}_000019"
                scene = _cityscapes_scene(_rng(seed, "cityscapes", 0, index), width, height)
                image_dir = staging / "leftImg8bit" / split / city
                label_dir = staging / "gtFine" / split / city
                image_dir.mkdir(parents=True, exist_ok=True)
                label_dir.mkdir(parents=True, exist_ok=True)
                Image.fromarray(_to_uint8(scene.image)).save(image_dir / f"{stem}_leftImg8bit.png")
                train_ids = to_train_id[scene.label_ids]
                _save_gray_png(label_dir / f"{stem}_gtFine_labelIds.png", scene.label_ids)
                _save_gray_png(label_dir / f"{stem}_gtFine_labelTrainIds.png", train_ids)
                Image.fromarray(to_colour[scene.label_ids]).save(
                    label_dir / f"{stem}_gtFine_color.png"
                )
                histogram += np.bincount(train_ids.ravel(), minlength=256)
                index += 1
            counts[split] = count
            pixel_counts[split] = [int(v) for v in histogram[:19]] + [int(histogram[255])]
    return {
        "kind": "cityscapes",
        "root": str(root),
        "seed": seed,
        "size": [width, height],
        "cities": {
            split: list(cities[: min(len(cities), count)])
            for split, (count, cities) in splits.items()
        },
        "counts": counts,
        # pixels per trainId 0..18, then the ignored (255) pixels
        "pixel_counts": pixel_counts,
    }


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bissl_dense.datasets.synthetic",
        description="Write a generated data set in a real on-disk layout (see the module doc).",
    )
    parser.add_argument(
        "--out", required=True, type=Path, help="directory to create (must not exist or be empty)"
    )
    parser.add_argument(
        "--kind", required=True, choices=("voc", "cityscapes", "imagefolder", "unlabeled")
    )
    parser.add_argument(
        "--n",
        required=True,
        type=int,
        help="images in total (voc: per year; cityscapes: train + val)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--size",
        type=int,
        default=None,
        help="image side in px (voc: long side, default 160; cityscapes: width, "
        "height = width / 2, default 256; others: square, default 96)",
    )
    parser.add_argument(
        "--num-classes",
        type=int,
        default=None,
        help="classes drawn (voc default 20, imagefolder/unlabeled default 5)",
    )
    args = parser.parse_args(argv)
    if args.seed < 0:
        parser.error(f"--seed must be >= 0, got {args.seed}")
    extra: dict[str, Any] = {}
    if args.num_classes is not None:
        if args.kind == "cityscapes":
            parser.error("--num-classes does not apply to --kind cityscapes (19 fixed classes)")
        extra["num_classes"] = args.num_classes
    try:
        if args.kind == "voc":
            summary = write_voc(args.out, args.n, seed=args.seed, size=args.size or 160, **extra)
            summary.pop("images")
        elif args.kind == "cityscapes":
            width = args.size or 256
            summary = write_cityscapes(args.out, args.n, seed=args.seed, size=(width, width // 2))
        elif args.kind == "imagefolder":
            summary = write_imagefolder(
                args.out, args.n, seed=args.seed, size=args.size or 96, **extra
            )
        else:
            summary = write_unlabeled(
                args.out, args.n, seed=args.seed, size=args.size or 96, **extra
            )
    except (ValueError, FileExistsError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
