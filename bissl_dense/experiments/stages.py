"""Running one stage config (warm-up, BiSSL, fine-tuning) the way ``bissl train`` does.

``bissl compare`` only ever runs configs: a stage is ``load_config`` → ``build_runner`` →
``runner.train()``, exactly the path of ``bissl_dense.cli.main(["train", ...])``, with the
overrides given as a mapping (no string round trip). A stage whose work directory already holds
a checkpoint is resumed (``--resume``), so a killed comparison continues each interrupted run
where it stopped instead of starting it again.

The fine-tuning trial (``finetune_trial``) is the trainable of the search and seed runs; it is
task-agnostic: it reads ``results.json`` (``bissl_dense.engine.selection``) and reports the
validation score of the best checkpoint as ``val`` and the test score of that checkpoint under
the run's own ``selection_metric`` as ``test`` (plus every test metric as ``test/<name>``).
"""

from __future__ import annotations

import gc
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = ["finetune_trial", "run_stage", "trial_metrics"]

#: Keys of a trial's config that are not fine-tuning overrides.
TRIAL_KEYS = ("config", "options", "lr", "weight_decay", "seed", "trial_dir")


def run_stage(config: str | Path, work_dir: str | Path, options: Mapping[str, Any]) -> Path:
    """Train ``config`` in ``work_dir`` with ``options`` (``--cfg-options``); resume if killed.

    Returns ``work_dir``. Problems the user can fix raise ``bissl_dense.errors.UserError``
    (``ConfigError``/``DataError``/``WeightsError``) with the message ``bissl train`` prints.
    """
    from bissl_dense.engine.runner import build_runner, load_config

    work_dir = Path(work_dir)
    resume = (work_dir / "last_checkpoint").is_file()
    runner = build_runner(load_config(config, dict(options), work_dir, resume))
    runner.train()
    del runner
    gc.collect()
    return work_dir


def trial_metrics(results: Mapping[str, Any]) -> dict[str, Any]:
    """A fine-tuning run's ``results.json`` as the flat metrics a trial reports (see module)."""
    selection = results.get("selection_metric")
    test = results.get("test") or {}
    if selection not in test:
        raise KeyError(
            f"results.json has selection metric {selection!r} but test metrics {sorted(test)}; "
            "the comparison needs the test score under the selection metric"
        )
    best_val = results.get("best_val")
    return {
        "val": float("nan") if best_val is None else float(best_val),
        "test": float(test[selection]),
        "selection_metric": str(selection),
        **{f"test/{name}": float(value) for name, value in test.items()},
    }


def finetune_trial(config: dict[str, Any]) -> dict[str, Any]:
    """One fine-tuning run of the search or the seeds (a trainable of ``run_search``).

    ``config`` holds ``config`` (the fine-tuning config file), ``options`` (its fixed
    overrides, e.g. the backbone file), the sampled ``lr``/``weight_decay``, ``seed`` and
    ``trial_dir`` (the run's work directory). A finished run (``results.json`` present) is not
    trained again.
    """
    from bissl_dense.engine.selection import RESULTS_FILE, read_results

    work_dir = Path(config["trial_dir"])
    if not (work_dir / RESULTS_FILE).is_file():
        options = {
            **dict(config.get("options") or {}),
            "optim_wrapper.optimizer.lr": float(config["lr"]),
            "optim_wrapper.optimizer.weight_decay": float(config["weight_decay"]),
            "randomness.seed": int(config["seed"]),
        }
        run_stage(config["config"], work_dir, options)
    return trial_metrics(read_results(work_dir))
