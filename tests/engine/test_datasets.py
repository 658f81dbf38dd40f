"""Unlabeled image folders and the seeded, resumable sampler."""

from __future__ import annotations

import os
import random

import numpy as np
import pytest
import torch
from PIL import Image

from bissl_dense.datasets.synthetic import write_imagefolder, write_unlabeled
from bissl_dense.engine import datasets as datasets_module
from bissl_dense.engine.datasets import PretextImageFolder, SeededSampler, draw_seed

AUG = dict(image_size=16)


def test_finds_images_recursively_and_ignores_other_files(tmp_path) -> None:
    (tmp_path / "a" / "b").mkdir(parents=True)
    Image.new("RGB", (20, 20), "red").save(tmp_path / "one.jpg")
    Image.new("RGB", (20, 20), "blue").save(tmp_path / "a" / "two.PNG")
    Image.new("L", (20, 20), 128).save(tmp_path / "a" / "b" / "three.jpeg")
    (tmp_path / "notes.txt").write_text("not an image")
    dataset = PretextImageFolder(tmp_path, augmentation=AUG)
    names = sorted(p.name for p in dataset.files)
    assert names == ["one.jpg", "three.jpeg", "two.PNG"]
    item = dataset[1]
    assert set(item) == {"inputs"} and len(item["inputs"]) == 2
    for view in item["inputs"]:
        assert view.shape == (3, 16, 16) and view.dtype == torch.float32


def test_imagefolder_root_is_read_without_labels(tmp_path) -> None:
    write_imagefolder(tmp_path / "set", n=30, num_classes=3, size=24)
    dataset = PretextImageFolder(tmp_path / "set" / "train", augmentation=AUG)
    assert len(dataset) == 18  # 60% of 30, class folders flattened


def test_missing_or_empty_folder_names_the_path(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "nowhere")):
        PretextImageFolder(tmp_path / "nowhere")
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    (tmp_path / "empty" / "sub" / "readme.md").write_text("x")
    with pytest.raises(FileNotFoundError, match=rf"no images .* under '{tmp_path / 'empty'}'"):
        PretextImageFolder(tmp_path / "empty")


def test_seeded_items_are_reproducible_and_leave_global_rng_alone(tmp_path) -> None:
    write_unlabeled(tmp_path / "u", n=4, size=32)
    dataset = PretextImageFolder(tmp_path / "u", augmentation=AUG)
    # The global RNGs (legacy numpy included) are what must stay untouched.
    torch.manual_seed(123)
    random.seed(123)
    np.random.seed(123)  # noqa: NPY002
    expected_np = np.random.rand()  # noqa: NPY002
    expected_torch, expected_py = torch.rand(1), random.random()
    torch.manual_seed(123)
    random.seed(123)
    np.random.seed(123)  # noqa: NPY002
    first = dataset[(2, 99)]["inputs"]
    again = dataset[(2, 99)]["inputs"]
    other = dataset[(2, 100)]["inputs"]
    assert torch.equal(torch.rand(1), expected_torch)
    assert random.random() == expected_py
    assert np.random.rand() == expected_np  # noqa: NPY002
    for a, b in zip(first, again, strict=True):
        assert torch.equal(a, b)
    assert not torch.equal(first[0], other[0]) or not torch.equal(first[1], other[1])


def _sampler(monkeypatch, size: int, rank: int, world: int, **kwargs) -> SeededSampler:
    monkeypatch.setattr(datasets_module, "get_dist_info", lambda: (rank, world))
    return SeededSampler(list(range(size)), seed=5, **kwargs)  # type: ignore[arg-type]


def test_sampler_partitions_epochs_across_ranks(monkeypatch) -> None:
    size, world = 10, 3
    draws = [list(_sampler(monkeypatch, size, r, world)) for r in range(world)]
    assert all(len(d) == 4 for d in draws)  # ceil(10 / 3), padded
    indices = [i for d in draws for i, _ in d]
    assert sorted(set(indices)) == list(range(size)) and len(indices) == 12
    seeds = [s for d in draws for _, s in d]
    assert len(set(seeds)) == 12  # every draw has its own augmentation seed
    # Rank r takes positions r, r + world, ... of one shared permutation.
    order = torch.randperm(size, generator=torch.Generator().manual_seed(5)).tolist()
    padded = order + order[:2]
    for r in range(world):
        assert [i for i, _ in draws[r]] == padded[r::world]
        assert [s for _, s in draws[r]] == [draw_seed(5, 0, p) for p in range(r, 12, world)]


