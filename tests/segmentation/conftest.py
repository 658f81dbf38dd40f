"""Generated VOC (aug layout) and Cityscapes data with small images, written once per session."""

from __future__ import annotations

from pathlib import Path

import pytest

from bissl_dense.datasets.synthetic import write_cityscapes, write_unlabeled, write_voc


@pytest.fixture(scope="session")
def seg_data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from bissl_dense.segmentation.data import write_cityscapes_split

    root = tmp_path_factory.mktemp("seg_data")
    write_voc(root / "voc", 12, seed=3, size=80, num_classes=4)
    write_cityscapes(root / "cityscapes", 9, seed=3, size=(128, 64), n_val=3, num_cities=2)
    write_cityscapes_split(root / "cityscapes", root / "cityscapes" / "splits", 0.25, seed=0)
    write_unlabeled(root / "unlabeled", 16, size=32, seed=0)
    return {
        "voc2012": root / "voc" / "VOCdevkit" / "VOC2012",
        "cityscapes": root / "cityscapes",
        "unlabeled": root / "unlabeled",
    }
