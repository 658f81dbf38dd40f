"""The record of finished trials that makes searches and seed runs resumable.

Ray Tune can restore an experiment from its own snapshot, but that snapshot is written on a timer,
so a run killed right after a trial finished may lose it, and restoring a plain function trainable
restarts its unfinished trials from scratch anyway. The ledger is written (atomically) the moment
a trial's result reaches the driver, and a restarted ``run_search``/``run_seeds`` submits only the
trials it does not hold. Each trial also gets a stable work directory, so a trainable that
checkpoints there (an mmengine fine-tuning run with ``resume``) continues an interrupted trial
instead of starting it over.

The ledger also holds what its trials depend on (the search space and seed, or the seed runs'
configuration); opening it with different ones is an error, so results of two different
experiments are never mixed.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bissl_dense.errors import ConfigError
from bissl_dense.experiments.trial import jsonable_metrics
from bissl_dense.fileio import atomic_write_text

__all__ = ["Ledger", "TrialRecord", "jsonable_metrics"]

_VERSION = 1


@dataclass(frozen=True)
class TrialRecord:
    """One finished trial: its key, the config it ran with, the metrics it returned."""

    key: str
    config: dict[str, Any]
    metrics: dict[str, Any]
    wall_s: float = math.nan
    finished_at: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def _encode(value: Any) -> Any:
    """NaN/inf are not JSON: store them as strings, decoded back by ``_decode``."""
    if isinstance(value, float) and not math.isfinite(value):
        return {"__float__": repr(value)}
    if isinstance(value, dict):
        return {k: _encode(v) for k, v in value.items()}
    return value


def _decode(value: Any) -> Any:
    if isinstance(value, dict):
        if set(value) == {"__float__"}:
            return float(value["__float__"])
        return {k: _decode(v) for k, v in value.items()}
    return value


class Ledger:
    """A JSON file of finished trials, keyed by trial key, rewritten atomically on each record."""

    def __init__(self, path: str | Path, identity: Mapping[str, Any]) -> None:
        """Open ``path`` (created on the first record) for trials of the experiment ``identity``.

        ``identity`` (JSON-able) is what the trials depend on; an existing ledger with a
        different identity is refused with the differences named.
        """
        self.path = Path(path)
        self.identity = json.loads(json.dumps(_encode(dict(identity))))
        self._records: dict[str, TrialRecord] = {}
        if self.path.exists():
            self._load()

    def _load(self) -> None:
        try:
            data = json.loads(self.path.read_text())
        except json.JSONDecodeError as error:
            raise ConfigError(
                f"{self.path} is not a valid ledger ({error}); move it away"
            ) from None
        if data.get("version") != _VERSION:
            raise ConfigError(f"{self.path}: unknown ledger version {data.get('version')!r}")
        stored = data["identity"]
        if stored != self.identity:
            differences = [
                f"{key}: stored {stored.get(key)!r}, now {self.identity.get(key)!r}"
                for key in sorted(set(stored) | set(self.identity))
                if stored.get(key) != self.identity.get(key)
            ]
            raise ConfigError(
                f"{self.path} holds the results of a different experiment ("
                + "; ".join(differences)
                + "). Use another storage directory, restore the old settings, or pass "
                "resume=False to start over (the old ledger is kept beside it)."
            )
        for key, record in data["trials"].items():
            self._records[key] = TrialRecord(key=key, **_decode(record))

    def __contains__(self, key: str) -> bool:
        return key in self._records

    def __len__(self) -> int:
        return len(self._records)

    def records(self) -> dict[str, TrialRecord]:
        return dict(self._records)

    def record(
        self,
        key: str,
        config: Mapping[str, Any],
        metrics: Mapping[str, Any],
        wall_s: float = math.nan,
        **extra: Any,
    ) -> TrialRecord:
        """Add a finished trial and rewrite the file atomically (a kill leaves the old one)."""
        record = TrialRecord(
            key=key,
            config=dict(config),
            metrics=jsonable_metrics(metrics),
            wall_s=float(wall_s),
            finished_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            extra=dict(extra),
        )
        self._records[key] = record
        trials = {
            k: _encode(
                {
                    "config": r.config,
                    "metrics": r.metrics,
                    "wall_s": r.wall_s,
                    "finished_at": r.finished_at,
                    "extra": r.extra,
                }
            )
            for k, r in self._records.items()
        }
        document = {"version": _VERSION, "identity": self.identity, "trials": trials}
        atomic_write_text(self.path, json.dumps(document, indent=1, allow_nan=False) + "\n")
        return record

    def set_aside(self) -> Path | None:
        """Rename an existing ledger file to ``<name>.<timestamp>.old`` (for a fresh start)."""
        if not self.path.exists():
            return None
        target = self.path.with_name(f"{self.path.name}.{time.strftime('%Y%m%d-%H%M%S')}.old")
        self.path.rename(target)
        self._records.clear()
        return target
