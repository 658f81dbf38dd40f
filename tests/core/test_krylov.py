"""The Krylov solvers against dense solves, and their behaviour where float32 overflows, where
the operator is singular and where a product is not finite (issue 21: the solver must never hand a
non-finite vector to an optimiser)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

from bissl_dense.core import conjugate_gradient, minres
from bissl_dense.core.krylov import (
    RecycledSubspace,
    ShiftedOperator,
    norm,
    solve_cg,
    solve_minres,
    solve_recycled,
)


@pytest.fixture(autouse=True, scope="module")
def _float64():
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(torch.float32)


def _flat(tensors: list[Tensor]) -> Tensor:
    return torch.cat([t.reshape(-1) for t in tensors])


def _indefinite_system(n: int = 12, seed: int = 7) -> tuple[Tensor, Tensor]:
    """A symmetric matrix with eigenvalues of both signs (like I + H/(λ+δ) with H's negative
    curvature below −(λ+δ)), and a right-hand side."""
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=g))
    eigenvalues = torch.linspace(-3.0, 5.0, n)
    eigenvalues[n // 2] = 0.05  # one small eigenvalue: the hard direction
    return q @ torch.diag(eigenvalues) @ q.T, torch.randn(n, generator=g)


def _as_tensors(a: Tensor):
    """matvec on a list of two tensors (lengths 5 and n − 5) from a dense matrix."""

    def matvec(x: list[Tensor]) -> list[Tensor]:
        y = a @ torch.cat(x)
        return [y[:5], y[5:]]

    return matvec


def test_minres_equals_dense_solve_on_indefinite_system() -> None:
    a, b = _indefinite_system()
    assert torch.linalg.eigvalsh(a).min() < -1 and torch.linalg.eigvalsh(a).max() > 1
    matvec = _as_tensors(a)
    x = minres(matvec, [b[:5], b[5:]], iters=b.numel())
    torch.testing.assert_close(torch.cat(x), torch.linalg.solve(a, b), rtol=1e-8, atol=1e-9)


def test_minres_from_a_start_reaches_the_dense_solution() -> None:
    """With x0, MINRES solves for the correction: the residual relative to x0's never increases
    and the dense solution is reached after n iterations."""
    a, b = _indefinite_system()
    x0 = torch.randn(b.numel(), generator=torch.Generator().manual_seed(3))
    matvec = _as_tensors(a)
    start_residual = (a @ x0 - b).norm()
    residuals = []
    for k in range(b.numel() + 1):
        x = torch.cat(minres(matvec, [b[:5], b[5:]], iters=k, x0=[x0[:5], x0[5:]]))
        residuals.append(((a @ x - b).norm() / start_residual).item())
    assert residuals[0] == pytest.approx(1.0)
    assert all(later <= earlier + 1e-12 for earlier, later in zip(residuals, residuals[1:]))
    torch.testing.assert_close(x, torch.linalg.solve(a, b), rtol=1e-8, atol=1e-9)


def test_minres_residual_never_increases_and_cg_can_exceed_one() -> None:
    a, b = _indefinite_system()
    matvec = _as_tensors(a)
    rhs = [b[:5], b[5:]]
    residuals = {"minres": [], "cg": []}
    for k in range(b.numel() + 1):
        for name, solve in (("minres", minres), ("cg", conjugate_gradient)):
            x = torch.cat(solve(matvec, rhs, iters=k))
            residuals[name].append(((a @ x - b).norm() / b.norm()).item())
    m = residuals["minres"]
    assert m[0] == pytest.approx(1.0)
    assert all(later <= earlier + 1e-12 for earlier, later in zip(m, m[1:])), m
    assert m[-1] < 1e-8
    # the control: on this indefinite system CG's residual goes above ||b|| (worse than x = 0)
    assert max(residuals["cg"]) > 1.0
    # MINRES minimises the residual over the same Krylov space CG iterates in
    assert all(mk <= ck + 1e-12 for mk, ck in zip(m, residuals["cg"]))


@pytest.mark.parametrize("solver", ["minres", "cg"])
def test_solvers_image_of_the_solution_is_a_times_x_and_optional(solver: str) -> None:
    """The A x the solvers return from their recurrences (the warm start's input) equals the
    dense product, and leaving it out (with_image=False) changes nothing in x."""
    a, b = _indefinite_system()
    matvec = _as_tensors(a)
    rhs = [b[:5], b[5:]]
    for k in (1, 2, 3, 7):
        op = ShiftedOperator.from_matvec(matvec)
        solve = solve_minres if solver == "minres" else solve_cg
        x, ax = solve(op, rhs, k).x, solve(op, rhs, k).ax
        x_only, none = solve(op, rhs, k, with_image=False).x, solve(op, rhs, k, with_image=False).ax
        assert none is None and ax is not None
        assert torch.equal(torch.cat(x), torch.cat(x_only))
        torch.testing.assert_close(torch.cat(ax), a @ torch.cat(x), rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("solver", ["minres", "cg"])
def test_folded_operator_equals_the_assembled_matrix(solver: str) -> None:
    """A = σI + sH with H x returned as (u, c), H x = c·u (the finite-difference products' 1/ε):
    the solvers fold σ, s and c into their scalars and give the iterates of the same solver on
    the assembled matrix, x and A x, at every K."""
    a, b = _indefinite_system()
    sigma, s, c = 1.0, 0.1, 1e-3
    h = (a - sigma * torch.eye(b.numel())) / s  # A = σI + sH
    hmatvec = _as_tensors(h / c)  # u = H x / c

    def product(x: list[Tensor]) -> tuple[list[Tensor], Tensor]:
        return hmatvec(x), torch.tensor(c)

    folded = ShiftedOperator(product, shift=sigma, scale=s)
    assembled = ShiftedOperator.from_matvec(_as_tensors(a))
    rhs = [b[:5], b[5:]]
    solve = solve_minres if solver == "minres" else solve_cg
    for k in (1, 2, 3, 7, b.numel()):
        x, ax = solve(folded, rhs, k).x, solve(folded, rhs, k).ax
        x_ref, ax_ref = solve(assembled, rhs, k).x, solve(assembled, rhs, k).ax
        # the same arithmetic up to rounding (CG on this indefinite system amplifies it)
        torch.testing.assert_close(torch.cat(x), torch.cat(x_ref), rtol=1e-7, atol=1e-9)
        torch.testing.assert_close(torch.cat(ax), torch.cat(ax_ref), rtol=1e-7, atol=1e-9)


def test_minres_keeps_float32_finite_where_the_curvature_is_huge() -> None:
    """Products of norm ~1e15 (BatchNorm over a few samples gives such curvature): the Lanczos
    vectors stay normalised, so K iterations in float32 neither overflow (unnormalised, the
    third product would be ~1e45) nor lose the float64 solution."""
    a, b = _indefinite_system()
    huge = 1e15
    results = {}
    for dtype in (torch.float32, torch.float64):
        a_huge = (huge * a).to(dtype)
        matvec = _as_tensors(a_huge)
        rhs = [b[:5].to(dtype), b[5:].to(dtype)]
        results[dtype] = torch.cat(solve_minres(ShiftedOperator.from_matvec(matvec), rhs, 6).x)
    assert torch.isfinite(results[torch.float32]).all()
    torch.testing.assert_close(
        results[torch.float32].double(), results[torch.float64], rtol=1e-4, atol=1e-4 / huge
    )


def test_minres_exact_zero_residual_and_zero_rhs_are_stable() -> None:
    matvec = lambda v: [2 * t for t in v]  # noqa: E731
    x = minres(matvec, [torch.zeros(3), torch.ones(2)], iters=6)
    torch.testing.assert_close(_flat(x), _flat([torch.zeros(3), 0.5 * torch.ones(2)]))
    x = minres(matvec, [torch.zeros(3), torch.zeros(2)], iters=3)
    assert torch.equal(_flat(x), torch.zeros(5))


def test_norm_is_exact_where_float32s_sum_of_squares_overflows() -> None:
    v = [torch.full((10,), 1e20, dtype=torch.float32), torch.full((6,), -3e20, dtype=torch.float32)]
    assert math.isinf(float(torch.linalg.vector_norm(v[0])))  # the kernel's own result
    expected = math.sqrt(10 * 1e40 + 6 * 9e40)
    assert norm(v) == pytest.approx(expected, rel=1e-6)
    assert math.isnan(norm([torch.tensor([1.0, float("nan")])]))
    assert math.isinf(norm([torch.tensor([1.0, float("inf")])]))
    assert norm([]) == 0.0
    tiny = [torch.full((4,), 1e-30, dtype=torch.float32)]
    assert norm(tiny) == pytest.approx(2e-30, rel=1e-6)


def _solve(solver: str, op: ShiftedOperator, rhs: list[Tensor], k: int):
    if solver == "recycled":
        return solve_recycled(op, rhs, k, RecycledSubspace(16))
    if solver == "minres":
        return solve_minres(op, rhs, k)
    return solve_cg(op, rhs, k, solver.split("/")[1])


def _spd_system(n: int = 12, seed: int = 5) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=g))
    return q @ torch.diag(torch.logspace(-1, 1, n)) @ q.T, torch.randn(n, generator=g)


@pytest.mark.parametrize("solver", ["minres", "cg/global", "recycled"])
@pytest.mark.parametrize(
    ("curvature", "rhs_scale"),
    [(1e30, 1.0), (1e18, 1e3), (1e-30, 1.0), (1.0, 1e30), (1.0, 1e-30), (1e20, 1e15)],
)
def test_float32_solves_at_extreme_scales_equal_float64(
    solver: str, curvature: float, rhs_scale: float
) -> None:
    """A = I + H/10 with ||H|| from 1e-30 to 1e30 and ||v|| from 1e-30 to 1e30, float32 against
    the same solver in float64: finite, no breakdown, and the same solution. Before the solvers
    worked on unit vectors, a product of norm above 1.8e19 overflowed float32's sum of squares
    and the solve returned NaN (the BatchNorm case of issue 21: ||H|| = 9e17, ||v|| = 100)."""
    h, b = _spd_system() if solver == "cg/global" else _indefinite_h()
    h = h * curvature
    results = {}
    for dtype in (torch.float32, torch.float64):
        hd = h.to(dtype)

        def product(x: list[Tensor], hd: Tensor = hd) -> tuple[list[Tensor], float]:
            y = hd @ torch.cat(x)
            return [y[:5], y[5:]], 1.0

        op = ShiftedOperator(product, shift=1.0, scale=0.1)
        rhs = [(rhs_scale * b[:5]).to(dtype), (rhs_scale * b[5:]).to(dtype)]
        result = _solve(solver, op, rhs, 5)
        assert result.info.breakdown is None, result.info
        assert torch.isfinite(_flat(result.x)).all()
        results[dtype] = _flat(result.x).double()
    scale = results[torch.float64].norm()
    assert scale > 0
    assert (results[torch.float32] - results[torch.float64]).norm() / scale < 1e-3


def _indefinite_h(n: int = 12, seed: int = 9) -> tuple[Tensor, Tensor]:
    """H with eigenvalues from −60 to 50 (A = I + H/10 indefinite) and a right-hand side."""
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=g))
    return q @ torch.diag(torch.linspace(-60.0, 50.0, n)) @ q.T, torch.randn(n, generator=g)


@pytest.mark.parametrize("solver", ["minres", "cg/global", "cg/layerwise", "recycled"])
def test_exactly_singular_operator(solver: str) -> None:
    """A = diag(0, 1, ..., 6) and v with a component in A's null space (no exact solution): no
    solver divides by the zero it meets or returns rounding noise divided by it. MINRES and the
    recycled solver reach the least-squares residual (a least-squares solution); CG meets
    p·Ap = 0 when v lies in the null space and stops at x = 0, saying so."""
    diagonal = torch.arange(7.0)

    def product(x: list[Tensor]) -> tuple[list[Tensor], float]:
        y = diagonal * torch.cat(x)
        return [y[:3], y[3:]], 1.0

    op = ShiftedOperator(product)
    for rhs in ([torch.tensor([1.0, 0.0, 0.0]), torch.zeros(4)], [torch.ones(3), torch.ones(4)]):
        result = _solve(solver, op, rhs, 8)
        x = _flat(result.x)
        assert torch.isfinite(x).all(), (solver, x)
        residual = ((diagonal * x - _flat(rhs)).norm() / _flat(rhs).norm()).item()
        if solver == "cg/layerwise":  # the reference's: its guard turns 1/0 into 1/1e-12
            continue
        assert x.abs().max() < 10, (solver, x)
        assert residual <= 1.0 + 1e-12
        if solver in ("minres", "recycled"):
            least_squares_residual = (1.0 / _flat(rhs).norm()).item()  # the null-space part
            assert residual == pytest.approx(least_squares_residual, rel=1e-8)
            assert result.info.residual == pytest.approx(residual, rel=1e-6)
    only_null = solve_cg(op, [torch.tensor([1.0, 0.0, 0.0]), torch.zeros(4)], 3)
    assert only_null.info.breakdown is not None and "curvature" in only_null.info.breakdown
    assert torch.equal(_flat(only_null.x), torch.zeros(7))
    assert (
        "singular"
        in solve_minres(op, [torch.tensor([1.0, 0, 0]), torch.zeros(4)], 3).info.breakdown
    )


class _FailingOperator:
    """Products of a dense SPD matrix; the ``fail_at``-th returns NaN (or inf) in one entry."""

    def __init__(self, a: Tensor, fail_at: int, value: float) -> None:
        self.a, self.fail_at, self.value, self.calls = a, fail_at, value, 0

    def __call__(self, x: list[Tensor]) -> tuple[list[Tensor], float]:
        self.calls += 1
        y = self.a @ torch.cat(x)
        if self.calls == self.fail_at:
            y[3] = self.value
        return [y[:5], y[5:]], 1.0


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
@pytest.mark.parametrize("solver", ["minres", "cg/global", "recycled"])
def test_non_finite_product_returns_the_best_finite_iterate(solver: str, value: float) -> None:
    """The third product is not finite: the solve stops there, reports product 3 of 5 and the
    residual, and returns the iterate of two products (what K = 2 gives), never a NaN."""
    a, b = _spd_system()
    rhs = [b[:5], b[5:]]
    failing = _solve(solver, ShiftedOperator(_FailingOperator(a, 3, value)), rhs, 5)
    two = _solve(solver, ShiftedOperator(_FailingOperator(a, 0, value)), rhs, 2)
    info = failing.info
    assert info.iterations == 3 and info.requested == 5
    assert info.breakdown == "non-finite Hessian-vector product"
    assert torch.isfinite(_flat(failing.x)).all()
    expected = _flat(two.x)
    if solver.startswith("cg") and two.info.residual > 1.0:  # CG's iterate worse than x = 0
        expected = torch.zeros_like(expected)
    torch.testing.assert_close(_flat(failing.x), expected, rtol=1e-12, atol=1e-12)
    true_residual = ((a @ _flat(failing.x) - b).norm() / b.norm()).item()
    print(solver, two.info.residual)
    assert info.residual == pytest.approx(true_residual, rel=1e-9)
    assert "product 3 of 5" in info.describe() and "relative residual" in info.describe()


def test_non_finite_right_hand_side_gives_zero() -> None:
    a, _ = _spd_system()
    rhs = [torch.full((5,), float("nan")), torch.ones(7)]
    for solver in ("minres", "cg/global", "recycled"):
        result = _solve(solver, ShiftedOperator(_FailingOperator(a, 0, 0.0)), rhs, 3)
        assert result.info.breakdown == "non-finite right-hand side"
        assert torch.equal(_flat(result.x), torch.zeros(12))


def _reference_layerwise_cg(matvec, v: list[Tensor], iters: int) -> list[Tensor]:
    """The BiSSL reference's CG as its source computes it (written here from its published
    description: per-tensor scalars, 1e-12 added to both denominators, x = 0 and r = v at the
    start, NaN/inf of the result mapped by nan_to_num)."""
    x = [torch.zeros_like(t) for t in v]
    r = list(v)
    d = [t.clone() for t in r]
    rr_new = [torch.sum(t**2) for t in r]
    for _ in range(iters):
        ad = matvec(d)
        rr = list(rr_new)
        steps = [q / (torch.sum(di * adi) + 1e-12) for q, di, adi in zip(rr, d, ad)]
        x = [xi + s * di for xi, s, di in zip(x, steps, d)]
        r = [ri - s * adi for ri, s, adi in zip(r, steps, ad)]
        rr_new = [torch.sum(t**2) for t in r]
        d = [ri + (q1 / (q0 + 1e-12)) * di for ri, q1, q0, di in zip(r, rr_new, rr, d)]
    return [torch.nan_to_num(t) for t in x]


@pytest.mark.parametrize("rhs_scale", [1.0, 1e-4, 1e-7])
def test_layerwise_cg_is_the_references_solve_guards_included(rhs_scale: float) -> None:
    """cg='layerwise' is the reference's solver, including its 1e-12 guards: at small right-hand
    sides (squared norms of 1e-8 and 1e-14) its solution no longer scales with v, and ours
    follows it to 1e-12 (float64)."""
    a, b = _indefinite_system()

    def matvec(x: list[Tensor]) -> list[Tensor]:
        y = a @ torch.cat(x)
        return [y[:5], y[5:]]

    rhs = [rhs_scale * b[:5], rhs_scale * b[5:]]
    ours = conjugate_gradient(matvec, rhs, 5, mode="layerwise")
    reference = _reference_layerwise_cg(matvec, rhs, 5)
    torch.testing.assert_close(_flat(ours), _flat(reference), rtol=1e-10, atol=1e-14 * rhs_scale)
    if rhs_scale == 1e-7:  # the guards matter here: the solution is not 1e-7 times v's
        unit = _flat(conjugate_gradient(matvec, [b[:5], b[5:]], 5, mode="layerwise"))
        assert (_flat(ours) / rhs_scale - unit).norm() > 1e-3 * unit.norm()


def test_layerwise_cg_maps_non_finite_entries_as_the_reference_does() -> None:
    a, b = _spd_system()
    op = ShiftedOperator(_FailingOperator(a, 2, float("nan")))
    result = solve_cg(op, [b[:5], b[5:]], 4, "layerwise")
    assert torch.isfinite(_flat(result.x)).all()
    assert result.info.breakdown is not None and "nan_to_num" in result.info.breakdown
