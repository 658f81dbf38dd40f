"""Runners built in one process do not share mmengine's per-experiment global instances."""

from __future__ import annotations

import time
from pathlib import Path

import mmengine.runner.runner as mmengine_runner
import pytest

from bissl_dense.datasets.synthetic import write_unlabeled
from bissl_dense.engine import build_runner, load_config

CONFIG = (
    Path(__file__).resolve().parents[2] / "configs" / "pretext" / "simclr_resnet18_synthetic.py"
)


def test_two_runners_of_one_config_in_one_second_are_isolated(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """mmengine names the logger, message hub and visualizer ``<config stem>_<second>``: two
    runners of the same config built in the same second (forced here by freezing the clock) got
    the same instances, and the second one logged into the first one's folder."""
    write_unlabeled(tmp_path / "images", n=8, size=32)
    frozen = time.time()
    monkeypatch.setattr(mmengine_runner.time, "time", lambda: frozen)
    options = {
        "train_dataloader.dataset.data_root": str(tmp_path / "images"),
        "train_dataloader.batch_size": 4,
    }
    runners = [
        build_runner(load_config(CONFIG, options, work_dir=tmp_path / name))
        for name in ("first", "second")
    ]
    first, second = runners
    assert first.timestamp == second.timestamp  # the collision's precondition
    assert first.experiment_name != second.experiment_name
    assert first.visualizer is not second.visualizer
    assert first.logger is not second.logger
    assert first.message_hub is not second.message_hub
    for runner, name in zip(runners, ("first", "second")):
        log_file = Path(runner.logger.handlers[-1].baseFilename)
        assert (tmp_path / name) in log_file.parents, log_file
        assert Path(runner.visualizer._vis_backends["LocalVisBackend"]._save_dir).is_relative_to(
            tmp_path / name
        )
