"""Hooks of the pretext stage: per-step method updates and export in the published format."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mmengine.dist import is_main_process
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper
from mmengine.registry import HOOKS
from torch import nn


def unwrap_model(model: nn.Module) -> nn.Module:
    """The user model inside an mmengine/DDP wrapper."""
    return model.module if is_model_wrapper(model) else model


@HOOKS.register_module()
class PretextStepHook(Hook):
    """Calls ``model.after_optimizer_step(step, max_steps)`` after every optimizer step.

    mmengine's ``MMDistributedDataParallel.train_step`` runs the optimizer itself and never
    calls the wrapped model's ``train_step``, so per-step updates (BYOL's EMA target) cannot
    live in the model's ``train_step``; a hook sees every step in both the single-process and
    the DDP case. ``step`` is the 0-based index of the step just taken. With gradient
    accumulation, iterations that only accumulate are skipped.

    Priority ``ABOVE_NORMAL``: before ``CheckpointHook`` (``VERY_LOW``) saves the state.
    """

    priority = "ABOVE_NORMAL"

    def before_train(self, runner: Any) -> None:
        model = unwrap_model(runner.model)
        if not callable(getattr(model, "after_optimizer_step", None)):
            raise TypeError(
                f"PretextStepHook needs a model with after_optimizer_step(step, max_steps); "
                f"{type(model).__name__} has none (remove the hook from custom_hooks)"
            )

    def after_train_iter(
        self,
        runner: Any,
        batch_idx: int,
        data_batch: Any = None,
        outputs: dict | None = None,
    ) -> None:
        optim_wrapper = runner.optim_wrapper
        should_update = getattr(optim_wrapper, "should_update", None)
        if callable(should_update) and not should_update():
            return
        unwrap_model(runner.model).after_optimizer_step(runner.iter, runner.max_iters)


def json_plain(value: Any) -> Any:
    """A JSON-compatible copy of a config value (tuples become lists, objects their repr)."""
    if isinstance(value, dict):
        return {str(k): json_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_plain(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return repr(value)


def export_config(cfg: Any, model: nn.Module, runner: Any) -> dict[str, Any]:
    """The run's settings for the published ``..._config_id-<id>.json`` file."""
    loader = cfg.get("train_dataloader", {})
    batch_per_process = int(loader.get("batch_size", 0))
    return {
        "task": getattr(model, "task_name", type(model).__name__.lower()),
        "arch": getattr(model, "arch", None),
        "batch_size": batch_per_process * runner.world_size,
        "world_size": runner.world_size,
        "iterations": runner.iter,
        "max_iters": runner.max_iters,
        "epochs": runner.iter / max(len(runner.train_dataloader), 1),
        "seed": runner.seed,
        "model": json_plain(cfg.get("model", {})),
        "augmentation": json_plain(loader.get("dataset", {}).get("augmentation", {})),
        "optimizer": json_plain(cfg.get("optim_wrapper", {})),
        "auto_scale_lr": json_plain(cfg.get("auto_scale_lr", None)),
        "param_scheduler": json_plain(cfg.get("param_scheduler", [])),
        "final_lr": runner.optim_wrapper.get_lr(),
    }


@HOOKS.register_module()
class ExportPretextHook(Hook):
    """After training, writes ``Pretext_<task>_arch-<arch>_{backbone,head,config}_id-<id>``.

    Files go to ``<work_dir>/<out_subdir>`` via
    :func:`bissl_dense.pretext.weights.export_pretext` (atomic writes). ``run_id`` defaults to
    the runner's timestamp.
    """

    priority = "LOWEST"

    def __init__(self, out_subdir: str = "export", run_id: str | None = None) -> None:
        self.out_subdir = out_subdir
        self.run_id = run_id
        self.exported: dict[str, Path] = {}

    def after_train(self, runner: Any) -> None:
        from bissl_dense.pretext.weights import export_pretext

        if not is_main_process():
            return
        model = unwrap_model(runner.model)
        for name in ("backbone", "head_state_dict", "task_name", "arch"):
            if not hasattr(model, name):
                raise TypeError(
                    f"ExportPretextHook needs a PretextMethod model; {type(model).__name__} "
                    f"has no '{name}'"
                )
        run_id = self.run_id or str(runner.timestamp)
        self.exported = export_pretext(
            out_dir=Path(runner.work_dir) / self.out_subdir,
            backbone=model.backbone,
            head_state=model.head_state_dict(),
            config=export_config(runner.cfg, model, runner),
            task=model.task_name,
            arch=model.arch,
            run_id=run_id,
        )
        runner.logger.info(
            "exported pretext weights: " + ", ".join(str(p) for p in self.exported.values())
        )
