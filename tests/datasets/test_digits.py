"""scikit-learn's digits written as an ImageFolder (the demo's real data, issue 12)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sklearn.datasets import load_digits
from torchvision.datasets import ImageFolder

from bissl_dense.datasets.digits import DIGIT_CLASSES, write_digits


def test_layout_splits_and_pixels(tmp_path: Path) -> None:
    sizes = write_digits(tmp_path / "digits", size=8, limit=100)
    assert sum(sizes.values()) == 100
    labelled = tmp_path / "digits" / "labelled"
    digits = load_digits()
    seen: set[int] = set()
    for split in ("train", "val", "test"):
        folder = ImageFolder(str(labelled / split))
        assert folder.classes == list(DIGIT_CLASSES)
        assert len(folder) == sizes[split]
        for path, label in folder.samples:
            index = int(Path(path).stem.split("_")[1])
            assert digits.target[index] == label and index not in seen
            seen.add(index)
            pixels = np.asarray(Image.open(path))
            assert pixels.shape == (8, 8, 3)  # RGB, no resampling at the native size
            expected = np.round(digits.images[index] * 255 / 16).astype(np.uint8)
            assert np.array_equal(pixels[..., 0], expected)
            assert np.array_equal(pixels[..., 0], pixels[..., 2])
    assert seen == set(range(100))
    # the pretext images are the training split without labels
    unlabeled = sorted(p.name for p in (tmp_path / "digits" / "unlabeled").iterdir())
    assert len(unlabeled) == sizes["train"]


def test_stratified_and_upscaled(tmp_path: Path) -> None:
    sizes = write_digits(tmp_path / "d", size=32)
    per_class = np.bincount(load_digits().target)  # all 1,797; each class split 60/20/20
    for split in ("val", "test"):
        counts = [len(list((tmp_path / "d/labelled" / split / c).iterdir())) for c in DIGIT_CLASSES]
        assert counts == [round(n * 0.2) for n in per_class]
        assert sizes[split] == sum(counts)
    assert sum(sizes.values()) == 1797
    image = Image.open(next((tmp_path / "d/unlabeled").iterdir()))
    assert image.size == (32, 32) and image.mode == "RGB"


def test_refuses_existing_data_and_bad_sizes(tmp_path: Path) -> None:
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("x")
    with pytest.raises(FileExistsError, match="already exists and is not empty"):
        write_digits(tmp_path / "full", limit=40)
    with pytest.raises(ValueError, match="size must be >= 8"):
        write_digits(tmp_path / "a", size=4)
    with pytest.raises(ValueError, match="limit must be >= 30"):
        write_digits(tmp_path / "b", limit=10)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
