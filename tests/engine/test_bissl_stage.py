"""The BiSSL stage on mmengine, end to end on generated data with a ResNet-18 (issue 7).

pretext weights → head warm-up → BiSSL → fine-tuning (best validation checkpoint) → evaluation,
for SimCLR and BYOL, through the same commands a user runs; a run killed with SIGKILL inside an
upper stage resumes to bit-identical weights; bad input fails with one clear line.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bissl_dense.cli import main
from bissl_dense.datasets.synthetic import write_imagefolder, write_unlabeled
from bissl_dense.pretext.methods import BYOL, SimCLR
from bissl_dense.pretext.weights import export_pretext, load_backbone_state

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "configs" / "classification"


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("data")
    write_imagefolder(root / "labelled", 50, num_classes=5, size=32, seed=0)
    write_unlabeled(root / "unlabeled", 48, size=32, seed=0)
    return {"labelled": root / "labelled", "unlabeled": root / "unlabeled"}


def _pretext_files(out: Path, method: str) -> dict[str, Path]:
    torch.manual_seed(0)
    cls = BYOL if method == "byol" else SimCLR
    model = cls(backbone=dict(arch="resnet18"))
    return export_pretext(
        out, model.backbone, model.head_state_dict(), {"note": "test"}, method, "resnet18", "t0"
    )


def _data_options(data: dict[str, Path], batch: int = 8) -> list[str]:
    labelled = str(data["labelled"])
    return [
        f"train_dataloader.dataset.data_root={labelled}",
        f"val_dataloader.dataset.data_root={labelled}",
        f"test_dataloader.dataset.data_root={labelled}",
        f"train_dataloader.batch_size={batch}",
        "train_dataloader.num_workers=0",
        "train_dataloader.persistent_workers=False",
        "val_dataloader.num_workers=0",
        "val_dataloader.persistent_workers=False",
        "test_dataloader.num_workers=0",
        "test_dataloader.persistent_workers=False",
    ]


def _bissl_options(data: dict[str, Path], pretext: dict[str, Path], head: Path) -> list[str]:
    return [
        f"train_dataloader.dataset.data_root={data['labelled']}",
        "train_dataloader.batch_size=8",
        "train_dataloader.num_workers=0",
        f"val_dataloader.dataset.data_root={data['labelled']}",
        "val_dataloader.num_workers=0",
        "val_dataloader.persistent_workers=False",
        "train_cfg.val_interval=1",
        f"pretext_dataloader.dataset.data_root={data['unlabeled']}",
        "pretext_dataloader.batch_size=8",
        "pretext_dataloader.num_workers=0",
        f"model.pretext.backbone_checkpoint={pretext['backbone']}",
        f"model.pretext.head_checkpoint={pretext['head']}",
        f"model.task.head_checkpoint={head}",
        "train_cfg.bissl.alternations=2",
        "train_cfg.bissl.lower_steps=2",
        "train_cfg.bissl.upper_steps=2",
        "train_cfg.bissl.cg_iters=2",
        "train_cfg.bissl.residual_every=1",
    ]


@pytest.mark.parametrize("method", ["simclr", "byol"])
def test_pipeline_end_to_end(tmp_path: Path, data: dict[str, Path], method: str) -> None:
    pretext = _pretext_files(tmp_path / "pretext", method)

    warmup = tmp_path / "warmup"
    assert (
        main(
            [
                "train",
                str(CONFIGS / "warmup_resnet18_synthetic.py"),
                "--work-dir",
                str(warmup),
                "--cfg-options",
                f"model.backbone_checkpoint={pretext['backbone']}",
                "train_cfg.max_epochs=1",
                *_data_options(data),
            ]
        )
        == 0
    )
    head = warmup / "export" / "head.pth"
    assert head.is_file()

    bissl = tmp_path / "bissl"
    assert (
        main(
            [
                "train",
                str(CONFIGS / f"bissl_{method}_resnet18_synthetic.py"),
                "--work-dir",
                str(bissl),
                "--cfg-options",
                *_bissl_options(data, pretext, head),
            ]
        )
        == 0
    )
    exported = sorted(
        (bissl / "export").glob(f"BiSSL_{method}_classification_synthetic_arch-resnet18_*")
    )
    assert [p.name.split("_id-")[0].rsplit("_", 1)[-1] for p in exported] == ["config", "backbone"]
    lower_backbone = next(p for p in exported if p.suffix == ".pth")
    config = json.loads(next(p for p in exported if p.suffix == ".json").read_text())
    assert config["steps"] == 8 and config["bissl"]["lam"] == 0.001
    # BiSSL moved the backbone away from the pretext one
    before, after = load_backbone_state(pretext["backbone"]), load_backbone_state(lower_backbone)
    assert before.keys() == after.keys()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    # both levels' scalars, the learning rates and the CG residual reached the log
    scalars = next(bissl.glob("*/vis_data/scalars.json")).read_text()
    for key in (
        "lower/pretext_loss",
        "upper/loss",
        "upper/cg_relative_residual",
        "lower.lr",
        "upper.lr",
        "lower/grad_norm",
        "upper/grad_norm",
    ):
        assert key in scalars, key

    finetune = tmp_path / "finetune"
    assert (
        main(
            [
                "train",
                str(CONFIGS / "finetune_resnet18_synthetic.py"),
                "--work-dir",
                str(finetune),
                "--cfg-options",
                f"model.backbone_checkpoint={lower_backbone}",
                "train_cfg.max_epochs=2",
                *_data_options(data),
            ]
        )
        == 0
    )
    results = json.loads((finetune / "results.json").read_text())
    assert results["selection_metric"] == "classification/top1"
    assert set(results["test"]) == {"classification/top1", "classification/top5"}

    out = tmp_path / "test.json"
    assert (
        main(
            [
                "test",
                str(CONFIGS / "finetune_resnet18_synthetic.py"),
                str(finetune / "best.pth"),
                "--work-dir",
                str(tmp_path / "eval"),
                "--out",
                str(out),
                "--cfg-options",
                *_data_options(data),
            ]
        )
        == 0
    )
    assert json.loads(out.read_text())["metrics"] == pytest.approx(results["test"])


def _train_subprocess(
    work_dir: Path, options: list[str], resume: bool = False, config: Path | None = None
) -> int:
    config = config or CONFIGS / "bissl_simclr_resnet18_synthetic.py"
    command = [
        sys.executable,
        str(ROOT / "tools" / "train.py"),
        str(config),
        "--work-dir",
        str(work_dir),
        "--cfg-options",
        *options,
    ]
    if resume:
        command.append("--resume")
    return subprocess.run(command, cwd=ROOT, capture_output=True, timeout=600).returncode


def _final_weights(work_dir: Path) -> dict[str, torch.Tensor]:
    last = Path((work_dir / "last_checkpoint").read_text().strip())
    return torch.load(last, map_location="cpu", weights_only=True)["state_dict"]


def test_killed_inside_an_upper_stage_resumes_bit_identically(
    tmp_path: Path, data: dict[str, Path]
) -> None:
    pretext = _pretext_files(tmp_path / "pretext", "simclr")
    head = tmp_path / "head.pth"
    torch.save({"weight": torch.zeros(5, 512), "bias": torch.zeros(5)}, head)
    # steps: L L U U U | L L U U U; a checkpoint after 3 steps is inside the first upper stage
    options = _bissl_options(data, pretext, head) + [
        "train_cfg.bissl.upper_steps=3",
        "default_hooks.checkpoint.interval=3",
        "default_hooks.checkpoint.max_keep_ckpts=5",
    ]
    assert _train_subprocess(tmp_path / "straight", options) == 0

    killed = tmp_path / "killed"
    kill_config = tmp_path / "kill_at_4.py"
    kill_config.write_text(
        f"_base_ = [{str(CONFIGS / 'bissl_simclr_resnet18_synthetic.py')!r}]\n"
        "custom_imports = dict(imports=['bissl_dense.engine', 'bissl_dense.pretext.methods', "
        "'classification', 'tests.engine._kill'], allow_failed_imports=False)\n"
        "custom_hooks = [dict(type='KillAtIterationHook', iteration=4)]\n"
    )
    assert _train_subprocess(killed, options, config=kill_config) == -9  # SIGKILL
    state = torch.load(killed / "iter_3.pth", map_location="cpu", weights_only=True)
    assert state["bissl"]["hessian_batch_index"] is not None  # saved inside an upper stage
    assert _train_subprocess(killed, options, resume=True) == 0

    straight, resumed = _final_weights(tmp_path / "straight"), _final_weights(killed)
    assert straight.keys() == resumed.keys()
    for name in straight:
        assert torch.equal(straight[name], resumed[name]), name


def _error_of(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("bissl train: error:"), err
    return err


def test_clear_errors(tmp_path: Path, data: dict[str, Path], capsys) -> None:
    pretext = _pretext_files(tmp_path / "pretext", "simclr")
    head = tmp_path / "head.pth"
    torch.save({"weight": torch.zeros(5, 512), "bias": torch.zeros(5)}, head)
    config = str(CONFIGS / "bissl_simclr_resnet18_synthetic.py")
    options = _bissl_options(data, pretext, head)

    missing = tmp_path / "no_such_images"
    err = _error_of(
        capsys,
        [
            "train",
            config,
            "--work-dir",
            str(tmp_path / "a"),
            "--cfg-options",
            *options,
            f"pretext_dataloader.dataset.data_root={missing}",
        ],
    )
    assert str(missing) in err

    err = _error_of(
        capsys,
        [
            "train",
            config,
            "--work-dir",
            str(tmp_path / "b"),
            "--cfg-options",
            *options,
            "train_cfg.bissl.lamda=0.1",
        ],
    )
    assert "lamda" in err and "'lam'" in err

    resnet50 = export_pretext(
        tmp_path / "r50",
        SimCLR(backbone=dict(arch="resnet50")).backbone,
        {},
        {},
        "simclr",
        "resnet50",
        "x",
    )["backbone"]
    err = _error_of(
        capsys,
        [
            "train",
            config,
            "--work-dir",
            str(tmp_path / "c"),
            "--cfg-options",
            *options,
            f"model.pretext.backbone_checkpoint={resnet50}",
        ],
    )
    assert str(resnet50) in err and "layer1.0.conv3.weight" in err


def _torchrun(work_dir: Path, options: list[str], config: Path, resume: bool = False) -> tuple:
    """``torchrun --nproc_per_node=2 tools/train.py CONFIG --launcher pytorch`` on CPU (gloo)."""
    import os

    torchrun = Path(sys.executable).with_name("torchrun")
    if not torchrun.exists():
        pytest.skip("torchrun is not installed next to this Python")
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    command = [
        str(torchrun), "--standalone", "--nproc_per_node=2", str(ROOT / "tools" / "train.py"),
        str(config), "--launcher", "pytorch", "--work-dir", str(work_dir),
        "--cfg-options", *options, *(["--resume"] if resume else []),
    ]  # fmt: skip
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=ROOT
    )
    try:
        output, _ = process.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        process.terminate()  # torchrun forwards SIGTERM to its workers
        output, _ = process.communicate(timeout=30)
        pytest.fail(f"torchrun did not finish within 300 s:\n{output[-4000:]}")
    return process.returncode, output


def test_two_processes_under_torchrun_resume_inside_an_upper_stage_exactly(
    tmp_path: Path, data: dict[str, Path]
) -> None:
    """torchrun + --launcher pytorch on CPU (gloo): replicas, per-rank slices of the stacks; both
    processes killed (SIGKILL) inside an upper stage and resumed from the checkpoint rank 0 wrote
    end at the uninterrupted run's weights bit for bit (issue 21: each rank used to resume with
    rank 0's Hessian batch)."""
    pretext = _pretext_files(tmp_path / "pretext", "simclr")
    head = tmp_path / "head.pth"
    torch.save({"weight": torch.zeros(5, 512), "bias": torch.zeros(5)}, head)
    # steps: L U U U | L U U U; a checkpoint after 3 steps is inside the first upper stage
    options = _bissl_options(data, pretext, head) + [
        "train_dataloader.batch_size=4",
        "pretext_dataloader.batch_size=4",
        "train_cfg.bissl.alternations=2",
        "train_cfg.bissl.lower_steps=1",
        "train_cfg.bissl.upper_steps=3",
        "train_cfg.bissl.cg_iters=1",
        "train_cfg.val_interval=0",
        "default_hooks.checkpoint.interval=3",
        "default_hooks.checkpoint.max_keep_ckpts=5",
    ]
    config = CONFIGS / "bissl_simclr_resnet18_synthetic.py"
    code, output = _torchrun(tmp_path / "ddp", options, config)
    assert code == 0, output[-4000:]
    assert "Distributed training: True" in output
    exported = json.loads(next((tmp_path / "ddp" / "export").glob("*_config_*.json")).read_text())
    assert exported["world_size"] == 2 and exported["lower_batch_size"] == 8

    killed = tmp_path / "killed"
    kill_config = tmp_path / "kill_at_4.py"
    kill_config.write_text(
        f"_base_ = [{str(config)!r}]\n"
        "custom_imports = dict(imports=['bissl_dense.engine', 'bissl_dense.pretext.methods', "
        "'classification', 'tests.engine._kill'], allow_failed_imports=False)\n"
        "custom_hooks = [dict(type='KillAtIterationHook', iteration=4)]\n"
    )
    code, output = _torchrun(killed, options, kill_config)
    assert code != 0 and (killed / "iter_3.pth").exists(), output[-4000:]
    state = torch.load(killed / "iter_3.pth", map_location="cpu", weights_only=True)
    assert state["bissl"]["hessian_batch_index"] is not None  # saved inside an upper stage
    code, output = _torchrun(killed, options, config, resume=True)
    assert code == 0, output[-4000:]

    straight, resumed = _final_weights(tmp_path / "ddp"), _final_weights(killed)
    assert straight.keys() == resumed.keys()
    for name in straight:
        assert torch.equal(straight[name], resumed[name]), name
