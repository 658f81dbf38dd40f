"""Shared helpers of the detection tests: the detectron2 gate, tiny configs and VOC data.

detectron2 is built from source by tools/install_env.sh. Without it the detection tests are
skipped with the reason; with ``BISSL_REQUIRE_DETECTRON2=1`` (set by .ci/run) they fail instead.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
TINY_CONFIG = ROOT / "configs" / "detection" / "tiny_cpu.yaml"


def require_detectron2() -> None:
    """Skip the calling test module (or fail it under BISSL_REQUIRE_DETECTRON2=1)."""
    try:
        import detectron2  # noqa: F401
        from detectron2 import _C  # noqa: F401
    except ImportError as error:
        reason = (
            f"detectron2 is not installed ({error}); tools/install_env.sh builds it from "
            "DETECTRON2_SOURCE (see requirements/detectron2.txt)"
        )
        if os.environ.get("BISSL_REQUIRE_DETECTRON2") == "1":
            pytest.fail(f"BISSL_REQUIRE_DETECTRON2=1 but {reason}", pytrace=False)
        pytest.skip(reason, allow_module_level=True)


def write_voc_data(root: Path, n: int = 24, size: int = 64, **kwargs: Any) -> Path:
    """Generated VOC07+12 in the real layout (``root/VOCdevkit/VOC20xx``); returns ``root``."""
    from bissl_dense.datasets.synthetic import write_voc

    write_voc(root, n, size=size, **kwargs)
    return root


def tiny_cfg(voc_root: Path, output_dir: Path, *opts: Any):  # noqa: ANN201
    """The tiny CPU config with the VOC sets registered at ``voc_root``."""
    from bissl_dense.detection.config import load_config
    from bissl_dense.detection.data import register_voc, register_voc_val_split

    cfg = load_config(
        str(TINY_CONFIG),
        [
            "MODEL.WEIGHTS",
            "random",
            "DATASETS.VOC_ROOT",
            str(voc_root),
            "OUTPUT_DIR",
            str(output_dir),
            *[str(o) for o in opts],
        ],
    )
    register_voc(voc_root)
    register_voc_val_split(cfg)
    return cfg


def oracle(dicts: list[dict], shift: int = 0, num_classes: int = 20) -> Any:
    """A "detector" returning each image's ground-truth boxes (class ids shifted by ``shift``)
    and recording the image ids it was asked about (``.seen``)."""
    import torch
    from detectron2.structures import Boxes, Instances
    from torch import nn

    class Oracle(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.by_id = {d["image_id"]: d for d in dicts}
            self.seen: list[str] = []

        def forward(self, inputs: list[dict]) -> list[dict]:
            outputs = []
            for item in inputs:
                self.seen.append(item["image_id"])
                record = self.by_id[item["image_id"]]
                instances = Instances((record["height"], record["width"]))
                annotations = record["annotations"]
                instances.pred_boxes = Boxes(
                    torch.tensor([a["bbox"] for a in annotations]).reshape(-1, 4)
                )
                instances.scores = torch.ones(len(annotations))
                instances.pred_classes = torch.tensor(
                    [(a["category_id"] + shift) % num_classes for a in annotations],
                    dtype=torch.int64,
                )
                outputs.append({"instances": instances})
            return outputs

    return Oracle()
