"""BYOL (Grill et al., 2020) as configured in BiSSL (SPEC §4).

Online network: backbone → projector → predictor (all 256-256-256). Target network: an
exponential moving average of the online backbone and projector, never reached by gradients.
Loss: ``byol_loss(p1, z2') + byol_loss(p2, z1')``, the symmetrised ``2 - 2 cos`` of the BYOL paper.
The EMA rate τ is constant (0.9995, the published setting) or follows BYOL's cosine schedule
``τ_k = 1 - (1 - τ_base) (cos(π k / K) + 1) / 2`` from τ_base at step 0 to 1 at step K.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
from mmengine.registry import MODELS
from torch import Tensor, nn

from bissl_dense.pretext.heads import PredictionHead
from bissl_dense.pretext.losses import byol_loss
from bissl_dense.pretext.methods.base import PretextMethod

MOMENTUM_SCHEDULES = ("constant", "cosine")


def target_momentum(base: float, step: int, max_steps: int, schedule: str = "constant") -> float:
    """EMA rate τ used after optimizer step ``step`` (0-based) of ``max_steps``."""
    if schedule == "constant":
        return base
    if schedule == "cosine":
        progress = min(max(step / max(max_steps, 1), 0.0), 1.0)
        return 1.0 - (1.0 - base) * (math.cos(math.pi * progress) + 1.0) / 2.0
    raise ValueError(f"momentum_schedule must be one of {MOMENTUM_SCHEDULES}, got {schedule!r}")


@MODELS.register_module()
class BYOL(PretextMethod):
    """BYOL on two views; see :class:`PretextMethod` for the shared arguments.

    Args:
        predictor: keyword arguments of :class:`PredictionHead` (``in_dim`` and ``out_dim``
            default to the projector's output size).
        base_momentum: τ (constant schedule) or τ_base (cosine schedule).
        momentum_schedule: ``"constant"`` or ``"cosine"``.
    """

    task_name = "byol"
    head_module_names = ("projector", "predictor")

    def __init__(
        self,
        predictor: dict[str, Any] | None = None,
        base_momentum: float = 0.9995,
        momentum_schedule: str = "constant",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if not 0.0 <= base_momentum <= 1.0:
            raise ValueError(f"BYOL: base_momentum must be in [0, 1], got {base_momentum}")
        if momentum_schedule not in MOMENTUM_SCHEDULES:
            raise ValueError(
                f"BYOL: momentum_schedule must be one of {MOMENTUM_SCHEDULES}, "
                f"got {momentum_schedule!r}"
            )
        predictor = dict(predictor or {})
        predictor.setdefault("in_dim", self.projector.out_dim)
        predictor.setdefault("out_dim", self.projector.out_dim)  # predicts a projection
        self.predictor = PredictionHead(**predictor)
        self.base_momentum = float(base_momentum)
        self.momentum_schedule = momentum_schedule
        # With a frozen backbone the target backbone would equal the online one forever: the
        # target reuses the online features instead of holding a copy.
        self.target_backbone: nn.Module | None = (
            None if self.freeze_backbone else copy.deepcopy(self.backbone)
        )
        self.target_projector = copy.deepcopy(self.projector)
        for module in self.target_modules():
            module.requires_grad_(False)
        self.load_head_checkpoint()

    @torch.no_grad()
    def reset_target(self) -> None:
        """target ← online (parameters and buffers).

        Called whenever online weights are loaded (a pretext head, a backbone for BiSSL's lower
        level): a target left at its random initialisation would make the first BYOL steps
        regress onto noise.
        """
        if not hasattr(self, "target_projector"):  # heads loaded before the target exists
            return
        for online, target in self.online_target_pairs():
            target.load_state_dict(online.state_dict())

    def target_modules(self) -> list[nn.Module]:
        return [m for m in (self.target_backbone, self.target_projector) if m is not None]

    def online_target_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        pairs = [(self.projector, self.target_projector)]
        if self.target_backbone is not None:
            pairs.insert(0, (self.backbone, self.target_backbone))
        return pairs

    def momentum_at(self, step: int, max_steps: int) -> float:
        return target_momentum(self.base_momentum, step, max_steps, self.momentum_schedule)

    def predict(self, images: Tensor) -> Tensor:
        return self.predictor(self.projector(self.embed(images)))

    @torch.no_grad()
    def target_projection(self, images: Tensor) -> Tensor:
        if self.target_backbone is None:
            features = self.embed(images)
        else:
            features = self.target_backbone(images)
        return self.target_projector(features)

    def pretext_loss(self, view1: Tensor, view2: Tensor) -> Tensor:
        prediction1, prediction2 = self.predict(view1), self.predict(view2)
        target1, target2 = self.target_projection(view1), self.target_projection(view2)
        return byol_loss(prediction1, target2) + byol_loss(prediction2, target1)

    @torch.no_grad()
    def update_target(self, momentum: float) -> None:
        """``target ← τ·target + (1 − τ)·online`` for every parameter.

        Target BatchNorm buffers are not averaged: the target runs in train mode (batch
        statistics, as in BYOL) and keeps its own running statistics.
        """
        for online, target in self.online_target_pairs():
            online_params = list(online.parameters())
            target_params = list(target.parameters())
            torch._foreach_mul_(target_params, momentum)
            torch._foreach_add_(
                target_params, [p.detach() for p in online_params], alpha=1.0 - momentum
            )

    def after_optimizer_step(self, step: int, max_steps: int) -> None:
        self.update_target(self.momentum_at(step, max_steps))
