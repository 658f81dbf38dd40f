"""Segmentation stages on mmseg through the user's commands, on generated data (issue 11).

BiSSL on VOC aug (a few alternations) reports the upper model's mIoU, exports θ_L, and a run
killed by SIGKILL inside an upper stage resumes to identical weights; fine-tuning from the export
keeps the best-validation checkpoint and ``tools/test.py`` reproduces its results; BiSSL on
Cityscapes (the per-city validation split) completes and reports mIoU.

To stay fast on 2 CPU cores the runs use a ResNet-18 (same names and layout: stride 16, res5
dilated) through ``--cfg-options``; the ResNet-50 model itself is tested in test_model.py and
test_task.py.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bissl_dense.cli import main
from bissl_dense.pretext.weights import load_backbone_state

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "configs" / "segmentation"
R18_TASK = [
    "model.pretext.backbone.arch=resnet18",
    "model.task.segmentor.backbone.depth=18",
    "model.task.segmentor.decode_head.in_channels=512",
]


def voc_options(seg_data: dict[str, Path], pretext: dict[str, Path]) -> list[str]:
    voc = seg_data["voc2012"]
    return [
        f"train_dataloader.dataset.dataset.data_root={voc}",
        f"val_dataloader.dataset.data_root={voc}",
        f"pretext_dataloader.dataset.data_root={seg_data['unlabeled']}",
        f"model.pretext.backbone_checkpoint={pretext['backbone']}",
        f"model.pretext.head_checkpoint={pretext['head']}",
        *R18_TASK,
        # L U U | L U U; a checkpoint after 2 steps lies inside the first upper stage
        "default_hooks.checkpoint.interval=2",
        "default_hooks.checkpoint.max_keep_ckpts=5",
    ]


def train_subprocess(config: Path, work_dir: Path, options: list[str], resume: bool = False) -> int:
    command = [sys.executable, str(ROOT / "tools" / "train.py"), str(config), "--work-dir",
               str(work_dir), "--cfg-options", *options]  # fmt: skip
    if resume:
        command.append("--resume")
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=900)
    if done.returncode not in (0, -9):
        print(done.stdout[-3000:], done.stderr[-3000:])
    return done.returncode


def final_weights(work_dir: Path) -> dict[str, torch.Tensor]:
    last = Path((work_dir / "last_checkpoint").read_text().strip())
    return torch.load(last, map_location="cpu", weights_only=True)["state_dict"]


def logged_scalars(work_dir: Path) -> list[dict]:
    text = next(work_dir.glob("*/vis_data/scalars.json")).read_text()
    return [json.loads(line) for line in text.splitlines() if line.strip()]


@pytest.fixture(scope="module")
def voc_bissl(
    tmp_path_factory: pytest.TempPathFactory, seg_data: dict[str, Path], pretext: dict[str, Path]
) -> Path:
    work_dir = tmp_path_factory.mktemp("bissl_voc")
    config = CONFIGS / "bissl_simclr_fcn_r50_voc_aug_synthetic.py"
    assert train_subprocess(config, work_dir, voc_options(seg_data, pretext)) == 0
    return work_dir


def test_bissl_voc_aug_reports_miou_and_exports(voc_bissl: Path, pretext: dict[str, Path]) -> None:
    scalars = logged_scalars(voc_bissl)
    assert any("upper/cg_relative_residual" in record for record in scalars)
    final = [record for record in scalars if "mIoU" in record]
    assert final and 0.0 <= final[-1]["mIoU"] <= 100.0 and "IoU.background" in final[-1]
    (exported,) = (voc_bissl / "export").glob(
        "BiSSL_simclr_segmentation_voc_aug_arch-resnet18_lower_backbone_id-*.pth"
    )
    before, after = load_backbone_state(pretext["backbone"]), load_backbone_state(exported)
    assert before.keys() == after.keys()
    assert any(not torch.equal(before[k], after[k]) for k in before)  # BiSSL moved θ_L


def test_killed_inside_an_upper_stage_resumes_to_the_same_weights(
    tmp_path: Path, voc_bissl: Path, seg_data: dict[str, Path], pretext: dict[str, Path]
) -> None:
    kill_config = tmp_path / "kill_at_3.py"
    kill_config.write_text(
        f"_base_ = [{str(CONFIGS / 'bissl_simclr_fcn_r50_voc_aug_synthetic.py')!r}]\n"
        "custom_imports = dict(imports=['bissl_dense.engine', 'bissl_dense.pretext.methods', "
        "'bissl_dense.segmentation', 'bissl_dense.segmentation.data', "
        "'bissl_dense.segmentation.metrics', 'tests.engine._kill'], allow_failed_imports=False)\n"
        "custom_hooks = [dict(type='KillAtIterationHook', iteration=3)]\n"
    )
    killed = tmp_path / "killed"
    options = voc_options(seg_data, pretext)
    assert train_subprocess(kill_config, killed, options) == -9  # SIGKILL
    state = torch.load(killed / "iter_2.pth", map_location="cpu", weights_only=True)
    assert state["bissl"]["hessian_batch_index"] is not None  # saved inside an upper stage
    config = CONFIGS / "bissl_simclr_fcn_r50_voc_aug_synthetic.py"
    assert train_subprocess(config, killed, options, resume=True) == 0
    straight, resumed = final_weights(voc_bissl), final_weights(killed)
    assert straight.keys() == resumed.keys()
    for name in straight:
        assert torch.equal(straight[name], resumed[name]), name


def test_finetune_from_the_export_then_test(
    tmp_path: Path, voc_bissl: Path, seg_data: dict[str, Path]
) -> None:
    (exported,) = (voc_bissl / "export").glob("*_lower_backbone_id-*.pth")
    voc = seg_data["voc2012"]
    data = [
        f"train_dataloader.dataset.dataset.data_root={voc}",
        f"val_dataloader.dataset.data_root={voc}",
        f"test_dataloader.dataset.data_root={voc}",
        "model.backbone.depth=18",
        "model.decode_head.in_channels=512",
    ]
    config = str(CONFIGS / "finetune_fcn_r50_voc_aug_synthetic.py")
    work_dir = tmp_path / "finetune"
    assert main(["train", config, "--work-dir", str(work_dir), "--cfg-options",
                 f"model.backbone.init_cfg.checkpoint={exported}", "train_cfg.max_epochs=1",
                 *data]) == 0  # fmt: skip
    results = json.loads((work_dir / "results.json").read_text())
    assert results["selection_metric"] == "mIoU"
    assert {"mIoU", "aAcc", "IoU.background", "IoU.aeroplane"} <= set(results["test"])

    out = tmp_path / "test.json"
    assert main(["test", config, str(work_dir / "best.pth"), "--work-dir", str(tmp_path / "eval"),
                 "--out", str(out), "--cfg-options", *data]) == 0  # fmt: skip
    tested = json.loads(out.read_text())["metrics"]
    assert tested["mIoU"] == pytest.approx(results["test"]["mIoU"])


def test_bissl_cityscapes_reports_miou(
    tmp_path: Path, seg_data: dict[str, Path], pretext: dict[str, Path]
) -> None:
    root = seg_data["cityscapes"]
    splits = root / "splits"
    assert main(["train", str(CONFIGS / "bissl_simclr_fcn_r50_cityscapes_synthetic.py"),
                 "--work-dir", str(tmp_path / "city"), "--cfg-options",
                 f"train_dataloader.dataset.dataset.data_root={root}",
                 f"train_dataloader.dataset.dataset.ann_file={splits / 'train.txt'}",
                 f"val_dataloader.dataset.data_root={root}",
                 f"val_dataloader.dataset.ann_file={splits / 'val.txt'}",
                 f"pretext_dataloader.dataset.data_root={seg_data['unlabeled']}",
                 f"model.pretext.backbone_checkpoint={pretext['backbone']}",
                 f"model.pretext.head_checkpoint={pretext['head']}", *R18_TASK,
                 "train_cfg.bissl.alternations=1", "train_cfg.bissl.upper_steps=1",
                 "train_cfg.val_interval=1"]) == 0  # fmt: skip
    final = [record for record in logged_scalars(tmp_path / "city") if "mIoU" in record]
    assert final and "IoU.road" in final[-1]
