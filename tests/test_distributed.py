"""torch.distributed helpers: single-process fallbacks and a 2-rank gloo run."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from bissl_dense.distributed import (
    all_reduce_mean_,
    gather_with_grad,
    get_rank,
    get_world_size,
    is_distributed,
    rank_offset,
)
from tests._distributed import free_port


def test_single_process_fallbacks() -> None:
    assert not is_distributed()
    assert get_rank() == 0
    assert get_world_size() == 1
    assert rank_offset(7) == 0
    x = torch.randn(3, 2, requires_grad=True)
    assert gather_with_grad(x) is x
    tensors = [torch.randn(2, 2), torch.arange(3)]
    before = [t.clone() for t in tensors]
    all_reduce_mean_(tensors)
    for t, b in zip(tensors, before, strict=True):
        assert torch.equal(t, b)
    with pytest.raises(ValueError, match="local_size"):
        rank_offset(-1)


def _rank_inputs(rank: int) -> dict[str, torch.Tensor]:
    """Deterministic, rank-specific inputs that the parent process can recompute."""
    generator = torch.Generator().manual_seed(100 + rank)
    return {
        "x": torch.randn(2, 3, generator=generator, dtype=torch.float64),
        "weight": torch.randn(4, 3, generator=generator, dtype=torch.float64),
        "a": torch.randn(2, 3, generator=generator),
        "b": torch.randn(5, generator=generator, dtype=torch.float64),
        "count": torch.tensor([3 + 4 * rank, 10 * rank], dtype=torch.int64),
    }


def _worker(rank: int, world_size: int, port: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size
    )
    try:
        inputs = _rank_inputs(rank)
        x = inputs["x"].clone().requires_grad_(True)
        gathered = gather_with_grad(x)
        # A rank-specific linear loss of the gathered tensor: its gradient w.r.t. gathered rows
        # is this rank's `weight`, and x's gradient must sum those over the ranks.
        (gathered * inputs["weight"]).sum().backward()
        tensors = [inputs["a"].clone(), inputs["b"].clone(), inputs["count"].clone()]
        all_reduce_mean_(tensors)
        # Same-dtype tensors share one flattened collective: count the all-reduce calls.
        calls = []
        original_all_reduce = dist.all_reduce

        def counting_all_reduce(*args, **kwargs):  # type: ignore[no-untyped-def]
            calls.append(1)
            return original_all_reduce(*args, **kwargs)

        dist.all_reduce = counting_all_reduce
        try:
            all_reduce_mean_([torch.ones(3) * rank, torch.ones(2, 2) * rank, torch.ones(1)])
        finally:
            dist.all_reduce = original_all_reduce
        result = {
            "is_distributed": torch.tensor(is_distributed()),
            "rank": torch.tensor(get_rank()),
            "world_size": torch.tensor(get_world_size()),
            "offset": torch.tensor(rank_offset(x.shape[0])),
            "gathered": gathered.detach(),
            "grad": x.grad,
            "a": tensors[0],
            "b": tensors[1],
            "count": tensors[2],
            "collectives_for_one_dtype": torch.tensor(len(calls)),
        }
        torch.save(result, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_two_rank_gather_and_mean(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Spawned workers unpickle `_worker` by module name: make this test module importable.
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parent))
    world_size = 2
    mp.spawn(_worker, args=(world_size, free_port(), str(tmp_path)), nprocs=world_size)
    results = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(world_size)]
    inputs = [_rank_inputs(r) for r in range(world_size)]

    union = torch.cat([i["x"] for i in inputs])
    weight_sum = sum(i["weight"] for i in inputs)
    for rank, result in enumerate(results):
        assert bool(result["is_distributed"])
        assert int(result["rank"]) == rank and int(result["world_size"]) == world_size
        assert int(result["offset"]) == 2 * rank
        torch.testing.assert_close(result["gathered"], union)
        torch.testing.assert_close(result["grad"], weight_sum[2 * rank : 2 * rank + 2])
        torch.testing.assert_close(result["a"], (inputs[0]["a"] + inputs[1]["a"]) / 2)
        torch.testing.assert_close(result["b"], (inputs[0]["b"] + inputs[1]["b"]) / 2)
        assert result["a"].dtype == torch.float32 and result["b"].dtype == torch.float64
        # Integer tensors get the floor of the mean: (3 + 7) // 2, (0 + 10) // 2.
        assert result["count"].tolist() == [5, 5]
        assert int(result["collectives_for_one_dtype"]) == 1
