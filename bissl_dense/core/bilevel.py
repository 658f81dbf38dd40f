"""BiSSL's lower and upper steps and their alternation (SPEC §2–§3, paper Alg. 1).

A task adapter (classification, detection, segmentation) supplies

* ``lower_model`` and its submodule ``lower_backbone`` (θ_L); the rest of ``lower_model``'s
  trainable parameters are the pretext head φ_P;
* ``upper_model`` (θ_U plus the downstream head φ_D);
* ``lower_loss(batch) -> L_P`` evaluated with ``lower_model``;
* ``upper_loss(batch, backbone) -> L_D`` evaluated with ``upper_model``, where ``backbone`` is
  either ``None`` (use the upper model's own θ_U) or a dict ``{upper parameter name: tensor}`` to
  substitute for the upper backbone (the adapter typically calls ``torch.func.functional_call``);
* the lower→upper backbone parameter-name correspondence (checked by ``BackboneCorrespondence``).

Nothing here imports a training framework: the mmengine integration drives ``BilevelTrainer``
from a loop of its own, and so can anything else.

Distributed training: every rank holds full replicas (no DDP wrapper, since the upper loss runs
the model functionally with substituted parameters). After each backward the gradients are
averaged across ranks with one flattened all-reduce, which is what DDP would do. Batch-coupled
layers (BatchNorm) see only the local batch, as under DDP without SyncBatchNorm.

Mixed precision (``BiSSLConfig.autocast``): the forward passes of the lower loss and of both upper
losses run under ``torch.autocast`` (bf16 or fp16); parameters, gradients, optimiser states and
the implicit-gradient products stay float32 (:mod:`bissl_dense.core.implicit` evaluates its losses
with autocast disabled). fp16 gets one ``torch.amp.GradScaler`` per level; see
:meth:`BilevelStep.upper_step` for why loss scaling through the implicit gradient is sound.
Channels-last needs nothing here: a backbone whose weights are NHWC runs its convolutions NHWC,
parameters and vectors of any layout mix freely in the solvers, and the task's losses convert
their inputs (:mod:`bissl_dense.stage.builder`).
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn

from bissl_dense.core.correspondence import BackboneCorrespondence
from bissl_dense.core.hvp import HVP_MODES, HVPMode, gradients, make_hvp
from bissl_dense.core.implicit import SOLVERS, ImplicitSolver, SolverKind
from bissl_dense.core.krylov import CGMode
from bissl_dense.distributed import all_reduce_mean_
from bissl_dense.seeding import draw_seed

__all__ = [
    "AUTOCAST_DTYPES",
    "BiSSLConfig",
    "BilevelStep",
    "BilevelTrainer",
    "Phase",
    "linear_warmup_cosine",
    "phase_of_step",
    "reference_schedule",
]

LowerLoss = Callable[[Any], Tensor]
UpperLoss = Callable[[Any, Mapping[str, Tensor] | None], Tensor]
Phase = Literal["lower", "upper"]
AutocastDType = Literal["bfloat16", "float16"]
AUTOCAST_DTYPES: dict[str, torch.dtype] = {"bfloat16": torch.bfloat16, "float16": torch.float16}
_REDUCED = frozenset(AUTOCAST_DTYPES.values())
_log = logging.getLogger(__name__)


@dataclass
class BiSSLConfig:
    """BiSSL's hyper-parameters; defaults are the paper's (SPEC §4)."""

    lam: float = 0.001  # λ, weight of the proximal term (λ/2)||θ_L − θ_U||²
    damping: float = 10.0  # δ, CG solves (I + H/(λ + δ)) x = v
    cg_iters: int = 5  # K
    cg: CGMode = "global"  # the reference uses "layerwise"; global leaves smaller residuals
    hvp: HVPMode = "exact"
    # "minres" | "cg" | "recycled" (implicit.py). MINRES by measurement: on the benchmark
    # (ResNet-18, SimCLR, K=5, δ=10; python -m bissl_dense.benchmarks.implicit) I + H/(λ+δ) is
    # indefinite and K=5 CG ends at a relative residual of 8.9 (global) / 160 (layer-wise), i.e.
    # further from the solution than x = 0, while MINRES, at the same cost of one product per
    # iteration, ends at 0.97 (its residual never increases, so never above 1) and its upper
    # gradient is 13x closer to that of a 20-iteration solve. `cg` ("global"/"layerwise")
    # applies to solver="cg" only, which reproduces the reference's layer-wise CG.
    solver: SolverKind = "minres"
    # Combine each solve with the stage's previous solution (no product; never a larger
    # residual). Measured: CG 10.4 -> 3.0 mean residual, MINRES unchanged (0.97), so off.
    warm_start: bool = False
    grad_clip_norm: float | None = 10.0  # per level, L2 norm over that level's parameters
    discard_implicit_jacobian: bool = False  # ablation "IJ discarded" (paper §4.4)
    train_pretext_head: bool = True  # φ_P is optimised with θ_L at the lower level (paper Eq. 3)
    alternations: int = 500  # T
    lower_steps: int = 20  # N_L
    upper_steps: int = 8  # N_U
    # Log the relative CG residual ‖(I + H/(λ+δ))x − v‖/‖v‖ every this many upper steps (0: never).
    # It costs one more Hessian-vector product on those steps.
    residual_every: int = 0
    # Mixed precision of the lower and upper losses' forward passes: None (float32), "bfloat16"
    # or "float16" (one GradScaler per level). The implicit-gradient products, parameters,
    # gradients and optimiser states stay float32 (BilevelStep).
    autocast: AutocastDType | None = None
    # Reproduce the BiSSL reference's algorithm where bissl's defaults differ (README table
    # "bissl and the reference"): its solver (layer-wise CG with 1e-12 guards, K recomputed
    # products), its schedules (first update at the full rate, warm-up k/W, cosine to 0.001 of
    # the base rate), BatchNorm running statistics moved by the θ_L pass and by every product
    # (bissl restores them), and its Hessian batch (the first batch of the lower level's current
    # shuffle, not a batch of its own). Sets solver, cg and hvp.
    reference_parity: bool = False

    def __post_init__(self) -> None:
        bad = [
            f"{k}={getattr(self, k)!r}"
            for k in ("cg_iters", "alternations", "lower_steps", "upper_steps")
            if int(getattr(self, k)) < 0 or (k != "cg_iters" and int(getattr(self, k)) < 1)
        ]
        if int(self.residual_every) < 0:
            bad.append(f"residual_every={self.residual_every!r} (must be >= 0)")
        if self.lam + self.damping <= 0:
            bad.append(f"lam + damping = {self.lam + self.damping} (must be > 0)")
        if self.reference_parity:
            if self.warm_start:
                bad.append("warm_start=True (the reference has no warm start)")
            self.solver, self.cg, self.hvp = "cg", "layerwise", "recompute"
        if self.solver not in SOLVERS:
            bad.append(f"solver={self.solver!r} (one of {list(SOLVERS)})")
        elif self.cg not in ("global", "layerwise") or (
            self.cg == "layerwise" and self.solver != "cg"
        ):
            bad.append(
                f"cg={self.cg!r} with solver={self.solver!r} ('layerwise' is the reference's CG "
                "variant: solver='cg' only; otherwise 'global')"
            )
        if self.hvp not in HVP_MODES:
            bad.append(f"hvp={self.hvp!r} (one of {list(HVP_MODES)})")
        if self.grad_clip_norm is not None and not self.grad_clip_norm > 0:
            bad.append(f"grad_clip_norm={self.grad_clip_norm!r} (> 0, or None for no clipping)")
        if self.autocast is not None and self.autocast not in AUTOCAST_DTYPES:
            bad.append(
                f"autocast={self.autocast!r} (None for float32, or one of {list(AUTOCAST_DTYPES)})"
            )
        if bad:
            raise ValueError(f"invalid BiSSLConfig: {', '.join(bad)}")

    @property
    def steps_per_alternation(self) -> int:
        return self.lower_steps + self.upper_steps

    @property
    def total_steps(self) -> int:
        return self.alternations * self.steps_per_alternation

    @property
    def lower_stage_length(self) -> int:
        """Lower batches one alternation consumes: N_L steps and the Hessian batch, which is a
        batch of its own (bissl) or the first batch of the current shuffle (reference parity)."""
        return self.lower_steps + (0 if self.reference_parity else 1)


def phase_of_step(step: int, config: BiSSLConfig) -> tuple[Phase, int, int]:
    """(phase, alternation index, index within the phase) of the global step number ``step``."""
    alternation, within = divmod(step, config.steps_per_alternation)
    if within < config.lower_steps:
        return "lower", alternation, within
    return "upper", alternation, within - config.lower_steps


def linear_warmup_cosine(warmup_steps: int, total_steps: int) -> Callable[[int], float]:
    """Learning-rate factor for ``torch.optim.lr_scheduler.LambdaLR``: linear warm-up, then cosine
    to zero at ``total_steps`` (SPEC §3: the lower level warms up over 10·N_L steps)."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


