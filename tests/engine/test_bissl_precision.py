"""Mixed precision and channels-last in the mmengine stages (issue 13), on CPU.

* The BiSSL stage: ``train_cfg.bissl.autocast`` reaches the core (fp16 forward passes of both
  levels, float32 implicit-gradient passes, a GradScaler state per level in the checkpoint) and
  ``channels_last=True`` on the backbone configs gives NHWC weights and NHWC inputs.
* Fine-tuning: the config accepts ``optim_wrapper.dtype=bfloat16`` (mmengine's AmpOptimWrapper)
  and one iteration runs its forward pass in bf16 with float32 weights.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

from bissl_dense.cli import main
from bissl_dense.datasets.synthetic import write_imagefolder, write_unlabeled
from bissl_dense.engine.checkpoint import load_run_checkpoint
from bissl_dense.engine.hooks import unwrap_model
from bissl_dense.engine.runner import build_runner, load_config
from bissl_dense.pretext.methods import SimCLR
from bissl_dense.pretext.weights import export_pretext

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "configs" / "classification"
BISSL_CONFIG = CONFIGS / "bissl_simclr_resnet18_synthetic.py"


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("precision")
    write_imagefolder(root / "labelled", 25, num_classes=5, size=32, seed=0)  # 15 train images
    write_unlabeled(root / "unlabeled", 16, size=32, seed=0)
    torch.manual_seed(0)
    model = SimCLR(backbone=dict(arch="resnet18"))
    pretext = export_pretext(
        root / "pretext", model.backbone, model.head_state_dict(), {}, "simclr", "resnet18", "t"
    )
    task_head = root / "task_head.pth"
    torch.save({"weight": torch.zeros(5, 512), "bias": torch.zeros(5)}, task_head)
    return {
        "labelled": root / "labelled",
        "unlabeled": root / "unlabeled",
        "task_head": task_head,
        **pretext,  # backbone, head
    }


def bissl_options(files: dict[str, Path]) -> dict[str, object]:
    return {
        "train_dataloader.dataset.data_root": str(files["labelled"]),
        "train_dataloader.batch_size": 4,
        "train_dataloader.num_workers": 0,
        "val_dataloader.dataset.data_root": str(files["labelled"]),
        "val_dataloader.num_workers": 0,
        "val_dataloader.persistent_workers": False,
        "pretext_dataloader.dataset.data_root": str(files["unlabeled"]),
        "pretext_dataloader.batch_size": 4,
        "pretext_dataloader.num_workers": 0,
        "model.pretext.backbone_checkpoint": str(files["backbone"]),
        "model.pretext.head_checkpoint": str(files["head"]),
        "model.task.head_checkpoint": str(files["task_head"]),
        "train_cfg.val_interval": 0,
        "train_cfg.bissl.alternations": 1,
        "train_cfg.bissl.lower_steps": 1,
        "train_cfg.bissl.upper_steps": 1,
        "train_cfg.bissl.cg_iters": 2,
        "train_cfg.bissl.residual_every": 0,
        "default_hooks.checkpoint.interval": 2,
    }


def conv1_recorder(module: nn.Module, seen: list[tuple[torch.dtype, bool]]) -> None:
    """Record (output dtype, input NHWC?) of every pass through ``module.conv1``."""

    def hook(_: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> None:
        x = inputs[0]
        seen.append((output.dtype, x.is_contiguous(memory_format=torch.channels_last)))

    module.conv1.register_forward_hook(hook)


def test_bissl_stage_fp16_and_channels_last(tmp_path: Path, files: dict[str, Path]) -> None:
    options = {
        **bissl_options(files),
        "train_cfg.bissl.autocast": "float16",
        "model.pretext.backbone.channels_last": True,
        "model.task.backbone.channels_last": True,
    }
    runner = build_runner(load_config(BISSL_CONFIG, options, work_dir=tmp_path))
    model = unwrap_model(runner.model)
    lower, upper = model.lower.backbone, model.upper.backbone
    for backbone in (lower, upper):
        weight = backbone.layer1[0].conv1.weight
        assert weight.is_contiguous(memory_format=torch.channels_last)
        assert not weight.is_contiguous()
    lower_seen: list[tuple[torch.dtype, bool]] = []
    upper_seen: list[tuple[torch.dtype, bool]] = []
    conv1_recorder(lower, lower_seen)
    conv1_recorder(upper, upper_seen)
    runner.train()

    # upper backbone: the θ_U pass of each upper step, fp16, NHWC input (θ_L's pass runs the
    # upper model functionally, so its conv1 hook fires there too)
    assert upper_seen and set(upper_seen) == {(torch.float16, True)}
    # lower backbone, two views per pass: the lower step's in fp16, the Hessian batch's (one per
    # stage in exact mode) in float32; all NHWC
    assert lower_seen == [(torch.float16, True)] * 2 + [(torch.float32, True)] * 2
    for p in list(model.parameters()):
        assert p.dtype == torch.float32

    # the checkpoint holds both levels' GradScaler state (the scale may have backed off: a
    # random projector's first fp16 gradients can overflow at the initial scale 2^16)
    step = runner.train_loop.trainer.step_fn
    saved = load_run_checkpoint(tmp_path / "iter_2.pth")["bissl"]["step"]
    for level in ("lower", "upper"):
        state = getattr(step, f"{level}_scaler").state_dict()
        assert saved[f"{level}_scaler"] == state and state["scale"] <= 65536.0
    exported = next((tmp_path / "export").glob("*_config_id-*.json"))
    assert json.loads(exported.read_text())["bissl"]["autocast"] == "float16"


def _error_of(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("bissl train: error:") and "\n" not in err, err
    return err


def test_bissl_precision_config_errors(
    tmp_path: Path, files: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    options = [f"{k}={v}" for k, v in bissl_options(files).items()]
    base = ["train", str(BISSL_CONFIG), "--work-dir", str(tmp_path), "--cfg-options", *options]
    err = _error_of(capsys, [*base, "train_cfg.bissl.autocast=fp16"])
    assert "train_cfg.bissl" in err and "autocast='fp16'" in err
    amp_level = tmp_path / "amp_level.py"  # a config whose upper level asks mmengine for AMP
    amp_level.write_text(
        f"_base_ = [{str(BISSL_CONFIG)!r}]\n"
        "optim_wrapper = dict(upper=dict(type='AmpOptimWrapper', dtype='float16'))\n"
    )
    base[1] = str(amp_level)
    err = _error_of(capsys, base)
    assert "optim_wrapper.upper" in err and "train_cfg.bissl.autocast" in err


def test_finetune_config_accepts_bf16_amp(
    tmp_path: Path, files: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """One fine-tuning iteration with ``optim_wrapper.dtype=bfloat16`` on CPU.

    mmengine's AmpOptimWrapper asserts that a GPU exists; the assertion is lifted here only so
    that the same code path (CPU autocast; its CUDA GradScaler disables itself) runs on CPU.
    """
    from mmengine.optim import AmpOptimWrapper
    from mmengine.optim.optimizer import amp_optimizer_wrapper

    monkeypatch.setattr(amp_optimizer_wrapper, "is_cuda_available", lambda: True)
    labelled = str(files["labelled"])
    options = {
        "optim_wrapper.dtype": "bfloat16",
        "train_cfg.max_epochs": 1,
        "train_dataloader.batch_size": 15,  # the 15 training images: one iteration
        **{f"{split}_dataloader.dataset.data_root": labelled for split in ("train", "val", "test")},
        **{f"{split}_dataloader.num_workers": 0 for split in ("train", "val", "test")},
        **{f"{split}_dataloader.persistent_workers": False for split in ("train", "val", "test")},
    }
    runner = build_runner(
        load_config(CONFIGS / "finetune_resnet18_synthetic.py", options, work_dir=tmp_path)
    )
    model = unwrap_model(runner.model)
    seen: list[tuple[bool, torch.dtype]] = []
    model.backbone.conv1.register_forward_hook(
        lambda module, inputs, output: seen.append((module.training, output.dtype))
    )
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    runner.train()

    assert isinstance(runner.optim_wrapper, AmpOptimWrapper)
    assert runner.optim_wrapper.cast_dtype == torch.bfloat16
    assert [dtype for training, dtype in seen if training] == [torch.bfloat16]  # one iteration
    assert {dtype for training, dtype in seen if not training} == {torch.float32}  # validation
    for name, p in model.named_parameters():
        assert p.dtype == torch.float32
        assert not torch.equal(p.detach(), before[name]), name
