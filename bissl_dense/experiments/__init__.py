"""Experiments of ``bissl compare`` (SPEC §4): random search and seed runs on Ray Tune.

Task-agnostic: a trainable is a plain callable ``config -> dict of metrics``. Ray is imported only
when trials run, so importing this package (or ``bissl_dense.reports``) does not need Ray. The
names below are imported on first use (PEP 562): a Ray worker that only needs
``bissl_dense.experiments.trial`` then does not import torch through the ledger's file helpers.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "Ledger": "ledger",
    "TrialRecord": "ledger",
    "DEFAULT_SPACE": "search",
    "Choice": "search",
    "LogUniform": "search",
    "SearchResult": "search",
    "TrialsFailedError": "search",
    "Uniform": "search",
    "run_search": "search",
    "sample_configurations": "search",
    "select_best": "search",
    "ArmResult": "seeds",
    "SeedResults": "seeds",
    "run_arm": "seeds",
    "run_seeds": "seeds",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