def reference_schedule(
    warmup_steps: int, total_steps: int, end_fraction: float = 0.001
) -> Callable[[int], float]:
    """The BiSSL reference's schedule as a ``LambdaLR`` factor of update ``n`` (0-based).

    Its scheduler sets the rate after each update: the first update runs at the base rate, update
    n ≥ 1 at n/W of it during the warm-up (W steps), then a cosine from the base rate to
    ``end_fraction`` of it at ``total_steps``. bissl's default (:func:`linear_warmup_cosine`)
    warms up from the first update ((n + 1)/W) and ends at 0.
    """

    def factor(step: int) -> float:
        if step == 0:
            return 1.0
        if step < warmup_steps:
            return step / warmup_steps
        q = 0.5 * (1.0 + math.cos(math.pi * (step - warmup_steps) / (total_steps - warmup_steps)))
        return q + end_fraction * (1.0 - q)

    return factor


@contextmanager
def restored_buffers(module: nn.Module) -> Iterator[None]:
    """Run a block after which every buffer of ``module`` is exactly as before it.

    Used for forward passes whose side effects on BatchNorm running statistics must be
    discarded: the upper model evaluated with the lower backbone substituted (SPEC §2), which
    in train mode normalises with the batch statistics but must not move the upper model's
    running statistics towards those of θ_L's features.
    """
    buffers = list(module.buffers())
    saved = [b.detach().clone() for b in buffers]
    try:
        yield
    finally:
        # through .data: a graph retained across the block (the implicit solver's per-stage
        # graph) may have saved these tensors; an autograd-visible copy_ would invalidate it
        with torch.no_grad():
            for b, value in zip(buffers, saved, strict=True):
                b.data.copy_(value)


