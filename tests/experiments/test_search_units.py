"""The parts of the search that need no Ray: sampling, the ledger, selection and progress."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import stats

from bissl_dense.errors import ConfigError
from bissl_dense.experiments.ledger import Ledger, TrialRecord, jsonable_metrics
from bissl_dense.experiments.progress import Progress, format_duration
from bissl_dense.experiments.search import (
    DEFAULT_SPACE,
    Choice,
    LogUniform,
    sample_configurations,
    select_best,
)


def test_default_space_is_the_papers() -> None:
    assert DEFAULT_SPACE == {"lr": LogUniform(1e-4, 1.0), "weight_decay": LogUniform(1e-5, 1e-2)}


def test_sampling_is_log_uniform_reproducible_and_prefix_stable() -> None:
    configs = sample_configurations(DEFAULT_SPACE, 2000, seed=7)
    lr = np.log10([c["lr"] for c in configs])
    wd = np.log10([c["weight_decay"] for c in configs])
    assert lr.min() >= -4 and lr.max() <= 0 and wd.min() >= -5 and wd.max() <= -2
    assert stats.kstest(lr, stats.uniform(loc=-4, scale=4).cdf).pvalue > 1e-3
    assert stats.kstest(wd, stats.uniform(loc=-5, scale=3).cdf).pvalue > 1e-3
    assert abs(stats.pearsonr(lr, wd).statistic) < 0.1  # drawn independently
    assert sample_configurations(DEFAULT_SPACE, 50, seed=7) == configs[:50]  # extend a search
    assert sample_configurations(DEFAULT_SPACE, 50, seed=8) != configs[:50]
    picks = {c["opt"] for c in sample_configurations({"opt": Choice(("sgd", "adam"))}, 50)}
    assert picks == {"sgd", "adam"}
    with pytest.raises(ConfigError, match="0 < low < high"):
        LogUniform(0.0, 1.0)
    with pytest.raises(ConfigError, match="num_samples"):
        sample_configurations(DEFAULT_SPACE, 0)


def test_ledger_round_trip_and_identity(tmp_path: Path) -> None:
    path = tmp_path / "search.json"
    identity = {"kind": "search", "space": {"lr": [1e-4, 1.0]}, "seed": 0}
    ledger = Ledger(path, identity)
    assert len(ledger) == 0 and not path.exists()
    ledger.record("0000", {"lr": 0.1}, {"val_top1": 71.5, "test_top1": np.float32(70.25)}, 3.0)
    ledger.record("0001", {"lr": 1.0}, {"val_top1": float("nan")}, 1.0)  # a diverged run
    json.loads(path.read_text())  # strict JSON on disk
    reopened = Ledger(path, identity)
    assert "0000" in reopened and "0002" not in reopened and len(reopened) == 2
    first = reopened.records()["0000"]
    assert first.metrics == {"val_top1": 71.5, "test_top1": 70.25} and first.wall_s == 3.0
    assert math.isnan(reopened.records()["0001"].metrics["val_top1"])
    with pytest.raises(ConfigError, match=r"different experiment \(seed: stored 0, now 1\)"):
        Ledger(path, {**identity, "seed": 1})
    old = Ledger(path, identity).set_aside()
    assert old is not None and old.exists() and not path.exists()
    assert not list(tmp_path.glob(".*.tmp"))


def test_metrics_must_be_a_dict_of_scalars() -> None:
    assert jsonable_metrics({"a": torch.tensor(2.5), "b": np.int64(3), "c": "x"}) == {
        "a": 2.5,
        "b": 3,
        "c": "x",
    }
    with pytest.raises(TypeError, match="must return a dict of metrics"):
        jsonable_metrics(0.5)
    with pytest.raises(TypeError, match="metric 'a'"):
        jsonable_metrics({"a": [1.0, 2.0]})
    with pytest.raises(TypeError, match="metric 'a'"):
        jsonable_metrics({"a": torch.ones(3)})


def _trial(key: str, value: float) -> TrialRecord:
    return TrialRecord(key, {"lr": float(key)}, {"val": value})


def test_select_best() -> None:
    trials = [_trial("1", 70.0), _trial("2", float("nan")), _trial("3", 72.0), _trial("4", 72.0)]
    assert select_best(trials, "val", "max").key == "3"  # first of the tied best
    assert select_best(trials, "val", "min").key == "1"
    with pytest.raises(ValueError, match="no trial has a finite 'val'"):
        select_best([_trial("2", float("nan"))], "val", "max")
    with pytest.raises(ConfigError, match="trial 1 has no metric 'top1'"):
        select_best(trials, "top1", "max")


def test_progress_line_counts_best_and_eta() -> None:
    now = [100.0]
    lines: list[str] = []
    progress = Progress(
        "ft search",
        total=10,
        already_done=2,
        metric="val",
        mode="max",
        show=("lr",),
        log=lines.append,
        clock=lambda: now[0],
    )
    progress.consider({"lr": 0.5}, {"val": 60.0})  # from the ledger: not counted again
    now[0] = 130.0
    progress.finished({"lr": 0.031}, {"val": 71.25})
    now[0] = 160.0
    progress.finished({"lr": 0.2}, {"val": 65.0})
    # 2 trials in 60 s this session, 6 left: 3 minutes
    assert lines[-1] == (
        "[ft search] 4/10 done | best val 71.25 (lr=0.031) | elapsed 0:01:00 | ETA 0:03:00"
    )
    assert format_duration(float("nan")) == "?" and format_duration(3725) == "1:02:05"


def test_packages_import_without_ray_and_workers_without_torch() -> None:
    """Reports, analysis and the experiments API import with Ray unavailable; the module a Ray
    worker imports for each trial pulls in neither Ray nor torch (workers start faster)."""
    code = (
        "import sys\n"
        "sys.modules['ray'] = None\n"  # any import of Ray now fails
        "import bissl_dense.experiments.trial\n"
        "assert 'torch' not in sys.modules, 'the trial module imported torch'\n"
        "import bissl_dense.reports, bissl_dense.analysis, bissl_dense.baselines\n"
        "from bissl_dense.experiments import run_search, run_seeds, run_arm\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[2])
