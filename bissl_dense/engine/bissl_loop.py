"""BiSSL's training stage on mmengine: one run alternating the two levels (SPEC §3).

The config names three things, and the loop wires them through :mod:`bissl_dense.stage`:

* ``model=dict(type="BiSSLModel", pretext=dict(type="SimCLR", ...), task=dict(type=<task>, ...))``:
  the lower model (a pretext method, θ_L + φ_P) and a registered downstream task (the upper model
  θ_U + φ_D, its upper loss and the correspondence) in one module, so that mmengine's checkpoints
  hold both levels' parameters and buffers;
* ``optim_wrapper=dict(constructor="BiSSLOptimWrapperConstructor", lower=..., upper=...)``: one
  optimiser per level (LARS below, SGD above), saved and resumed by mmengine;
* ``train_cfg=dict(type="BiSSLLoop", bissl=...)`` with ``train_dataloader`` (downstream) and
  ``pretext_dataloader`` (pretext images): the
  :class:`~bissl_dense.core.BiSSLConfig` numbers and the two data sources.

Mixed precision is ``train_cfg.bissl.autocast`` (``None``, ``"bfloat16"`` or ``"float16"``): the
core autocasts both levels' loss forward passes, keeps the implicit-gradient products, weights and
optimiser states float32, and with fp16 keeps one GradScaler per level whose state goes into the
checkpoints' ``"bissl"`` entry. The level wrappers stay plain ``OptimWrapper``s (the core drives
their optimisers directly, so an ``AmpOptimWrapper`` there would have no effect and is refused).
Channels-last is ``channels_last=True`` on the backbone configs (``model.pretext.backbone``,
``model.task.backbone``).

Each level's learning rate follows its own schedule in its own steps (SPEC §3); the schedulers
live in the core's ``BilevelStep``, and their state, the step counters, the held Hessian batch and
the random generators go into every checkpoint under ``"bissl"`` (tensors and plain types, read
back with ``torch.load(weights_only=True)``), so ``--resume`` continues at the exact step, also in
the middle of an upper stage.

Multi-process: every rank holds a full replica (the upper loss runs the model functionally with
substituted parameters, which DDP's hooks cannot follow); the core averages gradients and
Hessian-vector products across ranks. :class:`BiSSLReplicas` is the model wrapper that makes the
replicas identical at the start and stands in for DDP.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from functools import partial
from pathlib import Path
from typing import Any

import torch
from mmengine.dist import is_main_process
from mmengine.hooks import Hook
from mmengine.model import BaseModel
from mmengine.optim import DefaultOptimWrapperConstructor, OptimWrapperDict
from mmengine.registry import (
    DATASETS,
    FUNCTIONS,
    HOOKS,
    LOOPS,
    MODEL_WRAPPERS,
    MODELS,
    OPTIM_WRAPPER_CONSTRUCTORS,
)
from mmengine.runner.base_loop import BaseLoop
from torch import nn
from torch.utils.data import DataLoader

from bissl_dense.core import BilevelTrainer, BiSSLConfig
from bissl_dense.distributed import get_rank, get_world_size, is_distributed
from bissl_dense.engine.checkpoint import decode_state, encode_state
from bissl_dense.engine.hooks import json_plain, unwrap_model
from bissl_dense.errors import ConfigError
from bissl_dense.stage import LevelOptimizers, SeededDataset, batch_source, build_bilevel_step
from bissl_dense.stage.tasks import build_task

__all__ = [
    "BiSSLCheckpointHook",
    "BiSSLLoop",
    "BiSSLModel",
    "BiSSLOptimWrapperConstructor",
    "BiSSLReplicas",
    "ExportBiSSLHook",
]


@MODELS.register_module()
class BiSSLModel(BaseModel):
    """The lower (pretext) and upper (downstream) models of BiSSL in one module.

    Args:
        pretext: config of a pretext method (``SimCLR``, ``BYOL``); its ``backbone`` is θ_L and
            its ``backbone_checkpoint``/``head_checkpoint`` the pretrained weights.
        task: config of a registered downstream task (:mod:`bissl_dense.stage.tasks`); its
            backbone is initialised from the pretext backbone (θ_U = θ_L at the start, SPEC §3).
        init_cfg: refused; every weight comes from the files named above (see
            :meth:`init_weights`).
    """

    def __init__(
        self,
        pretext: dict[str, Any],
        task: dict[str, Any],
        data_preprocessor: dict[str, Any] | None = None,
        init_cfg: dict[str, Any] | None = None,
    ) -> None:
        if init_cfg:
            raise ConfigError(
                f"model.init_cfg={init_cfg!r}: the BiSSL model takes its weights from "
                "model.pretext.backbone_checkpoint/head_checkpoint and model.task.head_checkpoint "
                "(load_from for a whole BiSSL checkpoint); remove init_cfg"
            )
        super().__init__(data_preprocessor=data_preprocessor)
        self.lower = MODELS.build(pretext)
        if not callable(getattr(self.lower, "pretext_loss", None)):
            raise ConfigError(
                f"model.pretext must be a pretext method (SimCLR, BYOL), got "
                f"{type(self.lower).__name__}"
            )
        self.lower.reset_target()  # BYOL: the target starts at the loaded online weights
        self.task = build_task(task, self.lower.backbone)
        self.upper = self.task.model

    def init_weights(self) -> None:
        """Nothing to initialise: the weights were final when the model was built.

        mmengine's ``Runner.train()`` calls ``init_weights()`` before the first step. The default
        (``BaseModule.init_weights``) would run each submodule's own initialisation, and mmseg's
        and mmdet's re-draw their convolutions and reset BatchNorm to (1, 0) over θ_U and the
        warmed-up head loaded in ``__init__``: BiSSL then started from a random upper network
        (issue 21). The start state of SPEC §3 is fixed at construction instead: the pretext
        method loads its files, and each task builder runs its model's own default
        initialisation before it copies θ_L in and loads the warmed-up head. Weights loaded
        later (``load_from``, ``--resume``) are loaded after this call, as usual.
        """
        self._is_init = True

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """Inference is the upper (downstream) model's; training goes through BiSSLLoop."""
        return self.upper(*args, **kwargs)

    def val_step(self, data: Any) -> Any:
        # the upper model's own data preprocessor and predict mode (mmseg, mmdet, ...)
        return self.upper.val_step(data)

    def test_step(self, data: Any) -> Any:
        return self.upper.test_step(data)