def average_buffers(module: nn.Module) -> None:
    """Average the floating-point buffers (BatchNorm running statistics) across ranks.

    Each rank normalises with its own batch's statistics, so without this the running statistics
    drift apart between the replicas: evaluation on several processes would use a different
    model on each shard, and a run resumed from the checkpoint one rank wrote would give every
    rank that rank's statistics (not bit-identical to the uninterrupted run). The mean over the
    ranks of the running means is the running mean of the union batch (equal batch sizes); DDP
    instead broadcasts rank 0's buffers. One collective; a no-op in a single process.
    """
    all_reduce_mean_([b for b in module.buffers() if b.is_floating_point()])


def _buffer_correspondence(
    lower_backbone: nn.Module, upper_model: nn.Module, correspondence: Mapping[str, str]
) -> dict[str, Tensor]:
    """{upper buffer name: lower backbone buffer} for the modules the parameter correspondence
    pairs (a BatchNorm's running statistics follow its weight)."""
    modules = {
        lower.rpartition(".")[0]: upper.rpartition(".")[0]
        for lower, upper in correspondence.items()
    }
    upper_buffers = dict(upper_model.named_buffers())
    pairs = {}
    for name, buffer in lower_backbone.named_buffers():
        module, _, leaf = name.rpartition(".")
        if module in modules:
            upper_name = f"{modules[module]}.{leaf}" if modules[module] else leaf
            if upper_name not in upper_buffers:
                raise ValueError(f"lower buffer {name} has no upper counterpart {upper_name}")
            pairs[upper_name] = buffer
    return pairs


def _cuda_devices() -> list[int]:
    return list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []


def _trainable(params: Iterator[tuple[str, nn.Parameter]], exclude: set[str]) -> list[nn.Parameter]:
    return [p for name, p in params if p.requires_grad and name not in exclude]


