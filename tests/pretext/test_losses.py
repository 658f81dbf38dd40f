"""NT-Xent and BYOL losses against explicit loops, hand computations and a 2-rank gloo run."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from bissl_dense.pretext.losses import BYOLLoss, NTXentLoss, byol_loss, nt_xent_loss
from tests._distributed import free_port

# --------------------------------------------------------------------------------------------
# NT-Xent
# --------------------------------------------------------------------------------------------


def _nt_xent_by_loops(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> float:
    """SimCLR's loss written pair by pair in plain Python floats."""
    n = len(z1)
    rows = [[float(v) for v in row] for row in torch.cat([z1, z2])]
    unit = []
    for row in rows:
        norm = math.sqrt(sum(v * v for v in row))
        unit.append([v / norm for v in row])

    def sim(i: int, k: int) -> float:
        return sum(a * b for a, b in zip(unit[i], unit[k], strict=True)) / temperature

    total = 0.0
    for i in range(2 * n):
        positive = (i + n) % (2 * n)
        denominator = sum(math.exp(sim(i, k)) for k in range(2 * n) if k != i)
        total += -math.log(math.exp(sim(i, positive)) / denominator)
    return total / (2 * n)


@pytest.mark.parametrize("temperature", [0.5, 0.1, 2.0])
def test_nt_xent_matches_explicit_pair_loop(temperature: float) -> None:
    z1 = torch.randn(6, 5, dtype=torch.float64)
    z2 = torch.randn(6, 5, dtype=torch.float64)
    expected = _nt_xent_by_loops(z1, z2, temperature)
    assert nt_xent_loss(z1, z2, temperature).item() == pytest.approx(expected, rel=1e-10)
    assert NTXentLoss(temperature)(z1, z2).item() == pytest.approx(expected, rel=1e-10)


def test_nt_xent_is_invariant_to_swapping_views_and_scaling() -> None:
    z1, z2 = torch.randn(8, 16, dtype=torch.float64), torch.randn(8, 16, dtype=torch.float64)
    loss = nt_xent_loss(z1, z2)
    torch.testing.assert_close(nt_xent_loss(z2, z1), loss)
    # Projections are L2-normalised, so positive rescaling of a row changes nothing.
    scale = torch.rand(8, 1, dtype=torch.float64) + 0.5
    torch.testing.assert_close(nt_xent_loss(z1 * scale, z2), loss)


def test_nt_xent_perfectly_aligned_views_have_low_loss() -> None:
    # Orthogonal images, identical views: the positive dominates as temperature -> 0.
    z = torch.eye(4, dtype=torch.float64)
    assert nt_xent_loss(z, z, temperature=0.05).item() < 1e-6
    # Identical images everywhere: every candidate is as similar as the positive.
    same = torch.ones(4, 3, dtype=torch.float64)
    assert nt_xent_loss(same, same).item() == pytest.approx(math.log(7), rel=1e-12)


def test_nt_xent_gradient_and_second_derivative_are_finite_and_correct() -> None:
    z1 = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    z2 = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: nt_xent_loss(a, b, 0.5), (z1, z2))
    # The bilevel core takes Hessian-vector products of the pretext loss (SPEC §2).
    assert torch.autograd.gradgradcheck(lambda a, b: nt_xent_loss(a, b, 0.5), (z1, z2))


def test_nt_xent_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="same shape"):
        nt_xent_loss(torch.randn(4, 3), torch.randn(5, 3))
    with pytest.raises(ValueError, match="2-D"):
        nt_xent_loss(torch.randn(4, 3, 1), torch.randn(4, 3, 1))
    with pytest.raises(ValueError, match="temperature"):
        nt_xent_loss(torch.randn(4, 3), torch.randn(4, 3), temperature=0.0)


