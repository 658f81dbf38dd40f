"""``bissl pretrain`` / ``bissl fit-head`` end to end on generated images (a few steps each)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torchvision

from bissl_dense.cli import main
from bissl_dense.datasets.synthetic import write_unlabeled
from bissl_dense.pretext import load_backbone_into, load_backbone_state, load_pretext_head
from bissl_dense.pretext.backbones import build_backbone
from bissl_dense.pretext.methods import BYOL, SimCLR

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs" / "pretext"


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cli") / "images"
    write_unlabeled(root, n=16, size=40)
    return root


def _options(images: Path, iters: int = 3, name: str = "cli") -> list[str]:
    return [
        f"train_dataloader.dataset.data_root={images}",
        "train_dataloader.batch_size=8",
        "train_dataloader.num_workers=0",
        "train_dataloader.persistent_workers=False",
        "train_dataloader.dataset.augmentation.image_size=32",
        "train_cfg.max_epochs=None",
        f"train_cfg.max_iters={iters}",
        "model.projector.hidden_dim=64",
        f"experiment_name={name}",
        "default_hooks.logger.interval=1",
    ]


def _export_files(work_dir: Path) -> dict[str, Path]:
    files = sorted((work_dir / "export").iterdir())
    by_kind = {
        kind: [f for f in files if f"_{kind}_id-" in f.name]
        for kind in ("backbone", "head", "config")
    }
    assert all(len(v) == 1 for v in by_kind.values()), files
    return {kind: v[0] for kind, v in by_kind.items()}


def test_pretrain_end_to_end_exports_loadable_files(images: Path, tmp_path: Path) -> None:
    work_dir = tmp_path / "run"
    config = CONFIGS / "simclr_resnet18_synthetic.py"
    argv = ["pretrain", str(config), "--work-dir", str(work_dir), "--cfg-options"]
    assert main([*argv, *_options(images, name="cli_e2e"), "model.temperature=0.2"]) == 0

    files = _export_files(work_dir)
    assert files["backbone"].name.startswith("Pretext_simclr_arch-resnet18_backbone_id-")
    exported_config = json.loads(files["config"].read_text())
    assert exported_config["task"] == "simclr" and exported_config["arch"] == "resnet18"
    assert exported_config["iterations"] == 3
    assert exported_config["model"]["temperature"] == 0.2  # the --cfg-options override
    assert exported_config["batch_size"] == 8

    # The exported files hold exactly the final weights of the run's last checkpoint.
    checkpoint = torch.load(work_dir / "iter_3.pth", map_location="cpu", weights_only=True)
    state = checkpoint["state_dict"]
    backbone_file = load_backbone_state(files["backbone"])
    assert backbone_file.keys() == {k[9:] for k in state if k.startswith("backbone.")}
    for key, value in backbone_file.items():
        assert torch.equal(value, state[f"backbone.{key}"]), key
    head = load_pretext_head(files["head"])
    for key, value in head.items():
        assert torch.equal(value, state[key]), key

    # ... and load back into fresh modules.
    backbone, _ = build_backbone("resnet18")
    load_backbone_into(backbone, files["backbone"])
    model = SimCLR(backbone=dict(arch="resnet18"), projector=dict(hidden_dim=64))
    model.load_head_state_dict(head)
    torch.testing.assert_close(model.projector[0].weight, state["projector.0.weight"])

    # TensorBoard logs and the atomically written pointer.
    assert list(work_dir.glob("*/vis_data/events.out.tfevents.*"))
    assert Path((work_dir / "last_checkpoint").read_text()) == work_dir / "iter_3.pth"


def test_bad_config_key_fails_with_a_suggestion(images: Path, tmp_path: Path, capsys) -> None:
    config = str(CONFIGS / "simclr_resnet18_synthetic.py")
    argv = ["pretrain", config, "--work-dir", str(tmp_path), "--cfg-options", *_options(images)]
    assert main([*argv, "model.tempreture=0.2"]) == 2
    err = capsys.readouterr().err
    assert "model.tempreture" in err and "did you mean 'temperature'" in err
    assert main([*argv, "train_dataloder.batch_size=4"]) == 2
    assert "train_dataloader" in capsys.readouterr().err


def test_missing_data_path_and_config_fail_clearly(tmp_path: Path, capsys) -> None:
    missing = tmp_path / "no_such_images"
    config = str(CONFIGS / "byol_resnet18_synthetic.py")
    argv = ["pretrain", config, "--work-dir", str(tmp_path / "wd"), "--cfg-options"]
    assert main([*argv, f"train_dataloader.dataset.data_root={missing}"]) == 2
    err = capsys.readouterr().err
    assert str(missing) in err and "data_root" in err
    assert main(["pretrain", str(tmp_path / "nope.py")]) == 2
    assert "nope.py' does not exist" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["fit-head", "--config", config])  # --backbone is required


def test_fit_head_trains_heads_on_a_frozen_torchvision_backbone(
    images: Path, tmp_path: Path
) -> None:
    weights = torchvision.models.resnet18().state_dict()  # an off-the-shelf file, with fc.*
    backbone_file = tmp_path / "resnet18_torchvision.pth"
    torch.save(weights, backbone_file)
    work_dir = tmp_path / "fit"
    argv = [
        "fit-head", "--backbone", str(backbone_file),
        "--config", str(CONFIGS / "byol_resnet18_synthetic.py"),
        "--work-dir", str(work_dir), "--cfg-options", *_options(images, 2, "cli_fit_head"),
    ]  # fmt: skip
    assert main(argv) == 0
    files = _export_files(work_dir)
    exported = load_backbone_state(files["backbone"])
    # Frozen: every backbone tensor, BatchNorm statistics included, is the file's.
    assert exported.keys() == {k for k in weights if not k.startswith("fc.")}
    for key, value in exported.items():
        assert torch.equal(value, weights[key]), key
    head = load_pretext_head(files["head"])
    assert {k.split(".")[0] for k in head} == {"projector", "predictor"}
    fresh = BYOL(backbone=dict(arch="resnet18"), projector=dict(hidden_dim=64))
    fresh.load_head_state_dict(head)
    config = json.loads(files["config"].read_text())
    assert config["model"]["freeze_backbone"] is True


def test_tools_script_runs_as_a_process(images: Path, tmp_path: Path) -> None:
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])
    )
    result = subprocess.run(
        [
            sys.executable, str(REPO / "tools" / "pretrain.py"),
            str(CONFIGS / "simclr_resnet18_synthetic.py"), "--work-dir", str(tmp_path / "proc"),
            "--cfg-options", *_options(images, 1, "cli_process"),
        ],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "Iter(train) [1/1]" in result.stdout + result.stderr
    assert (tmp_path / "proc" / "iter_1.pth").is_file()


def test_two_process_ddp_on_cpu_with_byol(images: Path, tmp_path: Path) -> None:
    """torchrun + --launcher pytorch: DDP wrapper, EMA hook through the wrapper, gathering."""
    torchrun = Path(sys.executable).with_name("torchrun")
    if not torchrun.exists():
        pytest.skip("torchrun is not installed next to this Python")
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
        OMP_NUM_THREADS="1",
    )
    work_dir = tmp_path / "ddp"
    command = [
        str(torchrun), "--standalone", "--nproc_per_node=2",
        str(REPO / "tools" / "pretrain.py"), str(CONFIGS / "byol_resnet18_synthetic.py"),
        "--launcher", "pytorch", "--work-dir", str(work_dir),
        "--cfg-options", *_options(images, 2, "cli_ddp"), "train_dataloader.batch_size=4",
    ]  # fmt: skip
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
    )
    try:
        output, _ = process.communicate(timeout=180)
    except subprocess.TimeoutExpired:
        # SIGTERM first: torchrun forwards it to its workers (their own session leaders), which
        # a SIGKILL of torchrun alone would leave running.
        process.terminate()
        output, _ = process.communicate(timeout=30)
        pytest.fail(f"torchrun did not finish within 180 s:\n{output[-4000:]}")
    assert process.returncode == 0, output[-4000:]
    assert "Distributed training: True" in output and "Iter(train) [2/2]" in output
    checkpoint = torch.load(work_dir / "iter_2.pth", map_location="cpu", weights_only=True)
    state = checkpoint["state_dict"]
    assert not any(k.startswith("module.") for k in state)
    # 16 images, 4 per process and step: a global batch of 8 with lr scaled by 8 / 256.
    assert checkpoint["param_schedulers"][0]["base_values"] == [pytest.approx(4.8 * 8 / 256)]
    assert len(_export_files(work_dir)) == 3
