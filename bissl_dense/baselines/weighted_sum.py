"""The weighted-sum baseline (SPEC §6, paper App. B.9.4): min (1−w)·L_P + w·L_D, one backbone.

Joint single-level training of the backbone θ, the pretext head φ_P and the downstream head φ_D
on ``(1−w)·L_P(θ, φ_P) + w·L_D(θ, φ_D)``. As in the paper, each term is computed on its own
mini-batch (a pretext batch and a downstream batch, drawn from separate streams), the two
backbone gradients are scaled by (1−w) and w and summed before the update, the optimiser is
BiSSL's lower-level one (LARS, lr 1.0, warm-up over 10·N_L steps, then cosine), and the run
lasts T·N_U steps, the number of upper-level steps of the BiSSL config it inherits. It starts
where BiSSL starts: the pretext backbone and head, and the warmed-up downstream head.

The downstream loss is the task's own upper loss (:class:`~bissl_dense.stage.DownstreamTask`)
with θ substituted for the task model's backbone through the task's correspondence, exactly how
BiSSL evaluates L_D(θ_L, φ_D); any registered task therefore works. BatchNorm: the exported
backbone's running statistics are those of θ's own modules, i.e. updated by the pretext batches
only (the downstream forward runs the task model's modules, whose buffers it updates).

Config: one that inherits the BiSSL config and states the differences
(``configs/classification/weighted_sum_simclr_resnet18_synthetic.py``)::

    train_cfg = dict(type="WeightedSumLoop", w=0.5)
    optim_wrapper = dict(constructor="SingleLevelOptimWrapperConstructor",
                         include_task_head=True)
    custom_hooks = [dict(type="ExportBackboneHook", name="weighted_sum")]
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

from mmengine.registry import LOOPS
from torch import Tensor

from bissl_dense.baselines.single_level import SingleLevelLoop, backbone_substitution
from bissl_dense.engine.bissl_loop import BiSSLModel
from bissl_dense.errors import ConfigError
from bissl_dense.stage import pretext_lower_loss

__all__ = ["DEFAULT_W", "WeightedSumLoop", "check_w", "weighted_sum_backward"]

#: Weight of the downstream loss. The paper's chosen value did not survive the text conversion
#: of App. B.9.4 (its sweep on DTD picked one w); 0.5 weighs both terms equally. Set
#: ``train_cfg.w`` or use the ``weighted_sum_<w>`` arm of ``bissl compare`` for others.
DEFAULT_W = 0.5


def check_w(w: float, where: str = "train_cfg.w") -> float:
    """``w`` as a float in [0, 1], or a :class:`ConfigError` naming ``where``."""
    try:
        value = float(w)
    except (TypeError, ValueError):
        raise ConfigError(f"{where} must be a number in [0, 1], got {w!r}") from None
    if not (math.isfinite(value) and 0.0 <= value <= 1.0):
        raise ConfigError(f"{where} must be in [0, 1] ((1-w)·L_P + w·L_D), got {w!r}")
    return value


def weighted_sum_backward(
    pretext_loss: Callable[[], Tensor], downstream_loss: Callable[[], Tensor], w: float
) -> dict[str, float]:
    """Accumulate (1−w)·∇L_P + w·∇L_D into ``.grad``; return the losses that were computed.

    Two backward passes, one per term and its own batch (paper App. B.9.4: gradients computed
    separately, scaled, summed before the step); the first graph is freed before the second
    forward, so the peak memory is that of one term. A term of weight zero is not computed.
    """
    losses: dict[str, float] = {}
    for key, weight, loss_fn in (
        ("pretext_loss", 1.0 - w, pretext_loss),
        ("downstream_loss", w, downstream_loss),
    ):
        if weight == 0.0:
            continue
        loss = loss_fn()
        (weight * loss).backward()
        losses[key] = float(loss.detach())
    return losses


@LOOPS.register_module()
class WeightedSumLoop(SingleLevelLoop):
    """T·N_U steps of (1−w)·L_P + w·L_D (module docstring); ``steps`` overrides the budget.

    Args:
        w: weight of the downstream loss, in [0, 1].
        **kwargs: those of :class:`~bissl_dense.baselines.single_level.SingleLevelLoop`.
    """

    name = "weighted_sum"

    def __init__(self, runner: Any, dataloader: Any, w: float = DEFAULT_W, **kwargs: Any) -> None:
        self.w = check_w(w)
        super().__init__(runner, dataloader, **kwargs)
        optim = runner.cfg.get("optim_wrapper", {})
        if not optim.get("include_task_head", False):
            raise ConfigError(
                "WeightedSumLoop trains the downstream head too: set optim_wrapper="
                "dict(constructor='SingleLevelOptimWrapperConstructor', include_task_head=True)"
            )

    def default_steps(self) -> int:
        return self.alternations * self.upper_steps  # T·N_U (App. B.9.4)

    def compute_gradients(
        self, model: BiSSLModel, pretext_batch: Any, downstream_batch: Any
    ) -> Mapping[str, float]:
        device = next(model.parameters()).device
        substitute = backbone_substitution(model)
        lower = pretext_lower_loss(model.lower, device)
        losses = weighted_sum_backward(
            lambda: lower(pretext_batch),
            lambda: model.task.upper_loss(downstream_batch, substitute()),
            self.w,
        )
        return {**{f"weighted_sum/{k}": v for k, v in losses.items()}, "weighted_sum/w": self.w}
