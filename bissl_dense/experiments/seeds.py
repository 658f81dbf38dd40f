"""Seed runs at an arm's chosen configuration, and one arm end to end (SPEC §4, App. B.2).

After the search, the chosen configuration is trained again with N seeds (10 in the paper); each
run reports the test metric of its best-validation checkpoint, and those N values are what the
comparison table and the permutation test use. Seed runs use the same Ray executor and the same
kind of ledger (``<storage_dir>/seeds.json``) as the search: a killed run, started again, runs
only the seeds that had not finished.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bissl_dense.errors import ConfigError
from bissl_dense.experiments.ledger import Ledger, TrialRecord
from bissl_dense.experiments.progress import print_line
from bissl_dense.experiments.search import (
    Domain,
    RayOptions,
    SearchResult,
    Trainable,
    execute,
    run_search,
)

__all__ = ["ArmResult", "SeedResults", "run_arm", "run_seeds"]


@dataclass(frozen=True)
class SeedResults:
    """The finished seed runs, in the order of the seeds asked for."""

    config: dict[str, Any]
    trials: tuple[TrialRecord, ...]

    def values(self, metric: str) -> list[float]:
        """Each seed's ``metric`` (e.g. the test top-1 of the best-validation checkpoint)."""
        missing = [t.key for t in self.trials if metric not in t.metrics]
        if missing:
            raise KeyError(
                f"seed runs {missing} have no metric {metric!r}; they returned "
                f"{sorted(self.trials[0].metrics) if self.trials else []}"
            )
        return [float(t.metrics[metric]) for t in self.trials]


def run_seeds(
    trainable: Trainable,
    config: Mapping[str, Any],
    seeds: Iterable[int] = range(10),
    storage_dir: str | Path = "work_dirs/seeds",
    resources_per_trial: Mapping[str, float] | None = None,
    address: str | None = None,
    resume: bool = True,
    *,
    name: str = "seeds",
    progress_metric: str | None = None,
    mode: str = "max",
    num_cpus: int | None = None,
    max_concurrent_trials: int | None = None,
    object_store_memory: int | None = None,
    reuse_actors: bool = False,
    verbose: int = 0,
    log: Callable[[str], None] = print_line,
) -> SeedResults:
    """Run ``trainable`` at ``config`` once per seed; resumable like ``run_search``.

    Each run gets ``config`` plus ``seed`` and ``trial_dir`` (``<storage_dir>/seed-<seed>``).
    The ledger holds ``config``: starting again with another configuration is refused (use
    another ``storage_dir`` or ``resume=False``). ``progress_metric`` is shown as "best so far".
    """
    seeds = [int(s) for s in seeds]
    if not seeds:
        raise ConfigError("no seeds to run")
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"seeds must be distinct, got {seeds}")
    config = dict(config)
    if clash := {"seed", "trial_dir"} & set(config):
        raise ConfigError(f"config must not set {sorted(clash)}: each seed run gets its own")
    storage_dir = Path(storage_dir)
    ledger = Ledger(storage_dir / "seeds.json", {"kind": "seeds", "config": config})
    if not resume and (old := ledger.set_aside()):
        log(f"[{name}] starting over; previous ledger kept as {old}")
    jobs = {
        str(seed): {
            **config,
            "seed": seed,
            "trial_dir": str((storage_dir / f"seed-{seed}").resolve()),
        }
        for seed in seeds
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
        "seeds",
        options,
        name=name,
        metric=progress_metric,
        mode=mode,
        show=("seed",),
        log=log,
    )
    records = ledger.records()
    return SeedResults(config, tuple(records[key] for key in jobs))


@dataclass(frozen=True)
class ArmResult:
    """One arm of a comparison: its search and its seed runs at the chosen configuration."""

    name: str
    search: SearchResult
    seeds: SeedResults


def run_arm(
    name: str,
    trainable: Trainable,
    storage_dir: str | Path,
    *,
    space: Mapping[str, Domain] | None = None,
    num_samples: int = 100,
    seeds: Iterable[int] = range(10),
    metric: str = "val_top1",
    mode: str = "max",
    fixed: Mapping[str, Any] | None = None,
    search_seed: int = 0,
    resources_per_trial: Mapping[str, float] | None = None,
    address: str | None = None,
    resume: bool = True,
    **ray_options: Any,
) -> ArmResult:
    """Search (``<storage_dir>/search``), then seeds at the best configuration (``.../seeds``).

    ``ray_options``: ``num_cpus``, ``max_concurrent_trials``, ``object_store_memory``,
    ``reuse_actors``, ``verbose``, ``log`` as for ``run_search``. If the search changes its
    winner (e.g. it was extended), the seed ledger refuses the new configuration: pass
    ``resume=False`` or remove ``<storage_dir>/seeds``.
    """
    storage_dir = Path(storage_dir)
    search = run_search(
        trainable,
        space,
        num_samples,
        storage_dir / "search",
        metric,
        mode,
        resources_per_trial,
        address,
        resume,
        seed=search_seed,
        fixed=fixed,
        name=f"{name} search",
        **ray_options,
    )
    seed_runs = run_seeds(
        trainable,
        search.best_config,
        seeds,
        storage_dir / "seeds",
        resources_per_trial,
        address,
        resume,
        name=f"{name} seeds",
        progress_metric=metric,
        mode=mode,
        **ray_options,
    )
    return ArmResult(name, search, seed_runs)
