"""Generated VOC (aug layout) and Cityscapes data with small images, written once per session."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from bissl_dense.datasets.synthetic import write_cityscapes, write_unlabeled, write_voc
from bissl_dense.pretext.methods import SimCLR
from bissl_dense.pretext.weights import export_pretext


@pytest.fixture(scope="session")
def seg_data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from bissl_dense.segmentation.data import write_cityscapes_split, write_voc_aug_split

    root = tmp_path_factory.mktemp("seg_data")
    write_voc(root / "voc", 12, seed=3, size=80, num_classes=4)
    voc2012 = root / "voc" / "VOCdevkit" / "VOC2012"
    write_voc_aug_split(voc2012, voc2012 / "splits", 0.25, seed=0)  # where the configs read it
    write_cityscapes(root / "cityscapes", 9, seed=3, size=(128, 64), n_val=3, num_cities=2)
    write_cityscapes_split(root / "cityscapes", root / "cityscapes" / "splits", 0.25, seed=0)
    write_unlabeled(root / "unlabeled", 16, size=32, seed=0)
    return {
        "voc2012": voc2012,
        "cityscapes": root / "cityscapes",
        "unlabeled": root / "unlabeled",
    }


@pytest.fixture(scope="session")
def pretext(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Pretext files (SimCLR, ResNet-18: fast on CPU) in the published layout."""
    torch.manual_seed(0)
    model = SimCLR(backbone=dict(arch="resnet18"))
    out = tmp_path_factory.mktemp("pretext")
    head = model.head_state_dict()
    return export_pretext(out, model.backbone, head, {}, "simclr", "resnet18", "t")