@MODEL_WRAPPERS.register_module()
class BiSSLReplicas(nn.Module):
    """Replicas on every rank, made identical at the start by a broadcast from rank 0.

    Stands in for DDP in the BiSSL stage: the core all-reduces the gradients of both levels
    itself, after passes that DDP's autograd hooks cannot follow (functional calls with the
    lower backbone substituted, double backward).
    """

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module
        if is_distributed() and get_world_size() > 1:
            with torch.no_grad():
                for tensor in list(module.parameters()) + list(module.buffers()):
                    torch.distributed.broadcast(tensor.data, src=0)

    def val_step(self, data: Any) -> Any:
        return self.module.val_step(data)

    def test_step(self, data: Any) -> Any:
        return self.module.test_step(data)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.module(*args, **kwargs)


@OPTIM_WRAPPER_CONSTRUCTORS.register_module()
class BiSSLOptimWrapperConstructor:
    """``optim_wrapper=dict(constructor=..., lower=dict(...), upper=dict(...))``.

    Builds each level's wrapper with mmengine's default constructor over ``model.lower`` and
    ``model.upper``. Gradient clipping is the core's (per level, SPEC §3), so the wrappers must
    not clip again.
    """

    def __init__(self, optim_wrapper_cfg: dict[str, Any], paramwise_cfg: Any = None) -> None:
        missing = [k for k in ("lower", "upper") if k not in optim_wrapper_cfg]
        if missing:
            raise ConfigError(
                f"optim_wrapper needs the keys 'lower' and 'upper'; missing {missing}"
            )
        for level in ("lower", "upper"):
            level_cfg = optim_wrapper_cfg[level]
            if level_cfg.get("clip_grad"):
                raise ConfigError(
                    f"optim_wrapper.{level}.clip_grad: BiSSL clips each level itself "
                    "(train_cfg.bissl.grad_clip_norm); remove clip_grad"
                )
            wrapper_type = level_cfg.get("type", "OptimWrapper")
            if wrapper_type == "AmpOptimWrapper" or level_cfg.get("dtype") is not None:
                raise ConfigError(
                    f"optim_wrapper.{level}: type={wrapper_type!r}, dtype="
                    f"{level_cfg.get('dtype')!r} has no effect in the BiSSL stage (its loop steps "
                    "the optimisers itself); set train_cfg.bissl.autocast='bfloat16' or "
                    "'float16' instead and keep the level wrappers plain"
                )
        self.cfg = optim_wrapper_cfg

    def __call__(self, model: nn.Module) -> OptimWrapperDict:
        model = unwrap_model(model)
        wrappers = {}
        for level in ("lower", "upper"):
            cfg = dict(self.cfg[level])
            cfg.setdefault("type", "OptimWrapper")
            paramwise = cfg.pop("paramwise_cfg", None)
            constructor = DefaultOptimWrapperConstructor(cfg, paramwise)
            wrappers[level] = constructor(getattr(model, level))
        return OptimWrapperDict(**wrappers)


