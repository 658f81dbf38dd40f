"""A tiny bilevel problem shared by the core tests (float64, no batch-coupled layers).

Lower (pretext): backbone MLP + head, regress the first two input coordinates.
Upper (downstream): a copy of the backbone under other names (``encoder.*``) + a linear classifier.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call

from bissl_dense.core import (
    BatchStack,
    BilevelStep,
    BilevelTrainer,
    BiSSLConfig,
    iterate_batches,
    linear_warmup_cosine,
    prefix_correspondence,
)


def make_backbone() -> nn.Module:
    return nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 3), nn.Tanh())


class Pretext(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.backbone = make_backbone()
        self.head = nn.Linear(3, 2)

    def loss(self, x: Tensor) -> Tensor:
        return ((self.head(self.backbone(x)) - x[:, :2].sin()) ** 2).mean()


class Downstream(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.encoder = make_backbone()
        self.classifier = nn.Linear(3, 3)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.encoder(x))


def upper_loss_fn(model: Downstream):
    def upper_loss(batch: tuple[Tensor, Tensor], backbone: Mapping[str, Tensor] | None) -> Tensor:
        x, y = batch
        logits = model(x) if backbone is None else functional_call(model, dict(backbone), (x,))
        return nn.functional.cross_entropy(logits, y)

    return upper_loss


def make_data(n_lower: int = 48, n_upper: int = 24, seed: int = 0) -> tuple[Tensor, Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    lower_x = torch.randn(n_lower, 3, generator=g, dtype=torch.float64)
    upper_x = torch.randn(n_upper, 3, generator=g, dtype=torch.float64)
    upper_y = (upper_x[:, 0] > 0).long() + (upper_x[:, 1] > 0.5).long()
    return lower_x, upper_x, upper_y


def make_models(seed: int = 0) -> tuple[Pretext, Downstream]:
    torch.manual_seed(seed)
    lower, upper = Pretext().double(), Downstream().double()
    upper.encoder.load_state_dict(lower.backbone.state_dict())  # θ_L = θ_U at the start
    return lower, upper


def make_step(
    lower: Pretext,
    upper: Downstream,
    config: BiSSLConfig,
    lr: tuple[float, float] = (1.0, 1.0),
    momentum: float = 0.0,
    schedule: bool = False,
) -> BilevelStep:
    lower_opt = torch.optim.SGD(lower.parameters(), lr=lr[0], momentum=momentum)
    upper_opt = torch.optim.SGD(upper.parameters(), lr=lr[1], momentum=momentum)
    schedulers: dict[str, Any] = {}
    if schedule:
        total_lower = config.alternations * config.lower_steps
        total_upper = config.alternations * config.upper_steps
        schedulers = {
            "lower_scheduler": torch.optim.lr_scheduler.LambdaLR(
                lower_opt, linear_warmup_cosine(config.lower_steps, total_lower)
            ),
            "upper_scheduler": torch.optim.lr_scheduler.LambdaLR(
                upper_opt, linear_warmup_cosine(0, total_upper)
            ),
        }
    return BilevelStep(
        lower_model=lower,
        lower_backbone=lower.backbone,
        upper_model=upper,
        correspondence=prefix_correspondence(lower.backbone, "encoder."),
        lower_loss=lower.loss,
        upper_loss=upper_loss_fn(upper),
        lower_optimizer=lower_opt,
        upper_optimizer=upper_opt,
        config=config,
        **schedulers,
    )


def make_trainer(
    step: BilevelStep,
    data: tuple[Tensor, Tensor, Tensor],
    lower_batch: int,
    upper_batch: int,
    rank: int = 0,
    world_size: int = 1,
    seed: int | None = None,
) -> BilevelTrainer:
    lower_x, upper_x, upper_y = data
    cfg = step.config

    def lower_batches(start: int):
        stack = BatchStack(
            len(lower_x),
            lower_batch,
            cfg.lower_steps + 1,
            seed=1,
            rank=rank,
            world_size=world_size,
            start=start,
        )
        return iterate_batches(stack, lambda idx: lower_x[idx])

    def upper_batches(start: int):
        stack = BatchStack(
            len(upper_x),
            upper_batch,
            cfg.upper_steps,
            seed=2,
            rank=rank,
            world_size=world_size,
            start=start,
        )
        return iterate_batches(stack, lambda idx: (upper_x[idx], upper_y[idx]))

    return BilevelTrainer(step, lower_batches, upper_batches, seed=seed, rank=rank)
