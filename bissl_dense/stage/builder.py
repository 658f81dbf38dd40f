"""Optimisers, schedules and losses of the two BiSSL levels (SPEC §3, §4).

* Lower level: the pretext optimiser, LARS (lr 1.0, weight decay 1e-6, momentum 0.9, trust
  coefficient 0.001, biases and norm parameters excluded), over θ_L and the pretext head φ_P.
  Its learning rate warms up linearly over 10·N_L lower steps, then decays with a cosine to zero
  at T·N_L lower steps.
* Upper level: SGD with momentum 0.9 and the head warm-up's learning rate and weight decay,
  over θ_U and the downstream head φ_D, cosine over T·N_U upper steps.

Each schedule counts the steps of its own level only: a lower step never advances the upper
learning rate, and vice versa (:class:`~bissl_dense.core.BilevelStep` steps each scheduler
after an update of its level).

Channels-last (NHWC): a backbone built with ``channels_last=True`` (``model.pretext.backbone`` and,
for classification, ``model.task.backbone``) stores its convolution weights NHWC; the losses
built here then hand it NHWC images too (:func:`images_to_channels_last`), so the first
convolution does not convert its input. Mixed precision is the core's
(``BiSSLConfig.autocast``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from bissl_dense.core import BilevelStep, BiSSLConfig, linear_warmup_cosine
from bissl_dense.core.bilevel import UpperLoss, reference_schedule
from bissl_dense.pretext.lars import LARS
from bissl_dense.pretext.methods.base import PretextMethod, split_views
from bissl_dense.stage.data import move_to_device

__all__ = [
    "DownstreamTask",
    "LevelOptimizers",
    "build_bilevel_step",
    "build_level_optimizers",
    "images_to_channels_last",
    "is_channels_last",
    "level_schedulers",
    "pretext_lower_loss",
]

LOWER_WARMUP_FACTOR = 10  # the lower learning rate warms up over 10·N_L steps (SPEC §3)


@dataclass
class DownstreamTask:
    """What a downstream task gives the BiSSL stage, and nothing more.

    Attributes:
        model: the upper model, holding θ_U and the downstream head φ_D.
        upper_loss: ``(batch, backbone) -> L_D``; ``backbone`` is ``None`` (use the model's own
            θ_U) or ``{upper parameter name: tensor}`` to substitute (θ_L), typically through
            ``torch.func.functional_call``. The batch is whatever the task's loader yields.
        correspondence: lower backbone parameter name → upper model parameter name, one to one
            over every parameter of the pretext backbone (checked when the stage is built).
    """

    model: nn.Module
    upper_loss: UpperLoss
    correspondence: Mapping[str, str]


@dataclass
class LevelOptimizers:
    lower: torch.optim.Optimizer
    upper: torch.optim.Optimizer


def _trainable(module: nn.Module) -> list[nn.Parameter]:
    return [p for p in module.parameters() if p.requires_grad]


def build_level_optimizers(
    pretext: PretextMethod,
    task: DownstreamTask,
    *,
    upper_lr: float,
    upper_weight_decay: float,
    upper_momentum: float = 0.9,
    lower_lr: float = 1.0,
    lower_weight_decay: float = 1e-6,
    lower_momentum: float = 0.9,
    trust_coefficient: float = 0.001,
) -> LevelOptimizers:
    """LARS over the pretext model's trainable parameters, SGD over the downstream model's.

    BYOL's target network has ``requires_grad=False`` and is therefore left out of LARS; it
    follows the online network by EMA after every lower step instead.
    """
    lower = LARS(
        _trainable(pretext),
        lr=lower_lr,
        momentum=lower_momentum,
        weight_decay=lower_weight_decay,
        trust_coefficient=trust_coefficient,
        exclude_1d=True,
    )
    upper = torch.optim.SGD(
        _trainable(task.model),
        lr=upper_lr,
        momentum=upper_momentum,
        weight_decay=upper_weight_decay,
    )
    return LevelOptimizers(lower=lower, upper=upper)


def level_schedulers(
    optimizers: LevelOptimizers, config: BiSSLConfig
) -> tuple[torch.optim.lr_scheduler.LambdaLR, torch.optim.lr_scheduler.LambdaLR]:
    """The per-level learning-rate schedules of SPEC §3 (factors of each group's initial lr)."""
    lower_total = config.alternations * config.lower_steps
    upper_total = config.alternations * config.upper_steps
    if config.reference_parity:  # first update at the full rate, cosine to 0.001 of it
        lower_factor = reference_schedule(LOWER_WARMUP_FACTOR * config.lower_steps, lower_total)
        upper_factor = reference_schedule(0, upper_total)
    else:  # warm-up from the first update, cosine to 0 (SPEC §3)
        lower_warmup = min(LOWER_WARMUP_FACTOR * config.lower_steps, lower_total)
        lower_factor = linear_warmup_cosine(lower_warmup, lower_total)
        upper_factor = linear_warmup_cosine(0, upper_total)
    lower = torch.optim.lr_scheduler.LambdaLR(optimizers.lower, lower_factor)
    upper = torch.optim.lr_scheduler.LambdaLR(optimizers.upper, upper_factor)
    return lower, upper


def is_channels_last(params: Iterable[Tensor]) -> bool:
    """Whether any convolution weight is stored NHWC (``build_backbone(channels_last=True)``).

    Only a 4-D tensor with a spatial extent tells the formats apart: a 1×1 kernel is contiguous
    in both.
    """
    return any(
        p.dim() == 4
        and not p.is_contiguous()
        and p.is_contiguous(memory_format=torch.channels_last)
        for p in params
    )


def images_to_channels_last(batch: Any) -> Any:
    """``batch`` with every 4-D floating-point tensor (a batch of images) in NHWC memory format.

    Containers are rebuilt as :func:`~bissl_dense.stage.data.move_to_device` does; other tensors
    (labels, masks, uint8 images a data preprocessor normalises later) are left as they are.
    """
    if isinstance(batch, Tensor):
        if batch.dim() == 4 and batch.is_floating_point():
            return batch.contiguous(memory_format=torch.channels_last)
        return batch
    if isinstance(batch, Mapping):
        return {k: images_to_channels_last(v) for k, v in batch.items()}
    if isinstance(batch, tuple):
        return tuple(images_to_channels_last(v) for v in batch)
    if isinstance(batch, list):
        return [images_to_channels_last(v) for v in batch]
    return batch


def pretext_lower_loss(
    pretext: PretextMethod,
    device: torch.device | str | None = None,
    channels_last: bool | None = None,
) -> Callable[[Any], Tensor]:
    """L_P of a pretext batch (``{"inputs": [view1, view2]}`` or a pair of view tensors).

    ``channels_last``: hand the backbone NHWC views; ``None`` follows the backbone's weights.
    """
    if channels_last is None:
        channels_last = is_channels_last(pretext.backbone.parameters())

    def lower_loss(batch: Any) -> Tensor:
        inputs = batch["inputs"] if isinstance(batch, Mapping) else batch
        inputs = move_to_device(inputs, device)
        if channels_last:
            inputs = images_to_channels_last(inputs)
        view1, view2 = split_views(inputs)
        return pretext.pretext_loss(view1, view2)

    return lower_loss


def channels_last_upper_loss(task: DownstreamTask) -> UpperLoss:
    """The task's upper loss, fed NHWC images when its backbone (θ_U) is stored NHWC."""
    named = dict(task.model.named_parameters())
    if not is_channels_last(named[n] for n in task.correspondence.values() if n in named):
        return task.upper_loss
    inner = task.upper_loss

    def upper_loss(batch: Any, backbone: Mapping[str, Tensor] | None) -> Tensor:
        return inner(images_to_channels_last(batch), backbone)

    return upper_loss


def build_bilevel_step(
    task: DownstreamTask,
    pretext: PretextMethod,
    config: BiSSLConfig,
    *,
    optimizers: LevelOptimizers | None = None,
    device: torch.device | str | None = None,
    **optimizer_kwargs: Any,
) -> BilevelStep:
    """The BiSSL update machinery for ``task`` on top of ``pretext``.

    Args:
        task: the downstream model, its upper loss and the correspondence.
        pretext: the lower model (SimCLR, BYOL, ...); its ``backbone`` is θ_L.
        config: BiSSL's hyper-parameters (paper defaults).
        optimizers: the two levels' optimisers when a framework builds them itself (mmengine's
            optim wrappers); by default :func:`build_level_optimizers` with ``optimizer_kwargs``
            (``upper_lr`` and ``upper_weight_decay`` are then required).
        device: where lower batches are moved before the pretext loss.
    """
    if optimizers is None:
        optimizers = build_level_optimizers(pretext, task, **optimizer_kwargs)
    elif optimizer_kwargs:
        raise TypeError(
            f"build_bilevel_step: got optimizers and optimizer arguments {sorted(optimizer_kwargs)}"
        )
    lower_scheduler, upper_scheduler = level_schedulers(optimizers, config)
    total_lower = config.alternations * config.lower_steps

    def after_lower_update(k: int) -> None:
        # BYOL: the target follows the online network after every lower step (EMA).
        pretext.after_optimizer_step(k, total_lower)

    return BilevelStep(
        lower_model=pretext,
        lower_backbone=pretext.backbone,
        upper_model=task.model,
        correspondence=task.correspondence,
        lower_loss=pretext_lower_loss(pretext, device),
        upper_loss=channels_last_upper_loss(task),
        lower_optimizer=optimizers.lower,
        upper_optimizer=optimizers.upper,
        lower_scheduler=lower_scheduler,
        upper_scheduler=upper_scheduler,
        config=config,
        after_lower_update=after_lower_update,
    )
