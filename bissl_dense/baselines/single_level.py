"""Single-level training on the BiSSL config: the shared machinery of two SPEC §6 baselines.

The weighted sum (1−w)·L_P + w·L_D (:mod:`bissl_dense.baselines.weighted_sum`) and continued
pretext training on mixed data (:mod:`bissl_dense.baselines.data_mix`) are compared with BiSSL on
equal terms, so they run from the BiSSL config itself (a config that inherits it and states only
its differences): the same :class:`~bissl_dense.engine.bissl_loop.BiSSLModel` (pretext backbone,
pretext head and warmed-up task head loaded the same way), the same pretext and downstream data,
the same batch sources (:func:`bissl_dense.stage.batch_source`, reproducible across restarts) and
the lower level's optimiser settings (paper App. B.9.3/B.9.4). What differs is that there is one
backbone, θ_L, trained by one optimiser for a fixed number of steps.

* :class:`SingleLevelOptimWrapperConstructor` builds that one optimiser from the config's
  ``optim_wrapper.lower`` over the pretext model (θ_L, φ_P) and, for the weighted sum, the
  downstream head φ_D (the upper parameters that are not backbone counterparts).
* :class:`SingleLevelLoop` runs the steps as mmengine iterations. Its learning rate is a pure
  function of the step (linear warm-up, then cosine to zero), and each batch source restarts at
  the number of batches consumed, so mmengine's checkpoint (model, optimiser, iteration) is the
  whole state and ``--resume`` continues at the exact step with the same batches and crops.
* :class:`ExportBackboneHook` writes ``<work_dir>/export/<name>_backbone.pth`` (θ_L with
  torchvision names, what fine-tuning's ``model.backbone_checkpoint`` reads) and a JSON config.
* :func:`write_single_level_config` writes the config of either baseline over any BiSSL config
  (``bissl compare`` does this when no ``--weighted-sum-config``/``--data-mix-config`` is given),
  so the baselines need no config file per data set.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from mmengine.dist import is_main_process
from mmengine.hooks import Hook
from mmengine.optim import OptimWrapper
from mmengine.registry import HOOKS, OPTIM_WRAPPER_CONSTRUCTORS, OPTIMIZERS
from mmengine.runner.base_loop import BaseLoop
from torch import nn
from torch.utils.data import DataLoader

from bissl_dense.core import linear_warmup_cosine
from bissl_dense.distributed import all_reduce_mean_, get_world_size
from bissl_dense.engine.bissl_loop import BiSSLModel, _loader_options, runner_batch_source
from bissl_dense.engine.hooks import json_plain, unwrap_model
from bissl_dense.errors import ConfigError

__all__ = [
    "SINGLE_LEVEL_DIFFERENCES",
    "ExportBackboneHook",
    "SingleLevelLoop",
    "SingleLevelOptimWrapperConstructor",
    "task_head_parameters",
    "write_single_level_config",
]

#: What each single-level baseline's config states over the BiSSL config it inherits: the module
#: registering its loop, and the loop, optimiser and hooks (the shipped
#: ``configs/classification/{weighted_sum,data_mix}_simclr_resnet18_synthetic.py`` state the same).
SINGLE_LEVEL_DIFFERENCES: dict[str, dict[str, Any]] = {
    "weighted_sum": dict(
        module="bissl_dense.baselines.weighted_sum",
        train_cfg=dict(type="WeightedSumLoop", w=0.5, steps=None),
        optim_wrapper=dict(
            constructor="SingleLevelOptimWrapperConstructor", include_task_head=True
        ),
    ),
    "data_mix": dict(
        module="bissl_dense.baselines.data_mix",
        train_cfg=dict(type="DataMixLoop", steps=None),
        optim_wrapper=dict(constructor="SingleLevelOptimWrapperConstructor"),
    ),
}


def write_single_level_config(kind: str, bissl_config: str | Path, path: str | Path) -> Path:
    """Write ``path``: the ``kind`` baseline's config over ``bissl_config`` (atomically).

    It inherits the BiSSL config (``_base_``) and states only :data:`SINGLE_LEVEL_DIFFERENCES`,
    with the base's ``custom_imports`` plus the baseline's module; ``bissl train`` runs it.
    """
    from mmengine.config import Config

    from bissl_dense.fileio import atomic_write_text

    if kind not in SINGLE_LEVEL_DIFFERENCES:
        raise ConfigError(
            f"no single-level baseline {kind!r}; one of {list(SINGLE_LEVEL_DIFFERENCES)}"
        )
    bissl_config = Path(bissl_config).resolve()
    differences = SINGLE_LEVEL_DIFFERENCES[kind]
    try:
        base = Config.fromfile(str(bissl_config))
    except (OSError, SyntaxError, ImportError, KeyError, ValueError, TypeError) as error:
        raise ConfigError(f"cannot read the BiSSL config '{bissl_config}': {error}") from error
    if base.get("train_cfg", {}).get("type") != "BiSSLLoop":
        raise ConfigError(
            f"'{bissl_config}' is not a BiSSL config (train_cfg.type "
            f"{base.get('train_cfg', {}).get('type')!r}, expected 'BiSSLLoop')"
        )
    imports = list(base.get("custom_imports", {}).get("imports", []))
    imports += [differences["module"]] if differences["module"] not in imports else []
    text = "\n".join(
        [
            f"# The {kind} baseline over {bissl_config.name} (written by "
            "bissl_dense.baselines.single_level.write_single_level_config).",
            f"_base_ = [{str(bissl_config)!r}]",
            f"custom_imports = dict(imports={imports!r}, allow_failed_imports=False)",
            f"train_cfg = {differences['train_cfg']!r}",
            f"optim_wrapper = {differences['optim_wrapper']!r}",
            f"custom_hooks = [dict(type='ExportBackboneHook', name={kind!r})]",
            "",
        ]
    )
    path = Path(path)
    atomic_write_text(path, text)
    return path


def task_head_parameters(model: BiSSLModel) -> list[nn.Parameter]:
    """The downstream head φ_D: trainable upper parameters that are not θ_U counterparts."""
    backbone_targets = set(model.task.correspondence.values())
    return [
        p
        for name, p in model.upper.named_parameters()
        if p.requires_grad and name not in backbone_targets
    ]


@OPTIM_WRAPPER_CONSTRUCTORS.register_module()
class SingleLevelOptimWrapperConstructor:
    """One optimiser from ``optim_wrapper.lower`` (the BiSSL config's lower level, App. B.9.4).

    ``optim_wrapper=dict(constructor="SingleLevelOptimWrapperConstructor",
    include_task_head=True)`` over a BiSSL config keeps its ``lower``/``upper`` entries; only
    ``lower`` is used. Its parameters: the pretext model's trainable ones (θ_L, φ_P; BYOL's
    target follows by EMA) and, with ``include_task_head``, the downstream head φ_D. θ_U is not
    trained (the single level has one backbone).
    """

    def __init__(self, optim_wrapper_cfg: dict[str, Any], paramwise_cfg: Any = None) -> None:
        cfg = dict(optim_wrapper_cfg)
        if "lower" not in cfg:
            raise ConfigError(
                "optim_wrapper needs the BiSSL config's 'lower' entry (the optimiser of the "
                f"single level); got keys {sorted(cfg)}"
            )
        lower = dict(cfg["lower"])
        if lower.get("clip_grad") or paramwise_cfg or lower.get("paramwise_cfg"):
            raise ConfigError(
                "optim_wrapper.lower: the single-level baselines clip with "
                "train_cfg.bissl.grad_clip_norm and take no clip_grad or paramwise_cfg"
            )
        self.optimizer_cfg = dict(lower["optimizer"])
        self.wrapper_type = lower.get("type", "OptimWrapper")
        self.include_task_head = bool(cfg.get("include_task_head", False))

    def __call__(self, model: nn.Module) -> OptimWrapper:
        model = unwrap_model(model)
        if not isinstance(model, BiSSLModel):
            raise ConfigError(
                f"SingleLevelOptimWrapperConstructor needs a BiSSLModel, got {type(model)}"
            )
        params = [p for p in model.lower.parameters() if p.requires_grad]
        if self.include_task_head:
            params += task_head_parameters(model)
        optimizer = OPTIMIZERS.build(dict(self.optimizer_cfg, params=params))
        if self.wrapper_type != "OptimWrapper":
            raise ConfigError(
                f"optim_wrapper.lower.type {self.wrapper_type!r}: the single-level baselines "
                "use OptimWrapper"
            )
        return OptimWrapper(optimizer)


class SingleLevelLoop(BaseLoop):
    """``steps`` single-level updates of a :class:`BiSSLModel`, as mmengine iterations.

    Subclasses set :attr:`uses_downstream` and implement :meth:`compute_gradients` (backward
    passes only; the loop clips, steps and schedules).

    Args:
        runner: the mmengine runner.
        dataloader: the downstream data (the BiSSL config's ``train_dataloader``).
        bissl: the BiSSL config's ``train_cfg.bissl``; the budget and clipping come from it.
        steps: number of updates; ``None``: :meth:`default_steps` of ``bissl``.
        warmup_steps: linear warm-up of the learning rate, then cosine to zero at ``steps``;
            ``None``: the lower level's warm-up, 10·N_L steps (SPEC §3), at most ``steps``.
        pretext_dataloader: the pretext images; by default the config's ``pretext_dataloader``.
        val_interval: validate the upper model every ``val_interval·N_U`` steps and at the end
            (0: never); only where the downstream head is trained (:attr:`validates`).
    """

    uses_downstream = True
    validates = True
    name = "single_level"

    def __init__(
        self,
        runner: Any,
        dataloader: Any,
        bissl: Mapping[str, Any],
        steps: int | None = None,
        warmup_steps: int | None = None,
        pretext_dataloader: Mapping[str, Any] | None = None,
        val_interval: int = 0,
    ) -> None:
        bissl = dict(bissl)
        try:
            self.alternations = int(bissl["alternations"])
            self.lower_steps = int(bissl["lower_steps"])
            self.upper_steps = int(bissl["upper_steps"])
        except KeyError as error:
            raise ConfigError(f"train_cfg.bissl needs {error.args[0]!r}") from None
        if bissl.get("autocast") is not None:  # BiSSL's mixed precision lives in its core
            raise ConfigError(
                f"train_cfg.bissl.autocast={bissl['autocast']!r}: the single-level baselines "
                "run in float32; set it to None for this run"
            )
        clip = bissl.get("grad_clip_norm", 10.0)
        self.grad_clip_norm = None if clip is None else float(clip)
        self.steps = self.default_steps() if steps is None else int(steps)
        if self.steps < 1:
            raise ConfigError(f"train_cfg.steps must be >= 1, got {self.steps}")
        warmup = 10 * self.lower_steps if warmup_steps is None else int(warmup_steps)
        if warmup < 0:
            raise ConfigError(f"train_cfg.warmup_steps must be >= 0, got {warmup}")
        self.warmup_steps = min(warmup, self.steps)
        self.lr_factor = linear_warmup_cosine(self.warmup_steps, self.steps)
        if int(val_interval) < 0:
            raise ConfigError(f"train_cfg.val_interval must be >= 0, got {val_interval}")
        self.val_interval = int(val_interval) if self.validates else 0
        self.downstream_dataset, self.downstream_data = _loader_options(
            dataloader, "train_dataloader"
        )
        if pretext_dataloader is None:
            pretext_dataloader = runner.cfg.get("pretext_dataloader")
        self.pretext_dataset, self.pretext_data = self.pretext_loader(
            pretext_dataloader, self.downstream_dataset.dataset
        )
        super().__init__(
            runner,
            DataLoader(self.downstream_dataset, batch_size=int(self.downstream_data["batch_size"])),
        )
        self._iter = 0
        self._epoch = 0

    # what a subclass changes -----------------------------------------------------------------
    def default_steps(self) -> int:
        """The budget when ``train_cfg.steps`` is not given."""
        return self.alternations * self.upper_steps

    def pretext_loader(
        self, cfg: Mapping[str, Any] | None, downstream: Any
    ) -> tuple[Any, dict[str, Any]]:
        """The pretext dataset (seeded per draw) and its loader options; ``downstream`` is the
        downstream training dataset (built once, from ``train_dataloader``)."""
        return _loader_options(cfg, "pretext_dataloader")

    def compute_gradients(
        self, model: BiSSLModel, pretext_batch: Any, downstream_batch: Any
    ) -> Mapping[str, float]:
        """Backward passes of one step (``downstream_batch`` is None unless
        :attr:`uses_downstream`); returns the scalars to log."""
        raise NotImplementedError

    # mmengine reads these through the runner --------------------------------------------------
    @property
    def max_iters(self) -> int:
        return self.steps

    @property
    def max_epochs(self) -> int:
        return 1

    @property
    def iter(self) -> int:
        return self._iter

    @property
    def epoch(self) -> int:
        return 0

    def _source(self, dataset: Any, data: Mapping[str, Any], seed: int) -> Iterator[Any]:
        """Batches of one stream from the step reached: BiSSL's sources (same seeding, workers,
        device), one batch per step and no stages, so a reshuffle when the data set is used up."""
        return runner_batch_source(self.runner, dataset, data, 1, seed)(self._iter)

    def _set_lr(self, optimizer: torch.optim.Optimizer) -> None:
        for group in optimizer.param_groups:
            group.setdefault("initial_lr", group["lr"])
            group["lr"] = group["initial_lr"] * self.lr_factor(self._iter)

    def _average_gradients(self, params: list[torch.Tensor]) -> None:
        """Data parallel: every rank holds a replica (BiSSLReplicas); average the gradients."""
        all_reduce_mean_([p.grad for p in params if p.grad is not None])

    def _should_validate(self) -> bool:
        if not self.val_interval or self.runner.val_loop is None:
            return False
        every = self.val_interval * self.upper_steps
        return self._iter % every == 0 or self._iter == self.steps

    def run(self) -> nn.Module:
        runner = self.runner
        model = unwrap_model(runner.model)
        if not isinstance(model, BiSSLModel):
            raise ConfigError(
                f"{type(self).__name__} needs model=dict(type='BiSSLModel', ...), got "
                f"{type(model).__name__}"
            )
        runner.call_hook("before_train")
        optimizer = runner.optim_wrapper.optimizer
        params = [p for group in optimizer.param_groups for p in group["params"]]
        seed = int(runner.seed)
        pretext = self._source(self.pretext_dataset, self.pretext_data, seed)
        downstream = None
        if self.uses_downstream:
            downstream = self._source(self.downstream_dataset, self.downstream_data, seed + 1)
        runner.call_hook("before_train_epoch")
        model.train()
        while self._iter < self.steps:
            runner.call_hook("before_train_iter", batch_idx=self._iter, data_batch=None)
            start = time.perf_counter()
            self._set_lr(optimizer)
            optimizer.zero_grad(set_to_none=True)
            outputs = dict(
                self.compute_gradients(
                    model, next(pretext), None if downstream is None else next(downstream)
                )
            )
            self._average_gradients(params)
            if self.grad_clip_norm is not None:
                norm = torch.nn.utils.clip_grad_norm_(params, self.grad_clip_norm)
                outputs[f"{self.name}/grad_norm"] = float(norm)
            optimizer.step()
            model.lower.after_optimizer_step(self._iter, self.steps)  # BYOL's EMA target
            outputs[f"{self.name}/lr"] = optimizer.param_groups[0]["lr"]
            outputs[f"{self.name}/step_time"] = time.perf_counter() - start
            runner.call_hook(
                "after_train_iter", batch_idx=self._iter, data_batch=None, outputs=outputs
            )
            self._iter += 1
            if self._should_validate():
                runner.val_loop.run()
        runner.call_hook("after_train_epoch")
        runner.call_hook("after_train")
        return runner.model


@HOOKS.register_module()
class ExportBackboneHook(Hook):
    """After training, writes θ_L as ``<work_dir>/<out_subdir>/<name>_backbone.pth``.

    Torchvision parameter names, no ``fc.*``: what fine-tuning's ``model.backbone_checkpoint``
    reads (``load_backbone_into``); ``<name>_config.json`` records the run (loop settings,
    steps, model and optimiser configs). Atomic writes; main process only.
    """

    priority = "LOWEST"

    def __init__(self, name: str, out_subdir: str = "export") -> None:
        self.name = name
        self.out_subdir = out_subdir
        self.exported: dict[str, Path] = {}

    def after_train(self, runner: Any) -> None:
        from bissl_dense.pretext.weights import export_backbone

        if not is_main_process():
            return
        model = unwrap_model(runner.model)
        loop = runner.train_loop
        out = Path(runner.work_dir) / self.out_subdir
        config = {
            "baseline": self.name,
            "task": getattr(model.lower, "task_name", None),
            "arch": getattr(model.lower, "arch", None),
            "steps": loop.iter,
            "train_cfg": json_plain(dict(runner.cfg.get("train_cfg", {}))),
            "seed": runner.seed,
            "world_size": get_world_size(),
            "model": json_plain(runner.cfg.get("model", {})),
            "optimizer": json_plain(runner.cfg.get("optim_wrapper", {})),
        }
        paths = {
            "config": out / f"{self.name}_config.json",
            "backbone": out / f"{self.name}_backbone.pth",
        }
        export_backbone(model.lower.backbone, config, paths["backbone"], paths["config"])
        self.exported = paths
        runner.logger.info(f"exported the {self.name} backbone: {paths['backbone']}")


def backbone_substitution(model: BiSSLModel) -> Callable[[], dict[str, torch.Tensor]]:
    """``{upper name: θ_L tensor}``: runs the task's upper loss on the single backbone θ_L."""
    correspondence = dict(model.task.correspondence)

    def substitute() -> dict[str, torch.Tensor]:
        return {correspondence[n]: p for n, p in model.lower.backbone.named_parameters()}

    return substitute
