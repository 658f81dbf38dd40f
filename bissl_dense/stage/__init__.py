"""BiSSL's training stage, wired from a pretext method and a downstream task (SPEC §2–§3).

Framework agnostic above the core: the mmengine loop (:mod:`bissl_dense.engine.bissl_loop`) and
the detectron2 trainer both build their stage with :func:`build_bilevel_step` and the batch
sources of :mod:`bissl_dense.stage.data`; they differ only in how they log, checkpoint and
launch processes.

A task plugs in with a :class:`DownstreamTask`: its model, its ``upper_loss(batch, backbone)``
and the lower↔upper parameter-name correspondence. Nothing else here knows the task.
"""

from bissl_dense.stage.builder import (
    DownstreamTask,
    LevelOptimizers,
    build_bilevel_step,
    build_level_optimizers,
    level_schedulers,
    pretext_lower_loss,
)
from bissl_dense.stage.data import (
    SeededBatchStack,
    SeededDataset,
    batch_source,
    move_to_device,
)

__all__ = [
    "DownstreamTask",
    "LevelOptimizers",
    "SeededBatchStack",
    "SeededDataset",
    "batch_source",
    "build_bilevel_step",
    "build_level_optimizers",
    "level_schedulers",
    "move_to_device",
    "pretext_lower_loss",
]