class BiSSLCheckpointHook(Hook):
    """Puts the stage's state into every checkpoint and takes it back on resume."""

    priority = "NORMAL"  # before AtomicCheckpointHook (VERY_LOW) encodes the checkpoint

    def __init__(self, loop: BiSSLLoop) -> None:
        self.loop = loop

    def before_save_checkpoint(self, runner: Any, checkpoint: dict) -> None:
        if self.loop.trainer is not None:
            checkpoint["bissl"] = self.loop.trainer.state_dict(include_optimizers=False)

    def after_load_checkpoint(self, runner: Any, checkpoint: dict) -> None:
        if "bissl" not in checkpoint:
            raise ConfigError(
                "the checkpoint being resumed holds no BiSSL stage state ('bissl' entry); it "
                "was not written by a BiSSL run. Use load_from for weights only"
            )
        self.loop.pending_state = decode_state(encode_state(checkpoint["bissl"]))


_LOADER_KEYS = {"dataset", "batch_size", "num_workers", "pin_memory", "collate_fn"}
# Entries of an ordinary mmengine dataloader config that the BiSSL stage replaces: the batch
# stack is the sampler (SPEC §3) and every batch is full.
_REPLACED_KEYS = {"sampler", "batch_sampler", "persistent_workers", "drop_last"}


def _loader_options(cfg: Mapping[str, Any] | None, where: str) -> tuple[Any, dict[str, Any]]:
    """The dataset (seeded per draw) and the loader options of a dataloader config."""
    if cfg is None:
        raise ConfigError(f"{where} is missing: BiSSL needs a pretext and a downstream dataloader")
    cfg = dict(cfg)
    unknown = set(cfg) - _LOADER_KEYS - _REPLACED_KEYS
    if unknown or "batch_size" not in cfg or "dataset" not in cfg:
        raise ConfigError(
            f"{where} takes dataset, batch_size, num_workers, pin_memory, collate_fn (sampler, "
            f"persistent_workers, drop_last are replaced by the BiSSL batch stacks); got "
            f"{sorted(cfg)}"
        )
    dataset = cfg["dataset"]
    if isinstance(dataset, Mapping):
        dataset = DATASETS.build(dict(dataset))
    options = {k: cfg[k] for k in ("batch_size", "num_workers", "pin_memory") if k in cfg}
    collate = cfg.get("collate_fn")
    if isinstance(collate, Mapping):  # as mmengine's Runner.build_dataloader reads it
        collate = dict(collate)
        collate_type = collate.pop("type")
        function = FUNCTIONS.get(collate_type) if isinstance(collate_type, str) else collate_type
        if function is None:
            raise ConfigError(f"{where}.collate_fn: unknown function {collate_type!r}")
        collate = partial(function, **collate)
    options["collate_fn"] = collate
    # Any map-style dataset: the wrapper applies its random transforms under the draw's seed.
    return SeededDataset(dataset), options


