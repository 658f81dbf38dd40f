"""Real images that ship with a dependency: scikit-learn's handwritten digits as an ImageFolder.

``sklearn.datasets.load_digits`` holds 1,797 scans of handwritten digits (UCI "optdigits": 8×8
pixels, 17 grey levels, 10 classes), bundled inside scikit-learn, so no download is needed. The
demo (``bissl demo --data digits``) writes them at a size the small backbone takes:

- ``root/labelled/{train,val,test}/<digit>/<digit>_<index>.png``: a stratified split (60/20/20
  by default) in torchvision's ImageFolder layout, the layout ``ClassificationDataset`` reads
  with ``name="imagefolder"``;
- ``root/unlabeled/img_<index>.png``: the training split again without labels, the pretext
  images (the digits' own domain, as pretext data is for the paper's downstream sets).

Upscaling uses bilinear interpolation of the grey levels (0–16 mapped to 0–255); images are
stored as 3-channel PNGs (lossless) because the backbones take RGB input.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from bissl_dense.fileio import staged_directory

__all__ = ["DIGIT_CLASSES", "write_digits"]

#: Class folder names, sorting to the digit they show.
DIGIT_CLASSES = tuple(str(d) for d in range(10))


def _stratified_split(
    labels: np.ndarray, fractions: tuple[float, float, float], seed: int
) -> dict[str, np.ndarray]:
    """Indices of each split; every class is divided by ``fractions`` (train, val, test)."""
    rng = np.random.default_rng(seed)
    total = float(sum(fractions))
    parts: dict[str, list[np.ndarray]] = {"train": [], "val": [], "test": []}
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        n_val = round(len(members) * fractions[1] / total)
        n_test = round(len(members) * fractions[2] / total)
        n_train = len(members) - n_val - n_test
        parts["train"].append(members[:n_train])
        parts["val"].append(members[n_train : n_train + n_val])
        parts["test"].append(members[n_train + n_val :])
    return {split: np.sort(np.concatenate(chunks)) for split, chunks in parts.items()}


def _to_rgb(pixels: np.ndarray, size: int) -> Image.Image:
    grey = Image.fromarray(np.round(pixels * (255.0 / 16.0)).astype(np.uint8), mode="L")
    return grey.resize((size, size), Image.Resampling.BILINEAR).convert("RGB")


def write_digits(
    root: str | Path,
    *,
    size: int = 32,
    split_fractions: tuple[float, float, float] = (0.6, 0.2, 0.2),
    seed: int = 0,
    limit: int | None = None,
) -> dict[str, int]:
    """Write the digits under ``root`` (layout in the module docstring); return split sizes.

    ``limit`` keeps only the first ``limit`` digits of scikit-learn's order (for quick runs);
    by default all 1,797 are written. ``root`` must not exist yet (or be empty): the data are
    written into a staging directory and renamed, so a killed writer leaves no partial set.
    """
    from sklearn.datasets import load_digits

    if size < 8:
        raise ValueError(f"size must be >= 8 (the digits are 8×8 pixels), got {size}")
    if len(split_fractions) != 3 or min(split_fractions) <= 0:
        raise ValueError(f"split_fractions must be three positive numbers, got {split_fractions}")
    digits = load_digits()
    images, labels = digits.images, digits.target.astype(np.int64)
    if limit is not None:
        if limit < 30:
            raise ValueError(f"limit must be >= 30 (3 splits × 10 classes), got {limit}")
        images, labels = images[:limit], labels[:limit]
    splits = _stratified_split(labels, split_fractions, seed)
    for split, indices in splits.items():
        missing = set(range(10)) - set(labels[indices].tolist())
        if missing:
            raise ValueError(
                f"the {split} split has no image of digit(s) {sorted(missing)}; raise limit"
            )
    with staged_directory(root) as staging:
        for split, indices in splits.items():
            for index in indices:
                folder = staging / "labelled" / split / DIGIT_CLASSES[labels[index]]
                folder.mkdir(parents=True, exist_ok=True)
                _to_rgb(images[index], size).save(folder / f"{labels[index]}_{index:04d}.png")
        unlabeled = staging / "unlabeled"
        unlabeled.mkdir()
        for index in splits["train"]:
            _to_rgb(images[index], size).save(unlabeled / f"img_{index:04d}.png")
    return {split: len(indices) for split, indices in splits.items()}
