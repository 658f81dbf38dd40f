"""The pooled pretext + downstream data of the data-mix baseline (SPEC §6, App. B.9.3)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
import torch

from bissl_dense.baselines.data_mix import MixedPretextDataset
from bissl_dense.datasets.synthetic import write_imagefolder, write_unlabeled
from bissl_dense.engine.datasets import PretextImageFolder
from bissl_dense.errors import DataError
from bissl_dense.seeding import seeded_rng
from bissl_dense.stage import SeededBatchStack, SeededDataset
from classification.data import ClassificationDataset
from tests.classification._layouts import nearest_class, write_cifar10, write_dtd

AUGMENTATION = dict(image_size=16, min_scale=0.5, crop_mode="scale")


def _pretext(root: Path, count: int) -> PretextImageFolder:
    write_unlabeled(root, count, size=24, seed=0)
    return PretextImageFolder(root, augmentation=AUGMENTATION)


def test_both_sources_in_the_pooled_proportion(tmp_path: Path) -> None:
    """A pass over the shuffled pool draws every image once: n_D/(n_P+n_D) downstream images."""
    pretext = _pretext(tmp_path / "unlabeled", 12)
    write_imagefolder(tmp_path / "labelled", 20, num_classes=4, size=24, seed=0)
    downstream = ClassificationDataset("imagefolder", str(tmp_path / "labelled"), "train")
    mixed = MixedPretextDataset(pretext, downstream)
    n_p, n_d = len(pretext), len(downstream)
    assert len(mixed) == n_p + n_d and mixed.downstream_fraction == pytest.approx(n_d / (n_p + n_d))
    # the BiSSL batch stack over the pool, as DataMixLoop draws it (batch 4, one pass = 1 shuffle)
    batches = len(mixed) // 4
    stack = SeededBatchStack(len(mixed), 4, 1, seed=3)
    drawn = [index for _, batch in zip(range(batches), stack) for index, _ in batch]
    sources = Counter(mixed.is_downstream(i) for i in drawn)
    assert sources[True] + sources[False] == 4 * batches
    expected = 4 * batches * n_d / (n_p + n_d)
    assert abs(sources[True] - expected) <= 4  # one pass: only the dropped remainder differs
    assert len(set(drawn)) == len(drawn)  # no image twice within a pass
    # over many passes the share converges to the stated proportion
    many = [mixed.is_downstream(i) for _, b in zip(range(200), stack) for i, _ in b]
    assert sum(many) / len(many) == pytest.approx(mixed.downstream_fraction, abs=0.02)


def test_downstream_images_get_the_pretext_views_without_labels(tmp_path: Path) -> None:
    pretext = _pretext(tmp_path / "unlabeled", 5)
    write_imagefolder(tmp_path / "labelled", 10, num_classes=2, size=24, seed=1)
    downstream = ClassificationDataset("imagefolder", str(tmp_path / "labelled"), "train")
    seeded = SeededDataset(MixedPretextDataset(pretext, downstream))
    item = seeded[(len(pretext) + 3, 77)]
    assert set(item) == {"inputs"} and len(item["inputs"]) == 2
    view1, view2 = item["inputs"]
    assert view1.shape == view2.shape == (3, 16, 16) and not torch.equal(view1, view2)
    # exactly the pretext augmentation of the raw downstream image under the draw's seed
    with seeded_rng(77):
        expected = pretext.augmentation(downstream.base[3][0])
    assert all(torch.equal(a, b) for a, b in zip(item["inputs"], expected, strict=True))
    # a pretext index is the pretext dataset's own item under the same seed
    with seeded_rng(5):
        own = pretext[2]["inputs"]
    assert all(torch.equal(a, b) for a, b in zip(seeded[(2, 5)]["inputs"], own, strict=True))


@pytest.mark.parametrize(
    ("name", "write", "split"), [("cifar10", write_cifar10, "train"), ("dtd", write_dtd, "train")]
)
def test_benchmark_layouts_are_wrapped_not_relisted(
    tmp_path: Path, name: str, write: object, split: str
) -> None:
    """Real on-disk layouts (CIFAR's pickled batches, DTD's split files) through the task's
    own dataset: every downstream image of the training split, with its own pixels."""
    truth = write(tmp_path)  # type: ignore[operator]
    split_dir = tmp_path / "splits"
    downstream = ClassificationDataset(name, str(tmp_path), split, split_dir=str(split_dir))
    mixed = MixedPretextDataset(_pretext(tmp_path / "unlabeled", 3), downstream)
    assert mixed.num_downstream == len(downstream) > 0
    labels = [nearest_class(mixed.downstream_image(i)) for i in range(len(downstream))]
    assert labels == list(downstream.targets)
    assert len(downstream) <= len(truth["splits"]["train"]["ids"])


def test_items_that_are_not_images_are_refused(tmp_path: Path) -> None:
    tensors = [(torch.zeros(3, 8, 8), 0)]
    mixed = MixedPretextDataset(_pretext(tmp_path / "unlabeled", 2), tensors)
    with pytest.raises(DataError, match="not a PIL image"):
        mixed[2]
    with pytest.raises(DataError, match="both sources"):
        MixedPretextDataset(_pretext(tmp_path / "u2", 2), [])
