"""Resume: an interrupted run continues to exactly the uninterrupted run's state."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from mmengine.fileio.backends import LocalBackend
from mmengine.hooks import Hook

from bissl_dense.datasets.synthetic import write_unlabeled
from bissl_dense.engine import build_runner, load_config, unwrap_model

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "pretext"
MAX_ITERS = 6


class Killed(RuntimeError):
    pass


class KillAfterStep(Hook):
    priority = "LOWEST"  # after the checkpoint hook, like a kill between steps

    def __init__(self, step: int) -> None:
        self.step = step

    def after_train_iter(self, runner: Any, batch_idx: int, **kwargs: Any) -> None:
        if runner.iter == self.step:
            raise Killed(f"killed after step {self.step}")


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("resume") / "images"
    write_unlabeled(root, n=20, size=40)  # 20 images, batch 8: 2 steps per epoch
    return root


def _runner(method: str, images: Path, work_dir: Path, workers: int, name: str, **kw: Any):
    options = {
        "train_dataloader.dataset.data_root": str(images),
        "train_dataloader.batch_size": 8,
        "train_dataloader.num_workers": workers,
        "train_dataloader.persistent_workers": workers > 0,
        "train_dataloader.dataset.augmentation.image_size": 32,
        "train_cfg.max_epochs": None,
        "train_cfg.max_iters": MAX_ITERS,
        "model.projector.hidden_dim": 64,
        "default_hooks.checkpoint.interval": 3,
        "default_hooks.logger.interval": 1,
        "visualizer.vis_backends": [dict(type="LocalVisBackend")],
        "experiment_name": name,
    }
    options.update(kw)
    cfg = load_config(
        CONFIGS / f"{method}_resnet18_synthetic.py",
        options,
        work_dir,
        resume=kw.get("resume", False),
    )
    return build_runner(cfg)


def _losses(runner: Any) -> list[float]:
    return [float(x) for x in runner.message_hub.get_scalar("train/loss").data[0]]


@pytest.mark.parametrize("method", ["simclr", "byol"])
def test_resume_reproduces_uninterrupted_run(method: str, images: Path, tmp_path: Path) -> None:
    reference = _runner(method, images, tmp_path / "full", 0, f"{method}_full")
    reference.train()

    # Interrupted after step index 4 (5 steps done, last checkpoint after 3 steps, mid-epoch),
    # with DataLoader workers this time: the data must not depend on them.
    interrupted = _runner(method, images, tmp_path / "cut", 2, f"{method}_cut")
    interrupted.register_hook(KillAfterStep(4))
    with pytest.raises(Killed):
        interrupted.train()
    pointer = (tmp_path / "cut" / "last_checkpoint").read_text()
    assert Path(pointer).name == "iter_3.pth"
    checkpoint = torch.load(pointer, map_location="cpu", weights_only=True)  # the narrow fix
    assert checkpoint["meta"]["iter"] == 3

    resumed = _runner(method, images, tmp_path / "cut", 2, f"{method}_resumed", resume=True)
    resumed.train()

    assert resumed.iter == reference.iter == MAX_ITERS
    assert resumed.optim_wrapper.get_lr() == reference.optim_wrapper.get_lr()
    ref_state = unwrap_model(reference.model).state_dict()
    got_state = unwrap_model(resumed.model).state_dict()
    assert ref_state.keys() == got_state.keys()
    if method == "byol":
        assert any(k.startswith("target_backbone.") for k in got_state)
    for key in ref_state:
        torch.testing.assert_close(got_state[key], ref_state[key], rtol=1e-5, atol=1e-6)
    ref_losses, got_losses = _losses(reference), _losses(resumed)
    assert len(got_losses) == MAX_ITERS  # 3 restored from the checkpoint + 3 recomputed
    assert got_losses == pytest.approx(ref_losses, rel=1e-5)
    # Optimizer state (LARS momentum) matches as well.
    ref_opt = reference.optim_wrapper.state_dict()["state"]
    got_opt = resumed.optim_wrapper.state_dict()["state"]
    for index in ref_opt:
        torch.testing.assert_close(
            got_opt[index]["momentum_buffer"], ref_opt[index]["momentum_buffer"]
        )


def test_kill_while_writing_keeps_the_last_complete_checkpoint(
    images: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    put = LocalBackend.put
    calls = {"n": 0}

    def put_then_die(self: LocalBackend, obj: bytes, filepath: Any) -> None:
        calls["n"] += 1
        if calls["n"] == 2:  # the second checkpoint: half written, then the process dies
            with open(filepath, "wb") as handle:
                handle.write(obj[: len(obj) // 2])
            raise Killed("killed while writing a checkpoint")
        put(self, obj, filepath)

    monkeypatch.setattr(LocalBackend, "put", put_then_die)
    work_dir = tmp_path / "run"
    runner = _runner(
        "simclr", images, work_dir, 0, "kill_write",
        **{"default_hooks.checkpoint.interval": 2, "default_hooks.checkpoint.max_keep_ckpts": 1},
    )  # fmt: skip
    with pytest.raises(Killed):
        runner.train()
    monkeypatch.setattr(LocalBackend, "put", put)

    pointer = Path((work_dir / "last_checkpoint").read_text())
    assert pointer.name == "iter_2.pth" and pointer.is_file()  # the old one was not deleted
    assert not (work_dir / "iter_4.pth").exists()
    assert torch.load(pointer, weights_only=True)["meta"]["iter"] == 2
    resumed = _runner(
        "simclr", images, work_dir, 0, "kill_write_resumed", resume=True,
        **{"default_hooks.checkpoint.interval": 2, "default_hooks.checkpoint.max_keep_ckpts": 1},
    )  # fmt: skip
    resumed.train()
    assert resumed.iter == MAX_ITERS
    assert Path((work_dir / "last_checkpoint").read_text()).name == "iter_6.pth"
    assert sorted(p.name for p in work_dir.glob("iter_*.pth")) == ["iter_6.pth"]