class BilevelStep:
    """One lower or one upper BiSSL update, on models, losses and optimisers a task supplies.

    The lower optimiser must hold θ_L (and φ_P when ``config.train_pretext_head``); the upper
    optimiser θ_U and φ_D. Schedulers, when given, are stepped after every update of their level
    (SPEC §3: each level's learning rate follows its own schedule, counted in its own steps).
    ``after_lower_update(k)`` runs after the k-th (0-based) lower optimiser step, e.g. BYOL's
    target EMA, which must follow the online network after every lower step.

    BatchNorm: the upper model is evaluated twice per upper step, in train mode (batch
    statistics). The pass with θ_U updates its running statistics as fine-tuning would; the pass
    with θ_L substituted leaves them exactly unchanged (:func:`restored_buffers`).

    Mixed precision (``config.autocast``): each level's loss forward passes run under
    ``torch.autocast`` on the parameters' device type; backward passes, the solve and the
    optimiser steps run outside it. With ``"float16"`` each level has its own
    ``torch.amp.GradScaler`` (``lower_scaler``, ``upper_scaler``): the levels' losses and
    gradients differ by orders of magnitude, so one shared scale would be wrong for one of them.
    A step whose gradients overflow is skipped by the scaler (the counters and learning-rate
    schedules still advance, as with ``GradScaler`` anywhere).
    """

    def __init__(
        self,
        *,
        lower_model: nn.Module,
        lower_backbone: nn.Module,
        upper_model: nn.Module,
        correspondence: Mapping[str, str],
        lower_loss: LowerLoss,
        upper_loss: UpperLoss,
        lower_optimizer: torch.optim.Optimizer,
        upper_optimizer: torch.optim.Optimizer,
        lower_scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
        upper_scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
        config: BiSSLConfig | None = None,
        after_lower_update: Callable[[int], None] | None = None,
    ) -> None:
        self.config = config or BiSSLConfig()
        self.after_lower_update = after_lower_update
        self.lower_updates = 0  # lower optimiser steps taken (BYOL's EMA schedule counts them)
        self.upper_updates = 0
        self.correspondence = BackboneCorrespondence(lower_backbone, upper_model, correspondence)
        cfg = self.config
        # One solver per step: H is fixed during an upper stage, so the products' graph / base
        # gradient is built once per stage (begin_upper_stage), not once per upper step.
        self.implicit_solver = ImplicitSolver(
            lam=cfg.lam,
            damping=cfg.damping,
            iters=cfg.cg_iters,
            cg=cfg.cg,
            hvp=cfg.hvp,
            solver=cfg.solver,
            warm_start=cfg.warm_start,
        )
        self.lower_model, self.upper_model = lower_model, upper_model
        self.lower_loss, self.upper_loss = lower_loss, upper_loss
        self.lower_optimizer, self.upper_optimizer = lower_optimizer, upper_optimizer
        self.lower_scheduler, self.upper_scheduler = lower_scheduler, upper_scheduler

        first = next(iter(lower_backbone.parameters()), None)
        self.device_type = first.device.type if first is not None else "cpu"
        self.lower_scaler: torch.amp.GradScaler | None = None
        self.upper_scaler: torch.amp.GradScaler | None = None
        if cfg.autocast == "float16":
            self.lower_scaler = torch.amp.GradScaler(self.device_type)
            self.upper_scaler = torch.amp.GradScaler(self.device_type)

        backbone_params = dict(lower_backbone.named_parameters())
        upper_params = dict(upper_model.named_parameters())
        self.lower_backbone_params = [backbone_params[n] for n in self.correspondence.lower_names]
        self.upper_backbone_params = [upper_params[n] for n in self.correspondence.upper_names]
        # reference parity: the θ_L pass runs on the lower backbone's BatchNorm buffers
        self.lower_buffers_by_upper_name = (
            _buffer_correspondence(lower_backbone, upper_model, correspondence)
            if self.config.reference_parity
            else {}
        )
        backbone_ids = {id(p) for p in self.lower_backbone_params}
        self.pretext_head_params = [
            p for p in lower_model.parameters() if p.requires_grad and id(p) not in backbone_ids
        ]
        self.downstream_head_params = _trainable(
            upper_model.named_parameters(), set(self.correspondence.upper_names)
        )
        self._check_optimizer(
            lower_optimizer,
            self.lower_backbone_params
            + (self.pretext_head_params if self.config.train_pretext_head else []),
            "lower_optimizer",
        )
        self._check_optimizer(
            upper_optimizer,
            self.upper_backbone_params + self.downstream_head_params,
            "upper_optimizer",
        )

    @staticmethod
    def _check_optimizer(optimizer: torch.optim.Optimizer, params: list[Tensor], name: str) -> None:
        held = {id(p) for group in optimizer.param_groups for p in group["params"]}
        missing = sum(id(p) not in held for p in params)
        if missing:
            raise ValueError(
                f"{name} does not hold {missing} of the {len(params)} parameters it must update; "
                f"build it over all of them"
            )

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        """The mixed-precision context of the losses' forward passes (a no-op for float32)."""
        if self.config.autocast is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=AUTOCAST_DTYPES[self.config.autocast])

    @staticmethod
    def _optimizer_step(
        optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler | None
    ) -> None:
        if scaler is None:
            optimizer.step()
            return
        scaler.step(optimizer)  # skipped if unscale_ found an inf/NaN gradient
        scaler.update()

    def _clip(self, params: list[Tensor]) -> Tensor:
        """Clip to the level's norm and return the norm before clipping (no host sync)."""
        max_norm = self.config.grad_clip_norm
        with_grad = [p for p in params if p.grad is not None]
        if max_norm is None or not with_grad:
            grads = [p.grad for p in with_grad]
            return (
                torch.linalg.vector_norm(torch.stack([g.norm() for g in grads]))
                if grads
                else torch.zeros(())
            )
        return torch.nn.utils.clip_grad_norm_(with_grad, max_norm)

    def lower_step(self, batch: Any) -> dict[str, Tensor]:
        """Minimise L_P(θ_L, φ_P) + (λ/2)||θ_L − θ_U||² by one optimiser step, θ_U fixed."""
        cfg = self.config
        scaler = self.lower_scaler
        self.lower_optimizer.zero_grad(set_to_none=True)
        with self.autocast():
            pretext_loss = self.lower_loss(batch)
        # float32, outside autocast: θ_L − θ_U is a difference of nearly equal parameters
        proximal = sum(
            torch.sum((lo - up.detach()) ** 2)
            for lo, up in zip(self.lower_backbone_params, self.upper_backbone_params, strict=True)
        )
        # a loss returned in bf16/fp16 is summed (and scaled) in float32; float64 stays float64
        total = (
            pretext_loss.float() if pretext_loss.dtype in _REDUCED else pretext_loss
        ) + 0.5 * cfg.lam * proximal
        (total if scaler is None else scaler.scale(total)).backward()
        trained = self.lower_backbone_params + (
            self.pretext_head_params if cfg.train_pretext_head else []
        )
        if not cfg.train_pretext_head:
            for p in self.pretext_head_params:
                p.grad = None
        for p in trained:  # every rank must all-reduce the same list of tensors
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        all_reduce_mean_([p.grad for p in trained])
        if scaler is not None:  # clip the true gradients; unscale_ also records an overflow
            scaler.unscale_(self.lower_optimizer)
        grad_norm = self._clip(trained)
        self._optimizer_step(self.lower_optimizer, scaler)
        if self.lower_scheduler is not None:
            self.lower_scheduler.step()
        if self.after_lower_update is not None:
            self.after_lower_update(self.lower_updates)
        average_buffers(self.lower_model)
        self.lower_updates += 1
        metrics = {
            "lower/pretext_loss": pretext_loss.detach(),
            "lower/proximal": proximal.detach()
            if isinstance(proximal, Tensor)
            else torch.zeros(()),
            "lower/grad_norm": grad_norm.detach(),
        }
        if scaler is not None:
            metrics["lower/loss_scale"] = torch.tensor(scaler.get_scale())
        return metrics

    def upper_step(self, batch: Any, hessian_batch: Any) -> dict[str, Tensor]:
        """One upper update of θ_U and φ_D with the gradients of SPEC §2 (θ_L fixed).

        backbone:  (I + H/(λ+δ))⁻¹ ∇_θ L_D(θ_L, φ_D) + ∇_θ L_D(θ_U, φ_D)
        head:      ∇_φ L_D(θ_L, φ_D) + ∇_φ L_D(θ_U, φ_D)
        H is the Hessian of L_P on ``hessian_batch`` w.r.t. θ_L only (φ_P fixed, paper App. A).

        fp16 loss scaling through the implicit gradient is sound, so fp16 is supported rather
        than refused. The right-hand side is then v_s = s·v (s the upper scaler's scale) and is
        solved as is, unscaled afterwards with the other gradients by ``GradScaler.unscale_``:
        (1) the products are float32 (autocast is disabled inside the solver) and linear in their
        argument, so s only multiplies the vectors, far from float32's range limits; (2) K-step
        CG, MINRES and the recycled solver are homogeneous of degree one in v (each iterate is a
        combination of Krylov vectors of A and v whose coefficients scale with v), and the warm
        start's least-squares combination is invariant to the scale of either solution, so
        x(s·v) = s·x(v); with s a power of two (GradScaler's scales are) the float32 arithmetic
        commutes with the scaling too. What fp16 can break is the backward of the upper loss
        (overflow to inf): a non-finite v is then not solved (it would poison the warm start and
        the recycled subspace); it is passed on so that the scaler skips the step and backs off.
        """
        cfg = self.config
        scaler = self.upper_scaler
        theta_u, theta_l = self.upper_backbone_params, self.lower_backbone_params
        head = self.downstream_head_params
        n_backbone = len(theta_u)

        def scaled(loss: Tensor) -> Tensor:
            return loss if scaler is None else scaler.scale(loss)

        def classic_pass() -> tuple[Tensor, list[Tensor]]:  # L_D at θ_U
            with self.autocast():
                loss = self.upper_loss(batch, None)
            return loss, gradients(scaled(loss), theta_u + head)

        def implicit_pass() -> tuple[Tensor, list[Tensor]]:  # L_D with θ_L substituted
            substituted = dict(zip(self.correspondence.upper_names, theta_l, strict=True))
            # bissl: this pass leaves every running statistic as it was (restored after the
            # backward: BatchNorm's autograd node holds the statistics it updated in place and
            # checks they were not changed since). The reference runs its lower backbone module
            # here, moving θ_L's statistics and the head's: with parity, the lower backbone's
            # buffers are substituted too and nothing is restored.
            substituted.update(self.lower_buffers_by_upper_name)
            guard = (
                contextlib.nullcontext()
                if cfg.reference_parity
                else restored_buffers(self.upper_model)
            )
            with guard:
                with self.autocast():
                    loss = self.upper_loss(batch, substituted)
                return loss, gradients(scaled(loss), theta_l + head)

        # the reference takes the θ_L pass first; the order matters only for the running
        # statistics of the head, which parity lets both passes move
        if cfg.reference_parity and not cfg.discard_implicit_jacobian:
            implicit_loss, implicit = implicit_pass()
            classic_loss, grads = classic_pass()
        else:
            classic_loss, grads = classic_pass()
            if not cfg.discard_implicit_jacobian:
                implicit_loss, implicit = implicit_pass()
        backbone_grad, head_grad = grads[:n_backbone], grads[n_backbone:]
        metrics = {"upper/loss": classic_loss.detach()}

        if cfg.discard_implicit_jacobian:
            all_reduce_mean_(grads)
        else:
            lower_grad = implicit[:n_backbone]
            head_grad = [a + b for a, b in zip(head_grad, implicit[n_backbone:], strict=True)]
            # One collective for everything; the CG right-hand side must be the rank average.
            all_reduce_mean_(backbone_grad + head_grad + lower_grad)
            # fp16 only: one host sync (GradScaler.step makes one anyway); identical on all ranks
            # since the right-hand side was averaged (an inf or NaN anywhere reaches every rank)
            solvable = scaler is None or bool(
                torch.stack([torch.isfinite(g).all() for g in lower_grad]).all()
            )
            if solvable:
                ij_product = self._solve(lower_grad, hessian_batch)
                metrics.update(self._solve_metrics())
            else:  # the overflow reaches the upper gradient, unscale_ sees it, the step is skipped
                ij_product = lower_grad
            if solvable and cfg.residual_every and self.upper_updates % cfg.residual_every == 0:
                metrics["upper/cg_relative_residual"] = self.relative_residual(
                    hessian_batch, ij_product, lower_grad
                )
            backbone_grad = [a + b for a, b in zip(backbone_grad, ij_product, strict=True)]
            metrics["upper/loss_at_lower_backbone"] = implicit_loss.detach()

        self.upper_optimizer.zero_grad(set_to_none=True)
        for p, g in zip(theta_u + head, backbone_grad + head_grad, strict=True):
            p.grad = g
        if scaler is not None:  # clip the true gradients; unscale_ also records an overflow
            scaler.unscale_(self.upper_optimizer)
        metrics["upper/grad_norm"] = self._clip(theta_u + head).detach()
        self._optimizer_step(self.upper_optimizer, scaler)
        if self.upper_scheduler is not None:
            self.upper_scheduler.step()
        average_buffers(self.upper_model)
        self.upper_updates += 1
        if scaler is not None:
            metrics["upper/loss_scale"] = torch.tensor(scaler.get_scale())
        return metrics

    def _solve(self, rhs: list[Tensor], hessian_batch: Any) -> list[Tensor]:
        """(I + H/(λ+δ))⁻¹ rhs with the stage's solver (a one-shot stage outside one)."""
        one_shot = not self.implicit_solver.active  # called outside begin/end_upper_stage
        if one_shot:
            self.begin_upper_stage(hessian_batch)
        try:
            return self.implicit_solver.solve(rhs)
        finally:
            if one_shot:
                self.end_upper_stage()

    def _solve_metrics(self) -> dict[str, Tensor]:
        """The solve's own relative residual (from its recurrences, no product) and, after a
        breakdown, a warning naming the upper step, where the solver stopped and why."""
        info = self.implicit_solver.last_info
        if info is None:
            return {}
        metrics = {"upper/solver_breakdown": torch.tensor(float(info.breakdown is not None))}
        if info.residual is not None:
            metrics["upper/solver_residual"] = torch.tensor(info.residual)
        if info.breakdown is not None:
            _log.warning("BiSSL upper step %d: %s", self.upper_updates, info.describe())
        return metrics

    def begin_upper_stage(self, hessian_batch: Any) -> None:
        """θ_L and the Hessian batch are fixed from here until :meth:`end_upper_stage`: build the
        implicit solver's per-stage state (exact: one forward pass and first-order graph)."""
        self.implicit_solver.begin_stage(
            lambda: self.lower_loss(hessian_batch),
            self.lower_backbone_params,
            # restored after every product (bissl); the reference lets each recomputed
            # product move the running statistics
            [] if self.config.reference_parity else list(self.lower_model.buffers()),
            module=self.lower_model,
        )

    def end_upper_stage(self) -> None:
        """Free the stage's graph / cached gradient (after the stage's last upper step)."""
        self.implicit_solver.end_stage()

    def relative_residual(
        self, hessian_batch: Any, solution: list[Tensor], rhs: list[Tensor]
    ) -> Tensor:
        """‖(I + H/(λ+δ))x − v‖ / ‖v‖ for the CG solution x of the right-hand side v.

        One exact Hessian-vector product on the Hessian batch (θ_L fixed), averaged across ranks
        like the products inside the solve; the lower model's buffers are left unchanged.
        """
        cfg = self.config
        if self.implicit_solver.active and cfg.hvp == "exact":  # the stage's graph: one product
            return self.implicit_solver.relative_residual(solution, rhs)
        with restored_buffers(self.lower_model):
            hx = make_hvp(lambda: self.lower_loss(hessian_batch), self.lower_backbone_params)(
                solution
            )
        all_reduce_mean_(hx)
        scale = 1.0 / (cfg.lam + cfg.damping)
        residual = [x + scale * h - v for x, h, v in zip(solution, hx, rhs, strict=True)]
        num = torch.linalg.vector_norm(torch.stack([r.norm() for r in residual]))
        den = torch.linalg.vector_norm(torch.stack([v.norm() for v in rhs]))
        return (num / den.clamp_min(torch.finfo(den.dtype).tiny)).detach()

    def state_dict(self, include_optimizers: bool = True) -> dict[str, Any]:
        """Optimisers (unless a framework saves them itself), schedulers, update counters and,
        with fp16, the two GradScalers (their scale and growth tracker: plain numbers)."""
        state: dict[str, Any] = {
            "lower_updates": self.lower_updates,
            "upper_updates": self.upper_updates,
        }
        if include_optimizers:
            state["lower_optimizer"] = self.lower_optimizer.state_dict()
            state["upper_optimizer"] = self.upper_optimizer.state_dict()
        if self.lower_scheduler is not None:
            state["lower_scheduler"] = self.lower_scheduler.state_dict()
        if self.upper_scheduler is not None:
            state["upper_scheduler"] = self.upper_scheduler.state_dict()
        for name in ("lower_scaler", "upper_scaler"):
            scaler = getattr(self, name)
            if scaler is not None:
                state[name] = scaler.state_dict()
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Inverse of :meth:`state_dict`; optimisers are loaded only when the state holds them.

        A GradScaler's state is loaded when both the state and this step have it. Precision may
        change on resume: a run resumed in fp16 from a float32/bf16 checkpoint starts at the
        scaler's initial scale, and a saved scale is ignored by a run without fp16.
        """
        if "lower_optimizer" in state:
            self.lower_optimizer.load_state_dict(state["lower_optimizer"])
            self.upper_optimizer.load_state_dict(state["upper_optimizer"])
        self.lower_updates = int(state.get("lower_updates", 0))
        self.upper_updates = int(state.get("upper_updates", 0))
        for name in ("lower_scaler", "upper_scaler"):
            scaler = getattr(self, name)
            if scaler is not None and name in state:
                scaler.load_state_dict(dict(state[name]))
        for name in ("lower_scheduler", "upper_scheduler"):
            scheduler = getattr(self, name)
            if (scheduler is None) != (name not in state):
                raise ValueError(
                    f"state has{'' if name in state else ' no'} {name} but the step "
                    f"was built with{'out' if scheduler is None else ''} one"
                )
            if scheduler is not None:
                scheduler.load_state_dict(state[name])
                # A scheduler built after its optimiser's state was loaded (as mmengine resumes)
                # reset the learning rates to the schedule's start; put back the saved ones.
                for group, lr in zip(
                    scheduler.optimizer.param_groups, scheduler.get_last_lr(), strict=True
                ):
                    group["lr"] = lr


BatchSource = Callable[[int], Iterator[Any]]


class BilevelTrainer:
    """The alternation of SPEC §3: T × (N_L lower steps, one Hessian batch, N_U upper steps).

    Args:
        step: the update machinery.
        lower_batches, upper_batches: factories ``start -> iterator of batches``, where ``start`` is
            the number of batches of that level already consumed (0 on a fresh run). Build them on
            ``BatchStack(..., stage_length=N_L + 1)`` and ``BatchStack(..., stage_length=N_U)`` to
            get the paper's reshuffling; the trainer only counts what it consumes.

        seed, rank: with a ``seed``, every step runs under a random state derived from
            (seed, step, rank), and every upper stage's Hessian-vector products under one derived
            from (seed, the stage's first step, rank). Random operations inside the steps
            (dropout, RoI sampling, masking) are then a function of where the run is, not of
            what ran before, so a resumed run repeats them on every rank. Without a seed the
            generator state is saved and restored, which is exact for one process only (a
            checkpoint holds one rank's state).

    ``state_dict()`` holds everything a resumed run needs besides the models' parameters: the
    step counter, the batches consumed per level, the position of the Hessian batch when saved
    inside an upper stage, the optimisers' and schedulers' state and the random state. It is the
    same on every rank, so the rank that writes checkpoints may save it for all: each rank draws
    its own Hessian batch back from its own batch source on resume (the sources are functions of
    (seed, position, rank)), and its own random state from ``seed``.
    """

    def __init__(
        self,
        step: BilevelStep,
        lower_batches: BatchSource,
        upper_batches: BatchSource,
        *,
        seed: int | None = None,
        rank: int = 0,
    ) -> None:
        self.step_fn = step
        self.config = step.config
        self._make_lower, self._make_upper = lower_batches, upper_batches
        self.seed, self.rank = seed, rank
        self.global_step = 0
        self.consumed = {"lower": 0, "upper": 0}
        self.hessian_batch: Any = None
        self._hessian_index = 0  # the lower batch number of the Hessian batch
        self._iters: dict[str, Iterator[Any] | None] = {"lower": None, "upper": None}

    def _draw_hessian_batch(self) -> Any:
        """bissl: the next lower batch, a batch of its own. Reference parity: the first batch of
        the lower level's current shuffle (the reference takes the first batch of a fresh
        iterator over its lower loader), without consuming one; the lower source must say
        where its shuffles start (``shuffle_start``, as :func:`~bissl_dense.stage.batch_source`
        and :meth:`BatchStack.shuffle_start` do)."""
        if not self.config.reference_parity:
            batch = self._next("lower")
            self._hessian_index = self.consumed["lower"] - 1
            return batch
        locate = getattr(self._make_lower, "shuffle_start", None)
        if locate is None:
            raise ValueError(
                "reference_parity needs a lower batch source with a shuffle_start(number) "
                "attribute (bissl_dense.stage.batch_source has one)"
            )
        self._hessian_index = int(locate(max(self.consumed["lower"] - 1, 0)))
        return next(self._make_lower(self._hessian_index))

    def _seed_for(self, step: int, stream: int) -> int:
        assert self.seed is not None
        return draw_seed(self.seed, step, 2 * self.rank + stream)

    def _begin_stage(self, stage_start: int) -> None:
        """Build the stage's products under the stage's own random state (seeded runs)."""
        if self.seed is None:
            self.step_fn.begin_upper_stage(self.hessian_batch)
            return
        with torch.random.fork_rng(devices=_cuda_devices()):
            torch.manual_seed(self._seed_for(stage_start, 1))
            self.step_fn.begin_upper_stage(self.hessian_batch)

    def _next(self, level: Phase) -> Any:
        if self._iters[level] is None:
            make = self._make_lower if level == "lower" else self._make_upper
            self._iters[level] = make(self.consumed[level])
        batch = next(self._iters[level])  # type: ignore[arg-type]
        self.consumed[level] += 1
        return batch

    @property
    def done(self) -> bool:
        return self.global_step >= self.config.total_steps

    def train_step(self) -> tuple[Phase, dict[str, Tensor]]:
        """Run the next step of the schedule and return its phase and metrics."""
        if self.done:
            raise RuntimeError(f"BiSSL already ran all {self.config.total_steps} steps")
        phase, _, within = phase_of_step(self.global_step, self.config)
        if self.seed is not None:
            torch.manual_seed(self._seed_for(self.global_step, 0))  # CPU and every CUDA device
        if phase == "lower":
            self.step_fn.lower_model.train()
            metrics = self.step_fn.lower_step(self._next("lower"))
        else:
            if within == 0:  # one lower batch, held for the whole upper stage
                self.hessian_batch = self._draw_hessian_batch()
                self.step_fn.end_upper_stage()
            self.step_fn.lower_model.train()  # the Hessian is taken in train mode (SPEC §3)
            solver = self.step_fn.implicit_solver
            if not solver.active and not self.config.discard_implicit_jacobian:
                # the stage's first step, or the first after a resume in mid-stage
                self._begin_stage(self.global_step - within)
            self.step_fn.upper_model.train()  # both upper passes use batch statistics
            metrics = self.step_fn.upper_step(self._next("upper"), self.hessian_batch)
            if within == self.config.upper_steps - 1:
                self.hessian_batch = None
                self.step_fn.end_upper_stage()
        self.global_step += 1
        return phase, metrics

    def run(
        self,
        max_steps: int | None = None,
        callback: Callable[[int, Phase, dict[str, Tensor]], None] | None = None,
    ) -> None:
        """Run to the end of the schedule (or ``max_steps`` more steps); ``callback(step, phase,
        metrics)`` after each step, e.g. for logging and checkpoints."""
        stop = (
            self.config.total_steps
            if max_steps is None
            else min(self.config.total_steps, self.global_step + max_steps)
        )
        while self.global_step < stop:
            phase, metrics = self.train_step()
            if callback is not None:
                callback(self.global_step, phase, metrics)

    def state_dict(self, include_optimizers: bool = True) -> dict[str, Any]:
        """Everything a resumed run needs besides the models' parameters and buffers.

        ``include_optimizers=False`` leaves the optimisers' state out, for frameworks that save
        it themselves (the mmengine and detectron2 drivers). The Hessian batch is held as the
        batch itself (tensors and plain containers for the pretext loaders of this project), so
        that ``torch.load(weights_only=True)`` reads it back.
        """
        rng: dict[str, Any] = {"torch": torch.get_rng_state()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        return {
            "global_step": self.global_step,
            "consumed": dict(self.consumed),
            # the Hessian batch is the last lower batch drawn; each rank draws its own back
            "hessian_batch_index": None if self.hessian_batch is None else self._hessian_index,
            "step": self.step_fn.state_dict(include_optimizers),
            "rng": rng,
            "config": asdict(self.config),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        saved = state["config"]
        schedule = ("alternations", "lower_steps", "upper_steps")
        if any(saved[k] != getattr(self.config, k) for k in schedule):
            raise ValueError(
                "the checkpoint's schedule "
                f"{ {k: saved[k] for k in schedule} } differs from this run's "
                f"{ {k: getattr(self.config, k) for k in schedule} }"
            )
        self.global_step = int(state["global_step"])
        self.consumed = {k: int(v) for k, v in state["consumed"].items()}
        self.step_fn.load_state_dict(state["step"])
        if self.seed is None:  # a seeded run derives its random state from where it is
            torch.set_rng_state(state["rng"]["torch"])
            if "cuda" in state["rng"] and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(state["rng"]["cuda"])
        self._iters = {"lower": None, "upper": None}
        self.hessian_batch = None
        index = state.get("hessian_batch_index")
        if index is not None:
            if not self.config.reference_parity and index != self.consumed["lower"] - 1:
                raise ValueError(
                    f"the checkpoint's Hessian batch is lower batch {index}, but "
                    f"{self.consumed['lower']} lower batches were consumed"
                )
            # this rank's own batch at that position (a checkpoint is written by one rank)
            self._hessian_index = int(index)
            self.hessian_batch = next(self._make_lower(index))
        elif state.get("hessian_batch") is not None:  # a checkpoint of an earlier version
            self.hessian_batch = state["hessian_batch"]
        self.step_fn.end_upper_stage()  # a stage in progress is rebuilt at the next upper step
