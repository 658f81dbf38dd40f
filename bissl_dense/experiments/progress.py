"""Progress lines of a search or seed run: trials done, best so far, estimated time left."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

__all__ = ["Progress", "format_duration", "is_better", "print_line"]


def print_line(line: str) -> None:
    """The default ``log``: print and flush.

    A module-level function rather than ``print`` itself: Ray pickles the experiment's callbacks
    (ours holds the ``log`` function), and Ray temporarily replaces ``builtins.print`` (its tqdm
    support), after which pickling the original ``print`` by reference fails.
    """
    print(line, flush=True)


def format_duration(seconds: float) -> str:
    """``1:02:03`` style; ``?`` when unknown."""
    if not math.isfinite(seconds) or seconds < 0:
        return "?"
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def is_better(value: Any, best: Any, mode: str) -> bool:
    """Whether ``value`` beats ``best`` under ``mode``; NaN/missing never beats anything."""
    if not isinstance(value, int | float) or isinstance(value, bool) or math.isnan(value):
        return False
    if best is None or (isinstance(best, float) and math.isnan(best)):
        return True
    return value > best if mode == "max" else value < best


class Progress:
    """Counts finished trials and prints one line per trial.

    The ETA is the time left at this session's throughput (trials finished per second since it
    started, so it accounts for concurrent trials); trials found finished in the ledger at start
    count as done but not towards the throughput.
    """

    def __init__(
        self,
        name: str,
        total: int,
        already_done: int,
        metric: str | None = None,
        mode: str = "max",
        show: Sequence[str] = (),
        log: Callable[[str], None] = print_line,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name, self.total, self.metric, self.mode = name, total, metric, mode
        self.show, self.log, self.clock = tuple(show), log, clock
        self.done = already_done
        self.done_this_session = 0
        self.started = clock()
        self.best_value: float | None = None
        self.best_config: Mapping[str, Any] = {}

    def consider(self, config: Mapping[str, Any], metrics: Mapping[str, Any]) -> None:
        """Take a finished trial into the best-so-far without counting it (ledger contents)."""
        if self.metric is not None and is_better(
            metrics.get(self.metric), self.best_value, self.mode
        ):
            self.best_value = float(metrics[self.metric])
            self.best_config = config

    def eta_seconds(self) -> float:
        if self.done_this_session == 0:
            return math.nan
        rate = self.done_this_session / max(self.clock() - self.started, 1e-9)
        return (self.total - self.done) / rate

    def line(self) -> str:
        parts = [f"[{self.name}] {self.done}/{self.total} done"]
        if self.metric is not None:
            if self.best_value is None:
                parts.append(f"best {self.metric}: none yet")
            else:
                shown = ", ".join(
                    f"{k}={self.best_config[k]:.3g}"
                    if isinstance(self.best_config[k], float)
                    else f"{k}={self.best_config[k]}"
                    for k in self.show
                    if k in self.best_config
                )
                parts.append(
                    f"best {self.metric} {self.best_value:.4g}" + (f" ({shown})" if shown else "")
                )
        parts.append(f"elapsed {format_duration(self.clock() - self.started)}")
        parts.append(f"ETA {format_duration(self.eta_seconds())}")
        return " | ".join(parts)

    def finished(self, config: Mapping[str, Any], metrics: Mapping[str, Any]) -> None:
        """Count a trial that finished in this session and print the progress line."""
        self.done += 1
        self.done_this_session += 1
        self.consider(config, metrics)
        self.log(self.line())
