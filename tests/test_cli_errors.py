"""Errors a user can act on are one line (exit status 2); every other exception keeps its
traceback (issue 13, part 6)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torchvision

from bissl_dense.cli import _run_guarded, main
from bissl_dense.datasets.synthetic import write_unlabeled
from bissl_dense.errors import ConfigError, DataError, WeightsError
from bissl_dense.pretext.methods import SimCLR

CONFIG = (
    Path(__file__).resolve().parents[1] / "configs" / "pretext" / "simclr_resnet18_synthetic.py"
)


def _argv(images: Path, work_dir: Path) -> list[str]:
    return [
        "--work-dir",
        str(work_dir),
        "--cfg-options",
        f"train_dataloader.dataset.data_root={images}",
        "train_dataloader.batch_size=4",
        "train_dataloader.num_workers=0",
        "train_dataloader.persistent_workers=False",
        "train_dataloader.dataset.augmentation.image_size=16",
        "train_cfg.max_epochs=None",
        "train_cfg.max_iters=1",
        "model.projector.hidden_dim=16",
    ]


@pytest.mark.parametrize(
    "error", [ConfigError("bad key x"), DataError("no images in /x"), WeightsError("missing keys")]
)
def test_user_errors_are_one_line(error: Exception, capsys) -> None:
    def build() -> object:
        raise error

    assert _run_guarded("pretrain", build, lambda runner: None) == 2
    err = capsys.readouterr().err
    assert err == f"bissl pretrain: error: {error}\n"


def test_user_error_during_the_run_is_one_line_too(capsys) -> None:
    def run(runner: object) -> None:
        raise DataError("cannot read image '/x/1.jpg'")

    assert _run_guarded("pretrain", lambda: object(), run) == 2
    assert "cannot read image" in capsys.readouterr().err


@pytest.mark.parametrize("error", [TypeError("bug"), KeyError("k"), ValueError("v"), OSError()])
def test_other_exceptions_propagate(error: Exception) -> None:
    def build() -> object:
        raise error

    with pytest.raises(type(error)):
        _run_guarded("pretrain", build, lambda runner: None)


def test_programming_error_inside_a_model_shows_its_traceback(tmp_path: Path, monkeypatch) -> None:
    """A TypeError raised inside the model's loss during training used to be reported as a
    config error; now it surfaces, with the frame that raised it."""
    images = tmp_path / "images"
    write_unlabeled(images, n=8, size=24)

    def broken_loss(self, view1, view2):  # noqa: ANN001
        return torch.cat(view1, view2)  # a programming error: TypeError from inside the model

    monkeypatch.setattr(SimCLR, "pretext_loss", broken_loss)
    with pytest.raises(TypeError) as info:
        main(["pretrain", str(CONFIG), *_argv(images, tmp_path / "wd")])
    frames = [entry.name for entry in info.traceback]
    assert "broken_loss" in frames


def test_wrong_weights_and_missing_data_are_one_line(tmp_path: Path, capsys) -> None:
    images = tmp_path / "images"
    write_unlabeled(images, n=8, size=24)
    weights = tmp_path / "resnet50.pth"
    torch.save(torchvision.models.resnet50().state_dict(), weights)  # config is a ResNet-18
    argv = ["fit-head", "--backbone", str(weights), "--config", str(CONFIG)]
    assert main([*argv, *_argv(images, tmp_path / "wd")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0].startswith("bissl fit-head: error: ") and "Traceback" not in "\n".join(err)
    assert "unexpected keys" in "\n".join(err) or "shape mismatches" in "\n".join(err)
    missing = tmp_path / "nowhere.pth"
    assert main(["fit-head", "--backbone", str(missing), "--config", str(CONFIG)]) == 2
    assert str(missing) in capsys.readouterr().err