def test_sampler_epochs_differ_and_start_skips_exactly(monkeypatch) -> None:
    sampler = _sampler(monkeypatch, 12, 0, 1)
    epoch0 = list(sampler)
    assert list(sampler) == epoch0  # deterministic
    sampler.set_epoch(1)
    epoch1 = list(sampler)
    assert [i for i, _ in epoch1] != [i for i, _ in epoch0]
    sampler.set_start(5)
    assert list(sampler) == epoch1[5:]
    sampler.set_epoch(2)  # the start offset is the loop's to reset
    assert len(list(sampler)) == 7
    with pytest.raises(ValueError, match="start"):
        sampler.set_start(13)
    unshuffled = _sampler(monkeypatch, 4, 0, 1, shuffle=False)
    assert [i for i, _ in unshuffled] == [0, 1, 2, 3]


# ---------------------------------------------------------------------------------------------
# the compact, cached file index


def _tree(root) -> None:
    for rel in (
        "b/x.JPEG",
        "a/z.png",
        "a/y.jpg",
        "a-c/w.jpg",
        "a/sub/v.webp",
        "top.jpg",
        "ü/ñ.jpg",
    ):
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"not decoded by the index")
    (root / "a" / "notes.txt").write_text("x")
    (root / "empty").mkdir()
    (root / "dir.jpg").mkdir()  # a directory with an image suffix is not a file


def _walked(root) -> list:
    """The reference: every file under root with an image suffix, sorted like Path objects."""
    allowed = {e.lower() for e in datasets_module.IMAGE_EXTENSIONS}
    return sorted(p for p in root.rglob("*") if p.suffix.lower() in allowed and p.is_file())


def test_file_index_lists_the_same_files_as_a_directory_walk(tmp_path) -> None:
    root = tmp_path / "data"
    _tree(root)
    index = datasets_module.find_images(root, cache_dir=tmp_path / "cache")
    assert list(index) == _walked(root)  # same files, same order
    assert [index[i] for i in range(len(index))] == _walked(root)
    assert index[-1] == _walked(root)[-1]
    with pytest.raises(IndexError):
        index[len(index)]
    # compact: one byte buffer and one offset array, no Python object per file
    assert index.nbytes == sum(len(index.relative(i).encode()) for i in range(len(index))) + 8 * (
        len(index) + 1
    )


def test_file_index_is_cached_and_invalidated_when_a_directory_changes(
    tmp_path, monkeypatch
) -> None:
    root, cache = tmp_path / "data", tmp_path / "cache"
    _tree(root)
    first = datasets_module.find_images(root, cache_dir=cache)
    assert len(list(cache.glob("*.npz"))) == 1
    from bissl_dense.engine import file_index

    real_walk = file_index._walk
    walks = []

    def counting_walk(*args, **kwargs):
        walks.append(args[0])
        return real_walk(*args, **kwargs)

    monkeypatch.setattr(file_index, "_walk", counting_walk)
    again = datasets_module.find_images(root, cache_dir=cache)
    assert walks == [] and list(again) == list(first)  # from the cache, no walk
    (root / "a" / "sub" / "new.jpg").write_bytes(b"x")  # changes a directory's mtime
    os.utime(root / "a" / "sub", ns=(1, 1))  # (and makes sure of it on coarse-mtime filesystems)
    updated = datasets_module.find_images(root, cache_dir=cache)
    assert len(walks) == 1 and list(updated) == _walked(root)
    assert len(updated) == len(first) + 1
    # a dataset built on a cached index reads the same files
    dataset = PretextImageFolder(root, index_cache_dir=str(cache))
    assert list(dataset.files) == _walked(root)
