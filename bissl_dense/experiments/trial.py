"""What runs inside a Ray worker for each trial; kept free of heavy imports.

A Ray worker imports this module to run a trial, so it imports neither torch nor the ledger's
file helpers: a trial of a small trainable then starts in about a second instead of paying for
a torch import (the trainable itself imports what it needs).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

__all__ = ["jsonable_metrics", "run_trial"]

Trainable = Callable[[dict[str, Any]], Mapping[str, Any]]


def jsonable_metrics(metrics: Any, source: str = "the trainable") -> dict[str, Any]:
    """Metrics as JSON-safe Python values (numpy/torch scalars become floats); NaN kept as NaN.

    Anything but a mapping of names to numbers, strings, booleans or None is an error naming the
    offending entry: a trainable must return e.g. ``{"val_top1": 71.3, "test_top1": 70.9}``.
    """
    if not isinstance(metrics, Mapping):
        raise TypeError(
            f"{source} returned {type(metrics).__name__}; it must return a dict of metrics, "
            "e.g. {'val_top1': 71.3, 'test_top1': 70.9}"
        )
    clean: dict[str, Any] = {}
    for name, value in metrics.items():
        if not isinstance(name, str):
            raise TypeError(f"{source} returned a metric named {name!r}; names must be strings")
        if value is None or isinstance(value, bool | str | int | float):
            clean[name] = value
            continue
        item = None
        if callable(getattr(value, "item", None)):  # numpy or torch scalar / one-element tensor
            try:
                item = value.item()
            except (ValueError, RuntimeError):
                item = None
        if not isinstance(item, bool | int | float):
            raise TypeError(
                f"{source} returned metric {name!r} = {value!r} ({type(value).__name__}); "
                "metrics must be numbers, strings, booleans or None"
            )
        clean[name] = item
    return clean


def run_trial(ray_config: dict[str, Any], user_trainable: Trainable) -> None:
    """The function trainable Ray runs: call the user's trainable and report its metrics once."""
    from ray import tune

    job = dict(ray_config["job"])
    key = job.pop("key")
    Path(job["trial_dir"]).mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    metrics = jsonable_metrics(user_trainable(job), source=f"the trainable (trial {key})")
    tune.report(
        {
            "bissl_key": key,
            "bissl_metrics": json.dumps(metrics),  # a string: Ray's own result keys cannot clash
            "bissl_wall_s": time.perf_counter() - start,
        }
    )
