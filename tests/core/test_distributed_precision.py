"""fp16 BiSSL under two processes (gloo, CPU): an overflow on one rank is seen by both.

The solve's Hessian-vector products are all-reduced, so the ranks must agree on whether to solve:
if one rank skipped the solve and the other ran it, the collectives would no longer pair up. The
right-hand side is averaged before the check, so an inf on one rank is an inf on every rank; both
skip the solve and the step and back off their scale, and the replicas stay identical. A second
upper step without overflow then updates both replicas identically.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from bissl_dense.core import BiSSLConfig
from tests._distributed import free_port
from tests.core.test_bilevel_precision import CONFIG, build, make_data


def _run(rank: int, world_size: int) -> dict[str, object]:
    lower_x, upper_x, upper_y = make_data()
    # rank 0's loss is scaled so that its fp16 backward overflows at the initial scale 2^16
    scales = iter([1e6 if rank == 0 else 1.0, 1.0])
    step, _, upper = build(BiSSLConfig(**CONFIG, autocast="float16"))
    inner = step.upper_loss
    current = {"scale": next(scales)}
    step.upper_loss = lambda batch, backbone: inner(batch, backbone) * current["scale"]
    solves: list[int] = []
    solve = step.implicit_solver.solve
    step.implicit_solver.solve = lambda v: solves.append(1) or solve(v)  # type: ignore[method-assign]
    half = slice(4 * rank, 4 * rank + 4)
    before = {n: p.detach().clone() for n, p in upper.named_parameters()}
    step.upper_step((upper_x[half], upper_y[half]), lower_x[half])
    skipped = all(torch.equal(p.detach(), before[n]) for n, p in upper.named_parameters())
    first = {"skipped": skipped, "solves": len(solves), "scale": step.upper_scaler.get_scale()}
    current["scale"] = next(scales)
    step.upper_step((upper_x[half], upper_y[half]), lower_x[half])
    return {
        "first": first,
        "solves": len(solves),
        "scale": step.upper_scaler.get_scale(),
        "params": {n: p.detach().clone() for n, p in upper.named_parameters()},
        "moved": max(
            (p.detach() - before[n]).abs().max().item() for n, p in upper.named_parameters()
        ),
    }


def _worker(rank: int, world_size: int, port: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        torch.save(_run(rank, world_size), Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_an_overflow_on_one_rank_skips_the_step_on_both(tmp_path: Path) -> None:
    mp.spawn(_worker, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True)
    results = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    for result in results:
        assert result["first"] == {"skipped": True, "solves": 0, "scale": 32768.0}
        assert result["solves"] == 1 and result["scale"] == 32768.0
        assert result["moved"] > 1e-4  # the second step did update
    for name, value in results[0]["params"].items():
        assert torch.equal(value, results[1]["params"][name]), name
