"""BiSSL inside detectron2's training loop, and the warm-up / fine-tuning trainer (SPEC §3, §5).

:class:`BiSSLTrainer` is a detectron2 ``TrainerBase``: one detectron2 iteration is one step of
the core's :class:`~bissl_dense.core.BilevelTrainer` (N_L lower steps, then N_U upper steps,
T times), so detectron2's hooks, ``EventStorage`` (TensorBoard, JSON, console progress) and
``DetectionCheckpointer`` work unchanged:

* both levels' metrics go to the ``EventStorage`` under ``lower/…`` and ``upper/…``; the
  learning rate of each level is logged by a :class:`LevelLearningRate` hook per level (the
  level's scheduler itself is stepped by the core after each update of that level, so that each
  schedule counts only its own steps);
* the checkpoint holds the detector (θ_U, φ_D), the pretext model (θ_L, φ_P) and the
  ``BilevelTrainer`` state (step counters, batches consumed per level, the Hessian batch inside
  an upper stage, both optimisers and schedulers, RNG): tensors and plain types only, so
  ``torch.load(weights_only=True)`` reads it and ``--resume`` continues mid-stage exactly;
* N processes (``detectron2.engine.launch``; GPUs or CPU processes on gloo): every process holds
  full replicas (no DDP wrapper, the upper loss runs the detector functionally) and the core
  averages gradients across processes; each level's batch is split over the processes.

:class:`FinetuneTrainer` is detectron2's ``DefaultTrainer`` for the head warm-up and the
fine-tuning runs, with explicit weight loading and CPU-capable DDP.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import CfgNode
from detectron2.engine import DefaultTrainer, HookBase, TrainerBase, hooks
from detectron2.engine import defaults as d2_defaults
from detectron2.utils import comm
from detectron2.utils.events import get_event_storage
from torch import nn

from bissl_dense.core import BilevelTrainer
from bissl_dense.detection.config import bissl_config_of
from bissl_dense.detection.correspondence import convert_state
from bissl_dense.detection.data import lower_batch_source, upper_batch_source
from bissl_dense.detection.evaluation import evaluate_voc, voc_evaluator
from bissl_dense.detection.model import build_detector
from bissl_dense.detection.task import detection_task
from bissl_dense.detection.weights import save_detectron2_pkl
from bissl_dense.errors import ConfigError
from bissl_dense.fileio import atomic_torch_save
from bissl_dense.pretext.methods.base import PretextMethod
from bissl_dense.pretext.weights import bissl_file_names, load_backbone_into
from bissl_dense.stage import build_bilevel_step

__all__ = [
    "BiSSLTrainer",
    "FinetuneTrainer",
    "LevelLearningRate",
    "bissl_config_of",
    "build_pretext",
    "use_group_norm",
]

logger = logging.getLogger(__name__)


def use_group_norm(module: nn.Module) -> None:
    """Replace every BatchNorm of ``module`` by a GroupNorm with the same affine parameters.

    ``BISSL.PRETEXT.NORM: GN`` (with ``MODEL.RESNETS.NORM: GN``): normalisation per sample, so
    that N processes compute exactly what one process computes on the union batch (the
    multi-process tests rely on it; BatchNorm sees only each process's batch, SPEC §3).
    """
    for name, child in list(module.named_children()):
        if isinstance(child, nn.modules.batchnorm._BatchNorm):
            channels = child.num_features
            groups = 32 if channels % 32 == 0 and child.weight.dim() == 1 and channels >= 32 else 1
            norm = nn.GroupNorm(groups, channels, eps=child.eps, affine=child.affine)
            if child.affine:
                with torch.no_grad():
                    norm.weight.copy_(child.weight)
                    norm.bias.copy_(child.bias)
            setattr(module, name, norm)
        else:
            use_group_norm(child)


def build_pretext(cfg: CfgNode, detector: nn.Module) -> PretextMethod:
    """The lower model (SimCLR/BYOL on a torchvision ResNet-50), initialised explicitly:

    backbone θ_L from ``BISSL.PRETEXT.BACKBONE`` or, when empty, from the detector's own backbone
    and res5 (θ_L = θ_U at the start, SPEC §3); the pretext head from ``BISSL.PRETEXT.HEAD``
    (``"random"`` must be written out to start from a random head).
    """
    from bissl_dense.pretext.methods.byol import BYOL
    from bissl_dense.pretext.methods.simclr import SimCLR

    p = cfg.BISSL.PRETEXT
    if not p.HEAD:
        raise ConfigError(
            "BISSL.PRETEXT.HEAD is empty: name the pretext head file (Pretext_*_head_id-*.pth) "
            "or write 'random' to start the lower level from a random projection head"
        )
    head = None if p.HEAD == "random" else str(p.HEAD)
    common: dict[str, Any] = {"backbone": {"arch": "resnet50"}, "head_checkpoint": head}
    method = str(p.METHOD).lower()
    if method == "simclr":
        pretext: PretextMethod = SimCLR(temperature=float(p.TEMPERATURE), **common)
    elif method == "byol":
        pretext = BYOL(base_momentum=float(p.BYOL_MOMENTUM), **common)
    else:
        raise ConfigError(f"BISSL.PRETEXT.METHOD={p.METHOD!r}: use simclr or byol")
    if str(p.NORM).upper() == "GN":
        use_group_norm(pretext)
    if p.BACKBONE:
        load_backbone_into(pretext.backbone, p.BACKBONE)
    else:
        state = convert_state(detector.state_dict(), "torchvision", source="MODEL.WEIGHTS")
        load_backbone_into(pretext.backbone, {k: v.detach().clone() for k, v in state.items()})
    pretext.reset_target()
    return pretext.to(detector.device)  # type: ignore[attr-defined]


def periodic_checkpointer(
    cfg: CfgNode, checkpointer: Any, max_iter: int
) -> hooks.PeriodicCheckpointer:
    """detectron2's periodic checkpointer keeping the newest ``SOLVER.MAX_TO_KEEP`` (0: all)."""
    kept = int(cfg.SOLVER.MAX_TO_KEEP)
    return hooks.PeriodicCheckpointer(
        checkpointer,
        int(cfg.SOLVER.CHECKPOINT_PERIOD),
        max_iter=max_iter,
        max_to_keep=kept if kept > 0 else None,
    )


class _Checkpointable:
    """Adapts ``state_dict``/``load_state_dict`` owners for detectron2's checkpointer."""

    def __init__(self, obj: Any) -> None:
        self.obj = obj

    def state_dict(self) -> dict[str, Any]:
        return self.obj.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.obj.load_state_dict(state)


class LevelLearningRate(HookBase):
    """Logs one level's learning rate (``lr/lower`` or ``lr/upper``) after each of its steps."""

    def __init__(self, level: str, optimizer: torch.optim.Optimizer) -> None:
        self.level = level
        self.optimizer = optimizer

    def after_step(self) -> None:
        if getattr(self.trainer, "last_phase", None) == self.level:
            lr = self.optimizer.param_groups[0]["lr"]
            self.trainer.storage.put_scalar(f"lr/{self.level}", lr, smoothing_hint=False)


class BiSSLTrainer(TrainerBase):
    """The BiSSL stage as a detectron2 trainer (see the module docstring)."""

    def __init__(self, cfg: CfgNode) -> None:
        super().__init__()
        self.cfg = cfg
        rank, world_size = comm.get_rank(), comm.get_world_size()
        torch.manual_seed(int(cfg.BISSL.SEED))  # identical replicas on every process
        self.model = build_detector(cfg)
        self.model.train()
        self.pretext = build_pretext(cfg, self.model)
        self.config = bissl_config_of(cfg)
        self.step_fn = build_bilevel_step(
            detection_task(self.model, self.pretext.backbone),
            self.pretext,
            self.config,
            device=self.model.device,
            upper_lr=float(cfg.SOLVER.BASE_LR),
            upper_weight_decay=float(cfg.SOLVER.WEIGHT_DECAY),
            upper_momentum=float(cfg.SOLVER.MOMENTUM),
            lower_lr=float(cfg.BISSL.LOWER_LR),
            lower_weight_decay=float(cfg.BISSL.LOWER_WEIGHT_DECAY),
        )
        self.bilevel = BilevelTrainer(
            self.step_fn,
            lower_batch_source(cfg, rank, world_size),
            upper_batch_source(cfg, rank, world_size),
            seed=int(cfg.BISSL.SEED),
            rank=rank,
        )
        self.max_iter = self.config.total_steps
        self.last_phase: str | None = None
        self.checkpointer = DetectionCheckpointer(
            self.model,
            cfg.OUTPUT_DIR,
            pretext=self.pretext,
            bissl=_Checkpointable(self.bilevel),
        )
        self.evaluation: dict[str, dict[str, float]] = {}
        self.register_hooks(self.build_hooks())

    def build_hooks(self) -> list[HookBase | None]:
        cfg = self.cfg
        out: list[HookBase | None] = [
            hooks.IterationTimer(),
            LevelLearningRate("lower", self.step_fn.lower_optimizer),
            LevelLearningRate("upper", self.step_fn.upper_optimizer),
        ]
        if comm.is_main_process():
            out.append(periodic_checkpointer(cfg, self.checkpointer, self.max_iter))
        out.append(hooks.EvalHook(int(cfg.TEST.EVAL_PERIOD), self.test))
        if comm.is_main_process():
            out.append(
                hooks.PeriodicWriter(
                    d2_defaults.default_writers(cfg.OUTPUT_DIR, self.max_iter), period=20
                )
            )
        return out

    def run_step(self) -> None:
        start = time.perf_counter()
        self.model.train()
        phase, metrics = self.bilevel.train_step()
        self.last_phase = phase
        storage = get_event_storage()
        values = {k: float(v) for k, v in metrics.items()}
        total = values.get(f"{phase}/pretext_loss", values.get("upper/loss"))
        if total is not None and not torch.isfinite(torch.tensor(total)):
            raise FloatingPointError(f"BiSSL {phase} loss is not finite at iteration {self.iter}")
        storage.put_scalars(**values, smoothing_hint=False)
        storage.put_scalar(f"time/{phase}_step", time.perf_counter() - start, smoothing_hint=False)

    def test(self) -> dict[str, dict[str, float]]:
        """AP/AP50/AP75 of the upper detector on every ``DATASETS.TEST`` set (rank 0 gets them)."""
        self.model.eval()
        try:
            results = {
                name: evaluate_voc(self.cfg, self.model, name) for name in self.cfg.DATASETS.TEST
            }
        finally:
            self.model.train()
        self.evaluation = results
        return {name: {"bbox": r} for name, r in results.items() if r}  # type: ignore[misc]

    def state_dict(self) -> dict[str, Any]:
        return {"iteration": self.iter}

    def resume_or_load(self, resume: bool = True) -> None:
        """``resume``: continue from the last checkpoint in ``OUTPUT_DIR`` (mid-stage included).

        Weights of a fresh run come from ``MODEL.WEIGHTS`` (already loaded when the model was
        built, by our safe reader), never through detectron2's pickle loader.
        """
        if resume and self.checkpointer.has_checkpoint():
            checkpoint = self.checkpointer.resume_or_load("", resume=True)
            self.start_iter = int(checkpoint["iteration"]) + 1
            if self.bilevel.global_step != self.start_iter:
                raise RuntimeError(
                    f"checkpoint iteration {checkpoint['iteration']} does not match the BiSSL "
                    f"step counter {self.bilevel.global_step}"
                )
            logger.info("resumed BiSSL at iteration %d", self.start_iter)

    def train(self) -> None:  # type: ignore[override]
        super().train(self.start_iter, self.max_iter)
        if comm.is_main_process():
            self.export()

    def export(self) -> dict[str, Path]:
        """θ_L, the BiSSL output (SPEC §1 step 3): torchvision names (``.pth``, the published
        files' format) and detectron2 C4 names (``.pkl``) for the fine-tuning configs."""
        out = Path(self.cfg.OUTPUT_DIR) / "export"
        names = bissl_file_names(
            str(self.cfg.BISSL.PRETEXT.METHOD).lower(),
            "detection",
            "voc0712",
            "resnet50",
            str(self.cfg.BISSL.SEED),
        )
        state = {k: v.detach().cpu().clone() for k, v in self.pretext.backbone.state_dict().items()}
        paths = {"lower_backbone": out / names["lower_backbone"]}
        atomic_torch_save(state, paths["lower_backbone"])
        paths["lower_backbone_detectron2"] = save_detectron2_pkl(
            convert_state(state, "detectron2"),
            out / (Path(names["lower_backbone"]).stem + "_detectron2.pkl"),
        )
        return paths


@contextlib.contextmanager
def _cpu_safe_ddp(cfg: CfgNode) -> Iterator[None]:
    """detectron2's ``DefaultTrainer`` passes ``device_ids=[rank]``, which DDP rejects for CPU
    modules (ENVIRONMENT.md); on CPU it is built without ``device_ids``."""
    original = d2_defaults.create_ddp_model

    def create(model: nn.Module, **kwargs: Any) -> nn.Module:
        if torch.device(cfg.MODEL.DEVICE).type == "cpu":
            kwargs["device_ids"] = None
        return original(model, **kwargs)

    d2_defaults.create_ddp_model = create
    try:
        yield
    finally:
        d2_defaults.create_ddp_model = original


class FinetuneTrainer(DefaultTrainer):
    """detectron2's ``DefaultTrainer`` for the head warm-up and fine-tuning (SPEC §1, §5).

    ``MODEL.WEIGHTS`` is read by our safe loader when the model is built; ``--resume`` uses the
    run's own checkpoints (``torch.load(weights_only=True)``); evaluation is VOC AP50.
    """

    def __init__(self, cfg: CfgNode) -> None:
        torch.manual_seed(int(cfg.BISSL.SEED))
        with _cpu_safe_ddp(cfg):
            super().__init__(cfg)

    @classmethod
    def build_model(cls, cfg: CfgNode) -> nn.Module:
        return build_detector(cfg)

    @classmethod
    def build_evaluator(cls, cfg: CfgNode, dataset_name: str, output_folder: str | None = None):  # noqa: ANN206
        return voc_evaluator(dataset_name)

    def build_hooks(self) -> list[HookBase | None]:
        """``DefaultTrainer``'s hooks, with the periodic checkpointer keeping the newest
        ``SOLVER.MAX_TO_KEEP`` (detectron2's own keeps every one)."""
        return [
            periodic_checkpointer(self.cfg, self.checkpointer, self.max_iter)
            if isinstance(hook, hooks.PeriodicCheckpointer)
            else hook
            for hook in super().build_hooks()
        ]

    def resume_or_load(self, resume: bool = True) -> None:
        if resume and self.checkpointer.has_checkpoint():
            self.checkpointer.resume_or_load("", resume=True)
            self.start_iter = self.iter + 1
