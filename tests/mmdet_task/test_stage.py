"""The BiSSL stage on mmdet's C4 detector through ``tools/train.py``, on generated VOC07+12:
a run completes, validates the upper detector with mmdet's ``VOCMetric`` (11-point AP50) and
exports θ_L. A ResNet-18 (same layout: res5 in the RoI head) keeps it fast on 2 CPU cores."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from bissl_dense.cli import main
from bissl_dense.datasets.synthetic import write_unlabeled, write_voc
from bissl_dense.pretext.methods import SimCLR
from bissl_dense.pretext.weights import export_pretext

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "configs/mmdet/bissl_simclr_faster_rcnn_r50_c4_voc0712_synthetic.py"


def test_bissl_c4_on_voc0712_reports_ap50(tmp_path: Path) -> None:
    write_voc(tmp_path / "voc", 8, seed=5, size=96, num_classes=4)
    write_unlabeled(tmp_path / "unlabeled", 8, size=32, seed=0)
    torch.manual_seed(0)
    model = SimCLR(backbone=dict(arch="resnet18"))
    files = export_pretext(tmp_path / "p", model.backbone, model.head_state_dict(), {}, "simclr",
                           "resnet18", "t")  # fmt: skip
    devkit = f"{tmp_path / 'voc' / 'VOCdevkit'}/"
    work_dir = tmp_path / "bissl"
    assert main(["train", str(CONFIG), "--work-dir", str(work_dir), "--cfg-options",
                 f"train_dataloader.dataset.dataset.datasets.0.data_root={devkit}",
                 f"train_dataloader.dataset.dataset.datasets.1.data_root={devkit}",
                 f"val_dataloader.dataset.data_root={devkit}",
                 f"pretext_dataloader.dataset.data_root={tmp_path / 'unlabeled'}",
                 f"model.pretext.backbone_checkpoint={files['backbone']}",
                 f"model.pretext.head_checkpoint={files['head']}",
                 "model.pretext.backbone.arch=resnet18",
                 "model.task.detector.backbone.depth=18",
                 "model.task.detector.roi_head.shared_head.depth=18",
                 "model.task.detector.rpn_head.in_channels=256",
                 "model.task.detector.rpn_head.feat_channels=256",
                 "model.task.detector.roi_head.bbox_roi_extractor.out_channels=256",
                 "model.task.detector.roi_head.bbox_head.in_channels=512",
                 "model.task.detector.roi_head.bbox_head.num_classes=20"]) == 0  # fmt: skip
    text = next(work_dir.glob("*/vis_data/scalars.json")).read_text()
    records = [json.loads(line) for line in text.splitlines() if line.strip()]
    ap50 = [r["pascal_voc/AP50"] for r in records if "pascal_voc/AP50" in r]
    assert ap50 and 0.0 <= ap50[-1] <= 100.0
    assert any("upper/cg_relative_residual" in r for r in records)
    assert list((work_dir / "export").glob("BiSSL_simclr_detection_voc0712_arch-resnet18_*.pth"))