def _nt_xent_rank(rank: int, world_size: int, port: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size
    )
    try:
        union = torch.load(Path(out_dir) / "union.pt", weights_only=True)
        n = union["z1"].shape[0] // world_size
        rows = slice(rank * n, (rank + 1) * n)
        z1 = union["z1"][rows].clone().requires_grad_(True)
        z2 = union["z2"][rows].clone().requires_grad_(True)
        loss = nt_xent_loss(z1, z2, temperature=0.5)
        loss.backward()
        result = {"loss": loss.detach(), "grad_z1": z1.grad, "grad_z2": z2.grad}
        torch.save(result, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_nt_xent_two_ranks_equal_single_process_on_union(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Spawned workers unpickle `_nt_xent_rank` by module name: make this test package importable.
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1]))
    world_size, n = 2, 3
    z1 = torch.randn(world_size * n, 5, dtype=torch.float64)
    z2 = torch.randn(world_size * n, 5, dtype=torch.float64)
    torch.save({"z1": z1, "z2": z2}, tmp_path / "union.pt")
    mp.spawn(_nt_xent_rank, args=(world_size, free_port(), str(tmp_path)), nprocs=world_size)

    ref_z1, ref_z2 = z1.clone().requires_grad_(True), z2.clone().requires_grad_(True)
    ref_loss = nt_xent_loss(ref_z1, ref_z2, temperature=0.5, gather_distributed=False)
    ref_loss.backward()
    assert ref_loss.item() == pytest.approx(_nt_xent_by_loops(z1, z2, 0.5), rel=1e-10)

    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(world_size)]
    # DDP averages the rank losses (and gradients): the mean must be the union-batch loss.
    mean_loss = sum(r["loss"] for r in ranks) / world_size
    assert mean_loss.item() == pytest.approx(ref_loss.item(), rel=1e-12)
    # Each rank alone sees only its anchors, so its loss differs from the union loss.
    assert all(abs(r["loss"].item() - ref_loss.item()) > 1e-6 for r in ranks)
    for rank, result in enumerate(ranks):
        rows = slice(rank * n, (rank + 1) * n)
        # Gradients of every rank's loss reach this rank's rows; after DDP divides by the world
        # size, they equal the single-process gradient, so each rank holds world_size times it.
        torch.testing.assert_close(result["grad_z1"], world_size * ref_z1.grad[rows])
        torch.testing.assert_close(result["grad_z2"], world_size * ref_z2.grad[rows])


# --------------------------------------------------------------------------------------------
# BYOL
# --------------------------------------------------------------------------------------------


def test_byol_loss_matches_hand_computation() -> None:
    prediction = torch.tensor([[1.0, 0.0], [0.0, 2.0], [3.0, 4.0]], dtype=torch.float64)
    target = torch.tensor([[1.0, 1.0], [0.0, -3.0], [6.0, 8.0]], dtype=torch.float64)
    # cosines: 1/sqrt(2), -1, 1  ->  2 - 2 cos: 2 - sqrt(2), 4, 0
    expected = (2 - math.sqrt(2) + 4 + 0) / 3
    assert byol_loss(prediction, target).item() == pytest.approx(expected, rel=1e-12)
    assert BYOLLoss()(prediction, target).item() == pytest.approx(expected, rel=1e-12)
    symmetric = BYOLLoss(symmetric=True)(prediction, target, target, prediction)
    assert symmetric.item() == pytest.approx(2 * expected, rel=1e-12)


def test_byol_loss_gradient_reaches_prediction_only() -> None:
    prediction = torch.tensor([[3.0, 4.0]], dtype=torch.float64, requires_grad=True)
    target = torch.tensor([[1.0, 0.0]], dtype=torch.float64, requires_grad=True)
    byol_loss(prediction, target).backward()
    assert target.grad is None
    # d/dp [2 - 2 p.t / (|p||t|)] = -2 (t/|t| - cos * p/|p|) / |p|, with |p| = 5, cos = 3/5.
    p_hat = torch.tensor([0.6, 0.8], dtype=torch.float64)
    t_hat = torch.tensor([1.0, 0.0], dtype=torch.float64)
    expected = -2 * (t_hat - 0.6 * p_hat) / 5
    torch.testing.assert_close(prediction.grad[0], expected)


def test_byol_loss_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="same shape"):
        byol_loss(torch.randn(3, 4), torch.randn(3, 5))
    with pytest.raises(ValueError, match="four tensors"):
        BYOLLoss(symmetric=True)(torch.randn(3, 4), torch.randn(3, 4))
