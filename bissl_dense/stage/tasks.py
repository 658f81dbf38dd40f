"""A small registry of downstream tasks, so that configs name a task by ``type``.

A task builder is any function ``(lower_backbone, **options) -> DownstreamTask``; it receives
the pretext backbone because the correspondence maps *its* parameter names onto the
downstream model's. Builders register themselves by name::

    @register_task("ImageClassificationTask")
    def image_classification_task(lower_backbone, num_classes, ...) -> DownstreamTask: ...
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping
from typing import Any

from torch import nn

from bissl_dense.errors import ConfigError
from bissl_dense.stage.builder import DownstreamTask

__all__ = ["TASKS", "build_task", "register_task"]

TaskBuilder = Callable[..., DownstreamTask]
TASKS: dict[str, TaskBuilder] = {}


def register_task(name: str) -> Callable[[TaskBuilder], TaskBuilder]:
    def register(builder: TaskBuilder) -> TaskBuilder:
        if name in TASKS and TASKS[name] is not builder:
            raise ValueError(f"a downstream task named {name!r} is already registered")
        TASKS[name] = builder
        return builder

    return register


def build_task(cfg: Mapping[str, Any], lower_backbone: nn.Module) -> DownstreamTask:
    """Build the task ``cfg["type"]`` with the other entries of ``cfg`` as options."""
    options = dict(cfg)
    name = options.pop("type", None)
    if name not in TASKS:
        close = difflib.get_close_matches(str(name), list(TASKS), n=3)
        hint = f"did you mean {close}?" if close else f"registered tasks: {sorted(TASKS)}"
        raise ConfigError(
            f"unknown downstream task type {name!r} in model.task; {hint} (is the module that "
            "registers it in custom_imports?)"
        )
    task = TASKS[name](lower_backbone=lower_backbone, **options)
    if not isinstance(task, DownstreamTask):
        raise TypeError(f"task builder {name!r} returned {type(task).__name__}, not DownstreamTask")
    return task