def runner_batch_source(
    runner: Any, dataset: Any, data: Mapping[str, Any], stage_length: int, seed: int
) -> Any:
    """:func:`~bissl_dense.stage.data.batch_source` for an mmengine run: this rank's slice of
    ``dataset`` with the loader options ``data``, on the device of the runner's model."""
    device = next(unwrap_model(runner.model).parameters()).device
    return batch_source(
        dataset,
        batch_size=int(data["batch_size"]),
        stage_length=stage_length,
        seed=seed,
        rank=get_rank(),
        world_size=get_world_size(),
        num_workers=int(data.get("num_workers", 0)),
        collate_fn=data.get("collate_fn"),
        pin_memory=bool(data.get("pin_memory", False)) and device.type == "cuda",
        device=device,
    )


@LOOPS.register_module()
class BiSSLLoop(BaseLoop):
    """Runs T alternations of N_L lower and N_U upper steps (SPEC §3) as mmengine iterations.

    Args:
        runner: the mmengine runner (its model is a :class:`BiSSLModel`).
        dataloader: the downstream data, i.e. the config's ``train_dataloader`` (dataset,
            batch_size per process, num_workers); its items must accept ``(index, seed)``.
        bissl: keyword arguments of :class:`~bissl_dense.core.BiSSLConfig`.
        pretext_dataloader: the pretext images (items ``{"inputs": [view1, view2]}``, e.g.
            ``PretextImageFolder``); by default the config's top-level ``pretext_dataloader``.
        val_interval: validate the upper model (the config's ``val_dataloader`` and
            ``val_evaluator``) every this many alternations and at the end; 0 never does.
    """

    def __init__(
        self,
        runner: Any,
        dataloader: Any,
        bissl: dict[str, Any],
        pretext_dataloader: dict[str, Any] | None = None,
        val_interval: int = 0,
    ) -> None:
        if int(val_interval) < 0:
            raise ConfigError(f"train_cfg.val_interval must be >= 0, got {val_interval}")
        self.val_interval = int(val_interval)
        try:
            self.config = BiSSLConfig(**dict(bissl))
        except (TypeError, ValueError) as error:
            raise ConfigError(f"train_cfg.bissl: {error}") from error
        if pretext_dataloader is None:
            pretext_dataloader = runner.cfg.get("pretext_dataloader")
        self.lower_dataset, self.lower_data = _loader_options(
            pretext_dataloader, "pretext_dataloader"
        )
        self.upper_dataset, self.upper_data = _loader_options(dataloader, "train_dataloader")
        # runner.train_dataloader is the downstream data (mmengine reads its dataset's metainfo)
        super().__init__(
            runner, DataLoader(self.upper_dataset, batch_size=int(self.upper_data["batch_size"]))
        )
        self.trainer: BilevelTrainer | None = None
        self.pending_state: dict[str, Any] | None = None
        self._iter = 0
        runner.register_hook(BiSSLCheckpointHook(self))

    # mmengine reads these through the runner (progress, ETA, checkpoint meta)
    @property
    def max_iters(self) -> int:
        return self.config.total_steps

    @property
    def max_epochs(self) -> int:
        return 1

    @property
    def iter(self) -> int:
        return self._iter

    @property
    def epoch(self) -> int:
        return 0

    def _source(self, dataset: Any, data: dict[str, Any], stage_length: int, seed: int) -> Any:
        return runner_batch_source(self.runner, dataset, data, stage_length, seed)

    def _should_validate(self) -> bool:
        if not self.val_interval or self.runner.val_loop is None:
            return False
        alternation, within = divmod(self._iter, self.config.steps_per_alternation)
        return within == 0 and (alternation % self.val_interval == 0 or self.trainer.done)

    def build_trainer(self) -> BilevelTrainer:
        runner = self.runner
        model = unwrap_model(runner.model)
        if not isinstance(model, BiSSLModel):
            raise ConfigError(
                f"BiSSLLoop needs model=dict(type='BiSSLModel', ...), got {type(model).__name__}"
            )
        wrappers = runner.optim_wrapper
        if not isinstance(wrappers, OptimWrapperDict) or set(wrappers.keys()) != {"lower", "upper"}:
            raise ConfigError(
                "BiSSLLoop needs optim_wrapper=dict(constructor='BiSSLOptimWrapperConstructor', "
                "lower=..., upper=...)"
            )
        device = next(model.parameters()).device
        step = build_bilevel_step(
            model.task,
            model.lower,
            self.config,
            optimizers=LevelOptimizers(
                lower=wrappers["lower"].optimizer, upper=wrappers["upper"].optimizer
            ),
            device=device,
        )
        seed = int(runner.seed)
        cfg = self.config
        # Separate streams per level: both are pure functions of (seed, batches consumed).
        lower = self._source(self.lower_dataset, self.lower_data, cfg.lower_stage_length, seed)
        upper = self._source(self.upper_dataset, self.upper_data, cfg.upper_steps, seed + 1)
        return BilevelTrainer(step, lower, upper, seed=seed, rank=get_rank())

    def run(self) -> nn.Module:
        runner = self.runner
        runner.call_hook("before_train")
        self.trainer = self.build_trainer()
        if self.pending_state is not None:
            self.trainer.load_state_dict(self.pending_state)
            self.pending_state = None
        if self.trainer.global_step != self._iter:
            raise RuntimeError(
                f"resumed checkpoint is at iteration {self._iter} but its BiSSL state at step "
                f"{self.trainer.global_step}"
            )
        # The whole stage is one mmengine "epoch" (hooks such as the iteration timer need it).
        runner.call_hook("before_train_epoch")
        while not self.trainer.done:
            runner.call_hook("before_train_iter", batch_idx=self._iter, data_batch=None)
            start = time.perf_counter()
            phase, metrics = self.trainer.train_step()
            outputs: dict[str, Any] = {k: v for k, v in metrics.items()}
            outputs[f"{phase}/step_time"] = time.perf_counter() - start
            runner.call_hook(
                "after_train_iter", batch_idx=self._iter, data_batch=None, outputs=outputs
            )
            self._iter = self.trainer.global_step
            if self._should_validate():
                runner.val_loop.run()
        runner.call_hook("after_train_epoch")
        runner.call_hook("after_train")
        return runner.model


