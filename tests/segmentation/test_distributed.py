"""``--launcher pytorch`` with 2 CPU processes (gloo) on the segmentation BiSSL stage.

The 2-process run completes, and its first upper update equals one process on the same (union)
batches. BatchNorm normalises each rank's batch on its own (as under DDP without SyncBN), so the
data are chosen to make per-rank and union statistics agree: every downstream item is the same
image, unflipped. The implicit term is discarded here because its Hessian batch (pretext views,
randomly augmented per draw) has per-rank BatchNorm statistics that differ from the union's; the
collectives of the implicit term are tested exactly in tests/stage/test_distributed_simclr.py.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "configs/segmentation/bissl_simclr_fcn_r50_voc_aug_synthetic.py"
R18_TASK = [  # as in test_stage.py: a ResNet-18 keeps 2 CPU processes fast
    "model.pretext.backbone.arch=resnet18",
    "model.task.segmentor.backbone.depth=18",
    "model.task.segmentor.decode_head.in_channels=512",
]


def options(seg_data: dict[str, Path], pretext: dict[str, Path], ids: Path, per_rank: int) -> list:
    voc = seg_data["voc2012"]
    prefix = "train_dataloader.dataset.dataset"
    out = [f"{prefix}.data_root={voc}", f"{prefix}.ann_file={ids}", f"{prefix}.aug_ann_file=None",
           f"{prefix}.pipeline.3.prob=0.0"]  # fmt: skip
    return out + [
        f"val_dataloader.dataset.data_root={voc}",
        f"train_dataloader.batch_size={per_rank}",
        f"pretext_dataloader.batch_size={2 * per_rank}",
        f"pretext_dataloader.dataset.data_root={seg_data['unlabeled']}",
        f"model.pretext.backbone_checkpoint={pretext['backbone']}",
        f"model.pretext.head_checkpoint={pretext['head']}",
        *R18_TASK,
        "train_cfg.bissl.alternations=1",
        "train_cfg.bissl.upper_steps=1",
        "train_cfg.bissl.discard_implicit_jacobian=True",
        "train_cfg.val_interval=0",
        "default_hooks.checkpoint.interval=2",
    ]


def upper_parameters(work_dir: Path) -> dict[str, torch.Tensor]:
    state = torch.load(work_dir / "iter_2.pth", map_location="cpu", weights_only=True)
    return {
        k: v
        for k, v in state["state_dict"].items()
        if k.startswith("upper.") and v.is_floating_point() and "running_" not in k
    }


def test_two_processes_equal_one_on_the_union_batch(
    tmp_path: Path, seg_data: dict[str, Path], pretext: dict[str, Path]
) -> None:
    torchrun = Path(sys.executable).with_name("torchrun")
    if not torchrun.exists():
        pytest.skip("torchrun is not installed next to this Python")
    first_id = (seg_data["voc2012"] / "ImageSets/Segmentation/train.txt").read_text().split()[0]
    ids = tmp_path / "same_image.txt"
    ids.write_text(f"{first_id}\n{first_id}\n")
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    train = str(ROOT / "tools" / "train.py")

    one = subprocess.run(
        [
            sys.executable,
            train,
            str(CONFIG),
            "--work-dir",
            str(tmp_path / "one"),
            "--cfg-options",
            *options(seg_data, pretext, ids, 2),
        ],  # fmt: skip
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert one.returncode == 0, one.stderr[-4000:]
    two = subprocess.run(
        [
            str(torchrun),
            "--standalone",
            "--nproc_per_node=2",
            train,
            str(CONFIG),
            "--launcher",
            "pytorch",
            "--work-dir",
            str(tmp_path / "two"),
            "--cfg-options",
            *options(seg_data, pretext, ids, 1),
        ],  # fmt: skip
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    output = two.stdout + two.stderr
    assert two.returncode == 0, output[-4000:]
    assert "Distributed training: True" in output

    reference, distributed = upper_parameters(tmp_path / "one"), upper_parameters(tmp_path / "two")
    assert reference.keys() == distributed.keys() and reference
    for name in reference:
        torch.testing.assert_close(distributed[name], reference[name], rtol=1e-4, atol=1e-6)
    start = torch.load(pretext["backbone"], map_location="cpu", weights_only=True)
    assert not torch.equal(reference["upper.backbone.conv1.weight"], start["conv1.weight"])
