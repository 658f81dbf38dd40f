"""Hooks of the classification stages."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mmengine.dist import is_main_process
from mmengine.hooks import Hook
from mmengine.registry import HOOKS

from bissl_dense.engine.hooks import unwrap_model

__all__ = ["ExportHeadHook"]


@HOOKS.register_module()
class ExportHeadHook(Hook):
    """After the head warm-up, writes the linear head to ``<work_dir>/<out_subdir>/head.pth``.

    BiSSL's upper level starts from this head (``model.task.head_checkpoint``, SPEC §3).
    """

    priority = "LOWEST"

    def __init__(self, out_subdir: str = "export") -> None:
        self.out_subdir = out_subdir
        self.path: Path | None = None

    def after_train(self, runner: Any) -> None:
        if not is_main_process():
            return
        model = unwrap_model(runner.model)
        self.path = Path(runner.work_dir) / self.out_subdir / "head.pth"
        model.save_head(self.path)
        runner.logger.info(f"exported the warmed-up head: {self.path}")