@HOOKS.register_module()
class ExportBiSSLHook(Hook):
    """After BiSSL, writes the published files of its output.

    ``BiSSL_<pretext>_<downstream>_<dataset>_arch-<arch>_{lower_backbone,config}_id-<id>``:

    The lower backbone θ_L is BiSSL's output (SPEC §3), with torchvision parameter names, ready
    for fine-tuning; files go to ``<work_dir>/<out_subdir>`` (atomic writes).
    """

    priority = "LOWEST"

    def __init__(
        self,
        downstream: str,
        dataset: str,
        out_subdir: str = "export",
        run_id: str | None = None,
    ) -> None:
        self.downstream = downstream
        self.dataset = dataset
        self.out_subdir = out_subdir
        self.run_id = run_id
        self.exported: dict[str, Path] = {}

    def after_train(self, runner: Any) -> None:
        from bissl_dense.pretext.weights import export_bissl

        if not is_main_process():
            return
        model = unwrap_model(runner.model)
        pretext = model.lower
        loop = runner.train_loop
        config = {
            "task": pretext.task_name,
            "downstream": self.downstream,
            "dataset": self.dataset,
            "arch": pretext.arch,
            "bissl": json_plain(vars(loop.config)),
            "steps": loop.iter,
            "world_size": get_world_size(),
            "lower_batch_size": int(loop.lower_data["batch_size"]) * get_world_size(),
            "upper_batch_size": int(loop.upper_data["batch_size"]) * get_world_size(),
            "seed": runner.seed,
            "model": json_plain(runner.cfg.get("model", {})),
            "optimizer": json_plain(runner.cfg.get("optim_wrapper", {})),
        }
        self.exported = export_bissl(
            out_dir=Path(runner.work_dir) / self.out_subdir,
            lower_backbone=pretext.backbone,
            config=config,
            task=pretext.task_name,
            downstream=self.downstream,
            dataset=self.dataset,
            arch=pretext.arch,
            run_id=self.run_id or str(runner.timestamp),
        )
        runner.logger.info(
            "exported the BiSSL lower backbone: "
            + ", ".join(str(p) for p in self.exported.values())
        )
