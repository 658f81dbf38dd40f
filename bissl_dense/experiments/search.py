"""The task-agnostic random hyper-parameter search of ``bissl compare`` (SPEC §4, paper App. B.2).

Each arm's fine-tuning hyper-parameters are chosen by a random search: ``num_samples``
configurations (100 in the paper) with the learning rate and the weight decay drawn
log-uniformly from [1e-4, 1] and [1e-5, 1e-2]; every configuration is one fine-tuning run, and
the configuration with the best validation metric wins.

A trainable is a plain callable ``config -> dict of metrics``. ``config`` holds the sampled
hyper-parameters, the ``fixed`` entries, ``seed`` (the training seed) and ``trial_dir`` (a
directory for this trial's files that stays the same when the search is restarted, so a
trainable that checkpoints there can resume an interrupted run). It returns e.g.
``{"val_top1": 71.3, "test_top1": 70.9}``.

The configurations are a pure function of (space, seed, index): configuration ``i`` is drawn
from its own generator seeded with (seed, i), so a restarted search, or one extended from 50 to
100 configurations, keeps the configurations it had. Trials run on Ray Tune (``_ray.py``):
locally, or on a cluster with ``address`` (the same call, nothing else changes). Each finished
trial is recorded at once in ``<storage_dir>/search.json`` (``ledger.py``): a killed search,
started again with the same arguments, runs only the trials that had not finished.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bissl_dense.errors import ConfigError
from bissl_dense.experiments.ledger import Ledger, TrialRecord
from bissl_dense.experiments.progress import Progress, is_better, print_line

__all__ = [
    "DEFAULT_SPACE",
    "Choice",
    "LogUniform",
    "RayOptions",
    "SearchResult",
    "TrialsFailedError",
    "Uniform",
    "run_search",
    "sample_configurations",
    "select_best",
]

Trainable = Callable[[dict[str, Any]], Mapping[str, Any]]


@dataclass(frozen=True)
class LogUniform:
    """log(value) uniform in [log(low), log(high)]."""

    low: float
    high: float

    def __post_init__(self) -> None:
        if not 0 < self.low < self.high:
            raise ConfigError(f"LogUniform needs 0 < low < high, got ({self.low}, {self.high})")

    def sample(self, rng: np.random.Generator) -> float:
        return float(np.exp(rng.uniform(math.log(self.low), math.log(self.high))))

    def to_dict(self) -> dict[str, Any]:
        return {"type": "loguniform", "low": self.low, "high": self.high}


@dataclass(frozen=True)
class Uniform:
    """value uniform in [low, high]."""

    low: float
    high: float

    def __post_init__(self) -> None:
        if not self.low < self.high:
            raise ConfigError(f"Uniform needs low < high, got ({self.low}, {self.high})")

    def sample(self, rng: np.random.Generator) -> float:
        return float(rng.uniform(self.low, self.high))

    def to_dict(self) -> dict[str, Any]:
        return {"type": "uniform", "low": self.low, "high": self.high}


@dataclass(frozen=True)
class Choice:
    """One of ``values``, each equally likely."""

    values: tuple[Any, ...]

    def __post_init__(self) -> None:
        if not self.values:
            raise ConfigError("Choice needs at least one value")

    def sample(self, rng: np.random.Generator) -> Any:
        return self.values[int(rng.integers(len(self.values)))]

    def to_dict(self) -> dict[str, Any]:
        return {"type": "choice", "values": list(self.values)}


Domain = LogUniform | Uniform | Choice

#: SPEC §4: learning rate log-uniform in [1e-4, 1], weight decay log-uniform in [1e-5, 1e-2].
DEFAULT_SPACE: dict[str, Domain] = {
    "lr": LogUniform(1e-4, 1.0),
    "weight_decay": LogUniform(1e-5, 1e-2),
}

_RESERVED = ("seed", "trial_dir")


def sample_configurations(
    space: Mapping[str, Domain], num_samples: int, seed: int = 0
) -> list[dict[str, Any]]:
    """``num_samples`` configurations; configuration i depends only on (space, seed, i)."""
    if num_samples < 1:
        raise ConfigError(f"num_samples must be >= 1, got {num_samples}")
    if not space:
        raise ConfigError("the search space is empty")
    configs = []
    for index in range(num_samples):
        rng = np.random.default_rng([seed, index])
        configs.append({name: domain.sample(rng) for name, domain in space.items()})
    return configs


@dataclass(frozen=True)
class SearchResult:
    """All finished trials (in configuration order) and the best one under ``metric``/``mode``."""

    metric: str
    mode: str
    trials: tuple[TrialRecord, ...]
    best: TrialRecord
    hyperparameters: tuple[str, ...]

    @property
    def best_config(self) -> dict[str, Any]:
        """The winning configuration without ``seed``/``trial_dir``, ready for ``run_seeds``."""
        return {k: v for k, v in self.best.config.items() if k not in _RESERVED}

    def table(self) -> list[dict[str, Any]]:
        """One flat row per trial (hyper-parameters and metrics), e.g. for the search scatter."""
        return [
            {"trial": t.key, **{k: t.config[k] for k in self.hyperparameters}, **t.metrics}
            for t in self.trials
        ]


class TrialsFailedError(RuntimeError):
    """Some trials raised; the others are recorded, and running again retries only the failed."""


def select_best(trials: Sequence[TrialRecord], metric: str, mode: str) -> TrialRecord:
    """The trial with the best finite ``metric`` (the first one on ties)."""
    if mode not in ("max", "min"):
        raise ConfigError(f"mode must be 'max' or 'min', got {mode!r}")
    best: TrialRecord | None = None
    for trial in trials:
        if metric not in trial.metrics:
            raise ConfigError(
                f"trial {trial.key} has no metric {metric!r}; it returned {sorted(trial.metrics)}"
            )
        if is_better(trial.metrics[metric], None if best is None else best.metrics[metric], mode):
            best = trial
    if best is None:
        raise ValueError(f"no trial has a finite {metric!r} (all diverged?)")
    return best


def _space_identity(space: Mapping[str, Domain]) -> dict[str, Any]:
    for name, domain in space.items():
        if name in _RESERVED:
            raise ConfigError(f"{name!r} is set by the search itself; rename that search key")
        if not hasattr(domain, "sample"):
            raise ConfigError(
                f"search key {name!r}: {domain!r} is not a LogUniform, Uniform or Choice"
            )
    return {name: domain.to_dict() for name, domain in space.items()}


@dataclass(frozen=True)
class RayOptions:
    """Where and how trials run (see ``run_search`` for each field)."""

    resources_per_trial: Mapping[str, float] | None = None
    address: str | None = None
    num_cpus: int | None = None
    max_concurrent_trials: int | None = None
    object_store_memory: int | None = None
    reuse_actors: bool = False
    verbose: int = 0


def execute(
    trainable: Trainable,
    jobs: dict[str, dict[str, Any]],
    ledger: Ledger,
    storage_dir: Path,
    kind: str,
    options: RayOptions,
    *,
    name: str,
    metric: str | None,
    mode: str,
    show: Sequence[str],
    log: Callable[[str], None],
) -> None:
    """Run the jobs the ledger lacks on Ray Tune (shared by the search and the seed runs)."""
    progress = Progress(
        name, len(jobs), sum(k in ledger for k in jobs), metric, mode, show=show, log=log
    )
    for key, record in ledger.records().items():
        if key in jobs:
            progress.consider(record.config, record.metrics)
    pending = {key: config for key, config in jobs.items() if key not in ledger}
    log(progress.line() + f" | {len(pending)} to run")
    if not pending:
        return
    from bissl_dense.experiments._ray import run_trials  # Ray only when trials run

    failures = run_trials(
        trainable,
        pending,
        ledger,
        progress,
        storage_dir=storage_dir / "ray",
        experiment=f"{kind}-{time.strftime('%Y%m%d-%H%M%S')}",
        options=options,
        log=log,
    )
    missing = [key for key in pending if key not in ledger]
    if failures or missing:
        errors = dict(failures)
        details = "; ".join(f"{key}: {errors.get(key, 'no result reported')}" for key in missing)
        raise TrialsFailedError(
            f"{len(missing)} of {len(jobs)} {kind} trials failed ({details[:2000]}). The finished "
            f"ones are recorded in {ledger.path}; run the same command again to retry only the "
            f"failed ones. Ray's logs: {storage_dir / 'ray'}"
        )


def run_search(
    trainable: Trainable,
    space: Mapping[str, Domain] | None = None,
    num_samples: int = 100,
    storage_dir: str | Path = "work_dirs/search",
    metric: str = "val_top1",
    mode: str = "max",
    resources_per_trial: Mapping[str, float] | None = None,
    address: str | None = None,
    resume: bool = True,
    *,
    seed: int = 0,
    trial_seed: int = 0,
    fixed: Mapping[str, Any] | None = None,
    name: str = "search",
    num_cpus: int | None = None,
    max_concurrent_trials: int | None = None,
    object_store_memory: int | None = None,
    reuse_actors: bool = False,
    verbose: int = 0,
    log: Callable[[str], None] = print_line,
) -> SearchResult:
    """Random search over ``space`` (default ``DEFAULT_SPACE``); see the module docstring.

    ``resources_per_trial``: e.g. ``{"cpu": 4, "gpu": 1}``; default one CPU, plus one GPU when the
    Ray cluster has GPUs (trials then spread over the GPUs). ``address``: a Ray cluster to
    join, run from one of its nodes (``"auto"`` or ``"head-host:6379"``); on a multi-node
    cluster ``storage_dir`` must be on a filesystem every node sees. (A Ray Client address,
    ``ray://...``, runs Tune's driver loop on the head node, so the ledger and the progress
    lines would be written there.) ``num_cpus``: CPUs of a local Ray (default all).
    ``reuse_actors``: run several trials in one worker process (saves the seconds a worker takes
    to start, which matters only for trials of seconds; a trainable must then not rely on
    process-global state it leaves behind).
    ``resume=False`` sets an existing ledger aside and starts over. Trials that raise do not
    stop the others; they make this call raise ``TrialsFailedError`` at the end.
    """
    if mode not in ("max", "min"):
        raise ConfigError(f"mode must be 'max' or 'min', got {mode!r}")
    space = dict(DEFAULT_SPACE if space is None else space)
    fixed = dict(fixed or {})
    if clash := set(fixed) & (set(space) | set(_RESERVED)):
        raise ConfigError(
            f"fixed entries {sorted(clash)} clash with the search keys or seed/trial_dir"
        )
    storage_dir = Path(storage_dir)
    identity = {
        "kind": "search",
        "space": _space_identity(space),
        "seed": seed,
        "trial_seed": trial_seed,
        "fixed": fixed,
    }
    ledger = Ledger(storage_dir / "search.json", identity)
    if not resume and (old := ledger.set_aside()):
        log(f"[{name}] starting over; previous ledger kept as {old}")
    configs = sample_configurations(space, num_samples, seed)
    width = max(4, len(str(num_samples - 1)))
    jobs = {
        f"{index:0{width}d}": {
            **fixed,
            **config,
            "seed": trial_seed,
            "trial_dir": str((storage_dir / "trials" / f"{index:0{width}d}").resolve()),
        }
        for index, config in enumerate(configs)
    }
    options = RayOptions(
        resources_per_trial,
        address,
        num_cpus,
        max_concurrent_trials,
        object_store_memory,
        reuse_actors,
        verbose,
    )
    execute(
        trainable,
        jobs,
        ledger,
        storage_dir,
        "search",
        options,
        name=name,
        metric=metric,
        mode=mode,
        show=tuple(space),
        log=log,
    )
    records = ledger.records()
    trials = tuple(records[key] for key in jobs)
    best = select_best(trials, metric, mode)
    log(
        f"[{name}] best {metric} {best.metrics[metric]:.4g} at "
        + ", ".join(
            f"{k}={best.config[k]:.3g}"
            if isinstance(best.config[k], float)
            else f"{k}={best.config[k]}"
            for k in space
        )
    )
    return SearchResult(metric, mode, trials, best, tuple(space))
