"""The registered ClassificationDataset over the benchmark loaders and over ImageFolder trees."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from bissl_dense.datasets.synthetic import write_imagefolder
from bissl_dense.errors import DataError
from classification.data import ClassificationDataset
from tests.classification._layouts import write_pets, write_voc2007


def test_benchmark_dataset_items_and_seeded_augmentation(tmp_path: Path) -> None:
    write_pets(tmp_path, size=40)
    train = ClassificationDataset("pets", str(tmp_path), "train", transform="train", image_size=16)
    test = ClassificationDataset("pets", str(tmp_path), "test", transform="eval", image_size=16)
    assert train.classes == test.classes and len(train.classes) == 3
    image, target = train[(0, 123)]
    assert image.shape == (3, 16, 16) and target.dtype == torch.long
    assert [int(test[i][1]) for i in range(len(test))] == test.targets


def test_multilabel_targets_are_float_vectors(tmp_path: Path) -> None:
    write_voc2007(tmp_path, size=24)
    data = ClassificationDataset("voc2007", str(tmp_path), "val", transform="eval", image_size=16)
    _, target = data[0]
    assert target.dtype == torch.float32 and target.shape == (20,)


def test_imagefolder_trainval_and_errors(tmp_path: Path) -> None:
    write_imagefolder(tmp_path / "f", 30, num_classes=3, size=20)
    train = ClassificationDataset("imagefolder", str(tmp_path / "f"), "train", image_size=16)
    val = ClassificationDataset("imagefolder", str(tmp_path / "f"), "val", image_size=16)
    both = ClassificationDataset("imagefolder", str(tmp_path / "f"), "trainval", image_size=16)
    assert len(both) == len(train) + len(val)
    assert both.targets == train.targets + val.targets
    image, _ = train[(0, 123)]
    assert torch.equal(image, train[(0, 123)][0])  # the same draw seed gives the same crop
    assert not torch.equal(image, train[(0, 124)][0])
    evaluation = ClassificationDataset("imagefolder", str(tmp_path / "f"), "val", "eval", 16)
    assert torch.equal(evaluation[0][0], evaluation[0][0])  # evaluation is deterministic
    with pytest.raises(DataError, match=str(tmp_path / "missing" / "test")):
        ClassificationDataset("imagefolder", str(tmp_path / "missing"), "test")
