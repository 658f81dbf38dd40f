"""A hook that kills its own process with SIGKILL at a given iteration (resume tests)."""

from __future__ import annotations

import os
import signal
from typing import Any

from mmengine.hooks import Hook
from mmengine.registry import HOOKS


@HOOKS.register_module()
class KillAtIterationHook(Hook):
    priority = "LOWEST"

    def __init__(self, iteration: int) -> None:
        self.iteration = iteration

    def before_train_iter(self, runner: Any, batch_idx: int, data_batch: Any = None) -> None:
        if runner.iter == self.iteration:
            os.kill(os.getpid(), signal.SIGKILL)
