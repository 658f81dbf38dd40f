"""SimCLR's gathered negatives under torch.distributed: exact Hessian-vector products and a full
BiSSL upper update on 2 and 4 ranks (gloo) equal one process on the union batch.

The reference computes the union-batch loss in one process with the same per-rank forward
passes (BatchNorm sees each rank's own batch, as under DDP without SyncBatchNorm), then one
NT-Xent over all projections, so any difference comes from the collectives.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.func import functional_call

from bissl_dense.core import (
    BilevelTrainer,
    BiSSLConfig,
    implicit_jacobian_product,
    prefix_correspondence,
)
from bissl_dense.pretext.heads import ProjectionHead
from bissl_dense.pretext.losses import nt_xent_loss
from bissl_dense.pretext.methods import SimCLR
from bissl_dense.stage import DownstreamTask, build_bilevel_step
from tests._distributed import free_port

N = 8  # union batch (pairs)
CONFIG = dict(alternations=1, lower_steps=1, upper_steps=1, cg_iters=3, lam=0.01, damping=1.0)


def _tiny_backbone() -> nn.Module:
    # Small enough for 4 float64 processes on 2 cores, with the batch-coupled layers (BatchNorm)
    # and kinks (ReLU) of a real backbone.
    return nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(),
        nn.Conv2d(6, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(),
    )  # fmt: skip


class _Classifier(nn.Module):
    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


def make_step(config: BiSSLConfig):
    """SimCLR (the project's method, its loss with gathered negatives) on a tiny backbone."""
    pretext = SimCLR(backbone=dict(arch="resnet18"))
    pretext.backbone = _tiny_backbone()
    pretext.projector = ProjectionHead(8, hidden_dim=16, out_dim=8, num_layers=2)
    model = _Classifier(_tiny_backbone())
    model.backbone.load_state_dict(pretext.backbone.state_dict())

    def upper_loss(batch, backbone):
        x, y = batch
        logits = model(x) if backbone is None else functional_call(model, dict(backbone), (x,))
        return nn.functional.cross_entropy(logits, y)

    task = DownstreamTask(model, upper_loss, prefix_correspondence(pretext.backbone, "backbone."))
    step = build_bilevel_step(task, pretext, config, upper_lr=0.05, upper_weight_decay=1e-4)
    return pretext, task, step


def _data() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    v1, v2 = torch.randn(N, 3, 8, 8, generator=g), torch.randn(N, 3, 8, 8, generator=g)
    images, labels = torch.randn(N, 3, 8, 8, generator=g), torch.randint(0, 3, (N,), generator=g)
    return v1.double(), v2.double(), images.double(), labels


def _ij_product(world: int, rank: int) -> list[torch.Tensor]:
    torch.manual_seed(0)
    pretext, _, _ = make_step(config=BiSSLConfig(**CONFIG))
    pretext.double().train()
    v1, v2, *_ = _data()
    params = list(pretext.backbone.parameters())
    g = torch.Generator().manual_seed(9)
    rhs = [torch.randn(p.shape, generator=g, dtype=p.dtype) for p in params]
    n = N // world

    def loss() -> torch.Tensor:
        if world > 1 and not dist.is_initialized():  # one process, per-rank BatchNorm batches
            z1 = torch.cat([pretext.project(v1[r * n : (r + 1) * n]) for r in range(world)])
            z2 = torch.cat([pretext.project(v2[r * n : (r + 1) * n]) for r in range(world)])
            return nt_xent_loss(z1, z2, temperature=0.5)
        sl = slice(rank * n, (rank + 1) * n)
        return pretext.pretext_loss(v1[sl], v2[sl])

    return implicit_jacobian_product(loss, params, rhs, lam=0.01, damping=1.0, iters=3)


def _upper_update(world: int, rank: int) -> dict[str, torch.Tensor]:
    """One lower and one upper BiSSL update; in one process (no process group) the reference:
    both levels' losses on the union batch with per-rank BatchNorm batches."""
    torch.manual_seed(0)
    pretext, task, step = make_step(config=BiSSLConfig(**CONFIG))
    pretext.double()
    task.model.double()
    v1, v2, images, labels = _data()
    n = N // world
    reference = not dist.is_initialized()
    sl = slice(0, N) if reference else slice(rank * n, (rank + 1) * n)
    if reference and world > 1:
        chunks = [slice(r * n, (r + 1) * n) for r in range(world)]
        upper_loss = step.upper_loss

        def lower_loss(batch):
            a, b = batch["inputs"]
            z1 = torch.cat([pretext.project(a[c]) for c in chunks])
            z2 = torch.cat([pretext.project(b[c]) for c in chunks])
            return nt_xent_loss(z1, z2, temperature=0.5)

        def chunked_upper_loss(batch, backbone):
            x, y = batch
            return sum(upper_loss((x[c], y[c]), backbone) for c in chunks) / world

        step.lower_loss, step.upper_loss = lower_loss, chunked_upper_loss

    def source(make):
        def factory(start: int):
            while True:
                yield make()

        return factory

    trainer = BilevelTrainer(
        step,
        source(lambda: {"inputs": [v1[sl], v2[sl]]}),
        source(lambda: (images[sl], labels[sl])),
    )
    trainer.run()
    return {k: v.detach().clone() for k, v in task.model.named_parameters()}


def _worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    torch.set_default_dtype(torch.float64)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        result = {"ij": _ij_product(world, rank), "upper": _upper_update(world, rank)}
        torch.save(result, Path(out) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("world", [2, 4])
def test_simclr_hvp_and_upper_update_match_one_process(tmp_path: Path, world: int) -> None:
    mp.spawn(_worker, args=(world, free_port(), str(tmp_path)), nprocs=world, join=True)
    torch.set_default_dtype(torch.float64)
    try:
        reference_ij = _ij_product(world, 0)
        reference_upper = _upper_update(world, 0)
        torch.manual_seed(0)
        _, initial_task, _ = make_step(config=BiSSLConfig(**CONFIG))
    finally:
        torch.set_default_dtype(torch.float32)
    moved = max(
        (reference_upper[k] - v.double()).abs().max().item()
        for k, v in initial_task.model.named_parameters()
    )
    assert moved > 1e-6  # the update did move the upper model
    for rank in range(world):
        result = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        num = torch.linalg.vector_norm(
            torch.stack([(a - b).norm() for a, b in zip(result["ij"], reference_ij, strict=True)])
        )
        den = torch.linalg.vector_norm(torch.stack([b.norm() for b in reference_ij]))
        assert (num / den).item() < 1e-5, (rank, (num / den).item())
        for name, value in reference_upper.items():
            torch.testing.assert_close(
                result["upper"][name], value, rtol=1e-5, atol=1e-8, msg=f"rank {rank}: {name}"
            )
