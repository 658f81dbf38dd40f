"""Runs a set of trials on Ray Tune and records each result in the ledger as it arrives.

Imported only when trials run (``bissl_dense.experiments.search`` imports it lazily), so the rest
of the package works without Ray. Ray Tune is the executor: it places trials on the CPUs/GPUs of
the local machine or of a cluster (``ray.init(address=...)``), one GPU per trial by default when
there are GPUs (Ray sets ``CUDA_VISIBLE_DEVICES`` per trial, so a trainable uses ``cuda:0``).
The trials to run are a fixed list (``tune.grid_search`` over the pending jobs): which
configurations exist is decided beforehand and reproducibly (``search.sample_configurations``),
and the ledger, not Ray's experiment snapshot, decides what is finished.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import ray
from ray import tune

from bissl_dense.errors import ConfigError
from bissl_dense.experiments.ledger import Ledger
from bissl_dense.experiments.progress import Progress
from bissl_dense.experiments.search import RayOptions
from bissl_dense.experiments.trial import Trainable, run_trial

__all__ = ["ray_session", "run_trials"]


class _LedgerCallback(tune.Callback):
    """Driver side: record each trial's result in the ledger (atomically) and print progress."""

    def __init__(self, jobs: Mapping[str, dict[str, Any]], ledger: Ledger, progress: Progress):
        self.jobs, self.ledger, self.progress = jobs, ledger, progress

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any):
        key = result.get("bissl_key")
        if key is None or key in self.ledger:
            return
        metrics = json.loads(result["bissl_metrics"])
        config = self.jobs[key]
        self.ledger.record(key, config, metrics, wall_s=result.get("bissl_wall_s", math.nan))
        self.progress.finished(config, metrics)


def _last_line(error: BaseException) -> str:
    """The last line of a (remote) error's text: Ray's carry the whole worker traceback."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[-1] if lines else type(error).__name__


def _trial_name(trial: Any) -> str:
    return f"trial_{trial.config['job']['key']}"


def _init_ray(address: str | None, num_cpus: int | None, object_store_memory: int | None) -> bool:
    """Connect to ``address`` or start a local Ray; return whether this call started it."""
    if ray.is_initialized():
        return False
    if address is not None:
        ray.init(address=address, logging_level=logging.WARNING)
    else:
        ray.init(
            num_cpus=num_cpus,
            include_dashboard=False,
            logging_level=logging.WARNING,
            object_store_memory=object_store_memory,
        )
    return True


@contextmanager
def ray_session(
    address: str | None = None,
    num_cpus: int | None = None,
    object_store_memory: int | None = None,
) -> Iterator[None]:
    """Ray connected for the block: one start for several searches (each start costs seconds).

    Searches inside the block reuse this Ray; it is shut down at the end only if the block
    started it.
    """
    started = _init_ray(address, num_cpus, object_store_memory)
    try:
        yield
    finally:
        if started:
            ray.shutdown()


def _resources(requested: Mapping[str, float] | None, local: bool) -> dict[str, float]:
    cluster = ray.cluster_resources()
    if requested is None:
        return {"cpu": 1, "gpu": 1 if cluster.get("GPU", 0) >= 1 else 0}
    resources = {str(k).lower(): float(v) for k, v in requested.items()}
    if local:  # a cluster may autoscale; a local machine never gets more
        for name, ray_name in (("cpu", "CPU"), ("gpu", "GPU")):
            if resources.get(name, 0) > cluster.get(ray_name, 0):
                raise ConfigError(
                    f"each trial asks for {resources[name]:g} {name.upper()}(s) but this machine's "
                    f"Ray has {cluster.get(ray_name, 0):g}; lower resources_per_trial"
                )
    return resources


def run_trials(
    trainable: Trainable,
    jobs: Mapping[str, dict[str, Any]],
    ledger: Ledger,
    progress: Progress,
    *,
    storage_dir: Path,
    experiment: str,
    options: RayOptions,
    log: Callable[[str], None],
) -> list[tuple[str, str]]:
    """Run ``jobs`` (key → config) on Ray Tune; return (key, error) of the trials that failed."""
    address = options.address
    with ray_session(address, options.num_cpus, options.object_store_memory):
        resources = _resources(options.resources_per_trial, local=address is None)
        cluster = ray.cluster_resources()
        log(
            f"[{progress.name}] running {len(jobs)} trial(s) on Ray "
            f"({'cluster ' + address if address else 'local'}: {cluster.get('CPU', 0):g} CPU, "
            f"{cluster.get('GPU', 0):g} GPU), {resources.get('cpu', 0):g} CPU + "
            f"{resources.get('gpu', 0):g} GPU per trial"
        )
        callback = _LedgerCallback(jobs, ledger, progress)
        tuner = tune.Tuner(
            tune.with_resources(
                tune.with_parameters(run_trial, user_trainable=trainable), resources
            ),
            param_space={"job": tune.grid_search([{"key": k, **c} for k, c in jobs.items()])},
            tune_config=tune.TuneConfig(
                num_samples=1,
                max_concurrent_trials=options.max_concurrent_trials,
                reuse_actors=options.reuse_actors,
                trial_name_creator=_trial_name,
                trial_dirname_creator=_trial_name,
            ),
            run_config=tune.RunConfig(
                name=experiment,
                storage_path=str(storage_dir.resolve()),
                callbacks=[callback],
                verbose=options.verbose,
                failure_config=tune.FailureConfig(max_failures=0, fail_fast=False),
            ),
        )
        grid = tuner.fit()
        return [
            (result.config["job"]["key"], _last_line(result.error))
            for result in grid
            if result.error is not None
        ]
