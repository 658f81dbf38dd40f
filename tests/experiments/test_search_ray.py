"""The search and the seed runs on a real (local) Ray Tune, with a real small trainable.

Ray starts once for the in-process tests (10-15 s on 2 busy cores); the resume test kills a
whole search process (and the Ray it started) mid-search and runs the same search again.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bissl_dense.errors import ConfigError
from bissl_dense.experiments.search import (
    DEFAULT_SPACE,
    TrialsFailedError,
    run_search,
    sample_configurations,
)
from bissl_dense.experiments.seeds import run_arm, run_seeds
from tests.experiments import _toy

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
OBJECT_STORE = 80 * 1024 * 1024  # Ray's minimum is 75 MiB; the trials pass only small dicts


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    import ray
    from ray import cloudpickle

    # Ray workers do not import this project's tests package: ship the toy trainables by value.
    cloudpickle.register_pickle_by_value(_toy)
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        object_store_memory=OBJECT_STORE,
        logging_level=logging.WARNING,
    )
    yield
    ray.shutdown()


def test_arm_search_seeds_failures_and_resume(local_ray: None, tmp_path: Path) -> None:
    """Search and seeds compute what the trainable computes; crashed trials are retried alone."""
    configs = sample_configurations(DEFAULT_SPACE, 4, seed=0)
    failing = [f"{i:04d}" for i, c in enumerate(configs) if c["lr"] > 0.05]
    assert 0 < len(failing) < 4  # this seed gives both kinds
    options = {
        "num_samples": 4,
        "seeds": [5, 6],
        "metric": "val_loss",
        "mode": "min",
        "reuse_actors": True,
    }
    with pytest.raises(TrialsFailedError, match="simulated crash") as error:
        run_arm("ft", _toy.train_failing_above, tmp_path, log=lambda line: None, **options)
    assert f"{len(failing)} of 4 search trials failed" in str(error.value)
    ledger = json.loads((tmp_path / "search" / "search.json").read_text())
    assert sorted(ledger["trials"]) == sorted({f"{i:04d}" for i in range(4)} - set(failing))

    lines: list[str] = []
    arm = run_arm("ft", _toy.train, tmp_path, log=lines.append, **options)
    assert f"{len(failing)} to run" in lines[0]  # only the crashed trials ran again
    assert [t.key for t in arm.search.trials] == ["0000", "0001", "0002", "0003"]
    for trial, config in zip(arm.search.trials, configs):
        assert trial.config["lr"] == config["lr"] and trial.config["seed"] == 0
        assert Path(trial.config["trial_dir"]).is_dir()
        assert trial.metrics == _toy.train(trial.config)  # the real computation, in a worker
    losses = [_toy.train(c)["val_loss"] for c in configs]
    assert arm.search.best_config == configs[losses.index(min(losses))]
    assert any(line.startswith("[ft search] 4/4 done | best val_loss") for line in lines)
    assert set(arm.search.table()[0]) == {
        "trial",
        "lr",
        "weight_decay",
        "val_top1",
        "test_top1",
        "val_loss",
    }
    assert arm.seeds.config == arm.search.best_config
    assert [t.config["seed"] for t in arm.seeds.trials] == [5, 6]
    expected = [_toy.train({**arm.search.best_config, "seed": s})["test_top1"] for s in (5, 6)]
    assert arm.seeds.values("test_top1") == expected

    # everything is in the ledgers: running the arm again runs nothing
    again: list[str] = []
    start = time.perf_counter()
    assert run_arm("ft", _toy.train, tmp_path, log=again.append, **options) == arm
    assert time.perf_counter() - start < 5
    assert "0 to run" in again[0] and "0 to run" in again[2]
    with pytest.raises(ConfigError, match=r"asks for 1 GPU\(s\) but this machine's Ray has 0"):
        run_search(
            _toy.train,
            num_samples=1,
            storage_dir=tmp_path / "gpu",
            resources_per_trial={"cpu": 1, "gpu": 1},
            log=lines.append,
        )
    with pytest.raises(ConfigError, match="different experiment"):
        run_seeds(
            _toy.train,
            {**arm.search.best_config, "lr": 0.5},
            seeds=[5, 6],
            storage_dir=tmp_path / "seeds",
            log=lines.append,
        )


def test_callback_pickles_while_ray_replaces_print(tmp_path: Path) -> None:
    """Tune pickles its callbacks; Ray's tqdm support swaps ``builtins.print`` meanwhile, which
    made pickling a callback that held ``print`` itself fail (seen in the resume test)."""
    import builtins

    from ray import cloudpickle

    from bissl_dense.experiments._ray import _LedgerCallback
    from bissl_dense.experiments.ledger import Ledger
    from bissl_dense.experiments.progress import Progress

    callback = _LedgerCallback({}, Ledger(tmp_path / "ledger.json", {}), Progress("x", 1, 0))
    original = builtins.print
    builtins.print = lambda *args, **kwargs: original(*args, **kwargs)
    try:
        restored = cloudpickle.loads(cloudpickle.dumps(callback))
    finally:
        builtins.print = original
    assert restored.progress.log.__name__ == "print_line"


SCRIPT = """
import sys
sys.path.insert(0, {repo!r})
from ray import cloudpickle
from tests.experiments import _toy
cloudpickle.register_pickle_by_value(_toy)
from bissl_dense.experiments.search import run_search

run_search(_toy.train_marked, num_samples=5, storage_dir=sys.argv[1], num_cpus=1,
           fixed={{"sleep_s": 1.5}}, object_store_memory={store}, reuse_actors=True)
"""


def test_killed_search_resumes_without_rerunning_finished_trials(
    local_ray: None, tmp_path: Path
) -> None:
    """Kill a search process mid-search (with its Ray); the same search then runs only the rest."""
    script = tmp_path / "search_script.py"
    script.write_text(textwrap.dedent(SCRIPT.format(repo=str(REPO), store=OBJECT_STORE)))
    storage = tmp_path / "storage"
    ledger_path = storage / "search.json"
    process = subprocess.Popen(
        [sys.executable, str(script), str(storage)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group: the kill takes Ray's processes too
    )
    try:
        deadline = time.monotonic() + 240
        finished: dict = {}
        while time.monotonic() < deadline and process.poll() is None:
            if ledger_path.exists():
                finished = json.loads(ledger_path.read_text())["trials"]
                if len(finished) >= 2:
                    break
            time.sleep(0.2)
        output = process.stdout.read().decode() if process.poll() is not None else ""
        assert 2 <= len(finished) < 5, output
    finally:
        with contextlib.suppress(ProcessLookupError):  # the group is gone if the search failed
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    before = json.loads(ledger_path.read_text())["trials"]
    assert 2 <= len(before) < 5

    lines: list[str] = []
    result = run_search(
        _toy.train_marked,
        num_samples=5,
        storage_dir=storage,
        fixed={"sleep_s": 1.5},
        reuse_actors=True,
        log=lines.append,
    )
    assert lines[0].startswith(f"[search] {len(before)}/5 done")
    assert lines[0].endswith(f"{5 - len(before)} to run")
    after = json.loads(ledger_path.read_text())["trials"]
    assert sorted(after) == [f"{i:04d}" for i in range(5)]
    for key in after:
        starts = list((storage / "trials" / key).glob("started-*"))
        if key in before:  # finished before the kill: kept, never run again
            assert after[key] == before[key]
            assert len(starts) == 1, key
        else:
            assert len(starts) >= 1, key
        assert after[key]["metrics"] == _toy.train(after[key]["config"])
    assert [t.key for t in result.trials] == sorted(after)
