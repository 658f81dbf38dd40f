"""The Cityscapes validation split is held out within each city (SPEC §5, paper App. B.1), and
mmseg reads the written lists; OpenMMLab datasets take the seeded sampler's draws."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from bissl_dense.segmentation.data import (
    SeededMMDataset,
    cityscapes_city_split,
    main,
    write_cityscapes_split,
)


def test_split_holds_out_the_fraction_of_every_city() -> None:
    stems = [f"{city}/{city}_{i:06d}_000019" for city, n in (("a", 10), ("b", 5), ("c", 1))
             for i in range(n)]  # fmt: skip
    train, val = cityscapes_city_split(stems, 0.2, seed=3)
    assert sorted(train + val) == sorted(stems) and not set(train) & set(val)
    per_city = {c: sum(s.startswith(c + "/") for s in val) for c in "abc"}
    assert per_city == {"a": 2, "b": 1, "c": 0}  # round(0.2 n), >= 1 where possible
    assert cityscapes_city_split(stems, 0.2, seed=3) == (train, val)  # seeded
    assert cityscapes_city_split(stems, 0.2, seed=4) != (train, val)
    with pytest.raises(ValueError, match="val_fraction"):
        cityscapes_city_split(stems, 1.0)


def test_written_lists_are_read_by_mmseg(seg_data: dict[str, Path], tmp_path: Path) -> None:
    from mmengine.registry import DefaultScope

    from bissl_dense.segmentation.model import register_mmseg

    root = seg_data["cityscapes"]
    assert main([str(root), "--out", str(tmp_path), "--val-fraction", "0.25"]) == 0
    train = (tmp_path / "train.txt").read_text().split()
    val = (tmp_path / "val.txt").read_text().split()
    images = sorted(p for p in (root / "leftImg8bit" / "train").glob("*/*.png"))
    assert len(train) + len(val) == len(images)
    assert {s.split("/")[0] for s in val} == {p.parent.name for p in images}  # every city
    register_mmseg()
    with DefaultScope.overwrite_default_scope("mmseg"):
        dataset = SeededMMDataset(
            dict(
                type="CityscapesDataset",
                data_root=str(root),
                data_prefix=dict(img_path="leftImg8bit/train", seg_map_path="gtFine/train"),
                ann_file=str(tmp_path / "val.txt"),
                pipeline=[
                    dict(type="LoadImageFromFile"),
                    dict(type="LoadAnnotations"),
                    dict(type="RandomFlip", prob=0.5),
                ],
            )  # fmt: skip
        )
        assert len(dataset) == len(val) and len(dataset.metainfo["classes"]) == 19
        first, again = dataset[(0, 123)], dataset[(0, 123)]
        assert first["img_path"].endswith(f"{val[0]}_leftImg8bit.png")
        assert first["flip"] == again["flip"]  # the draw's seed fixes the random flip
        np.testing.assert_array_equal(first["img"], again["img"])
        flips = {dataset[(0, seed)]["flip"] for seed in range(12)}
        assert flips == {True, False}
    with pytest.raises(Exception, match="no Cityscapes training images"):
        write_cityscapes_split(tmp_path / "nothing", tmp_path / "out")
