"""The implicit-Jacobian solve of BiSSL's upper level (SPEC §2, paper Eq. 7 and App. B.3).

With the proximal lower level  θ_L*(θ_U) = argmin L_P(θ_L) + (λ/2)||θ_L − θ_U||², the implicit
function theorem gives  dθ_L*/dθ_U = (I + H/λ)⁻¹  with H = ∇²_θ L_P(θ_L*). The matrix is symmetric,
so the vector-Jacobian product the upper level needs is the same solve, approximated by K
iterations of a Krylov solver (:mod:`bissl_dense.core.krylov`) on  A x = v,  A = I + H/(λ + δ),
δ a damping term, with Hessian-vector products (:mod:`bissl_dense.core.hvp`).

During an upper stage θ_L and the Hessian batch are fixed (SPEC §3), so H is the same matrix for
all N_U solves of the stage: :class:`ImplicitSolver` builds the products once per stage
(``begin_stage``) and reuses them in every ``solve``; :func:`implicit_jacobian_product` is the
one-shot form. Costs and measured residuals of every combination are printed by
``python -m bissl_dense.benchmarks.implicit`` (figures in the README).

A solve that breaks down (a non-finite product, a singular projected system) returns the solver's
best finite iterate, x = 0 at worst; ``ImplicitSolver.last_info`` says what happened, and
``BilevelStep`` logs it with the step number and the residual.

Under ``torch.distributed`` every product is averaged across ranks (one flattened all-reduce), so
each rank solves with the Hessian of the mean loss over all ranks' batches. The right-hand side
must already be identical on all ranks (average it first): K-step Krylov solvers are not linear in
their right-hand side.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Literal

import torch
from torch import Tensor, nn

from bissl_dense.core.hvp import HVP_MODES, FDScheme, HVPMode, stage_products
from bissl_dense.core.krylov import (
    CGMode,
    RecycledSubspace,
    ScaledProduct,
    ShiftedOperator,
    SolveInfo,
    Vectors,
    norm,
    solve_cg,
    solve_minres,
    solve_recycled,
    unaliased,
)
from bissl_dense.distributed import all_reduce_mean_

__all__ = ["SOLVERS", "ImplicitSolver", "SolverKind", "implicit_jacobian_product"]

SolverKind = Literal["cg", "minres", "recycled"]
SOLVERS: tuple[str, ...] = ("cg", "minres", "recycled")


def _dot64(a: Sequence[Tensor], b: Sequence[Tensor]) -> Tensor:
    return torch.stack(
        [torch.sum(x * y, dtype=torch.float64) for x, y in zip(a, b, strict=True)]
    ).sum()


class ImplicitSolver:
    """(I + H/(λ+δ))⁻¹ v for the N_U right-hand sides of one upper stage, amortised over it.

    Usage (one per ``BilevelStep``)::

        solver.begin_stage(lambda: lower_loss(hessian_batch), theta_l, lower_model.buffers())
        x = solver.solve(v)                # every upper step of the stage
        solver.end_stage()                 # after the last (frees the graph / cached gradient)

    A run resumed in the middle of a stage calls ``begin_stage`` again (with ``warm_start`` or
    ``"recycled"`` its first solves then start from less information than the interrupted run's;
    the results differ at the solver's tolerance, not in kind).

    Args:
        lam: the proximal weight λ of the lower level (SPEC §4: 0.001).
        damping: δ, added to λ for numerical stability (SPEC §4: 10).
        iters: K, the number of Hessian-vector products per solve (for ``"recycled"``: of the
            stage's first solve).
        cg: ``"global"`` or ``"layerwise"`` CG scalars (only ``solver="cg"`` has the latter).
        hvp: ``"exact"``, ``"finite_difference"`` or ``"recompute"`` (:mod:`~bissl_dense.core.hvp`).
        solver: ``"cg"``, ``"minres"`` or ``"recycled"`` (:mod:`~bissl_dense.core.krylov`).
        fd_scheme: ``"forward"`` (one gradient per product after one per stage) or ``"central"``
            (two per product).
        fd_step: fixed finite-difference step; by default scaled to the norms of θ and v.
        warm_start: combine each CG/MINRES solution with the stage's previous one x_prev.
            Plainly starting the iteration from x_prev lowered the residual on some problems
            and raised it up to 4x on others at equal K (tests/core/test_implicit.py), so the
            new solution is the least-squares best combination of the cold solve's x and
            x_prev: A x_prev is known from the previous solve's recurrences (no product), and
            the residual is never above the cold solve's.
        recycle_iters: products per solve after the stage's first, for ``"recycled"``.
        recycle_max: most pairs (u, Au) the ``"recycled"`` subspace keeps (2 vectors each).
    """

    def __init__(
        self,
        *,
        lam: float,
        damping: float = 10.0,
        iters: int = 5,
        cg: CGMode = "global",
        hvp: HVPMode = "exact",
        solver: SolverKind = "cg",
        fd_scheme: FDScheme = "forward",
        fd_step: float | None = None,
        warm_start: bool = False,
        recycle_iters: int = 1,
        recycle_max: int = 16,
    ) -> None:
        if cg not in ("layerwise", "global"):
            raise ValueError(f"cg must be 'layerwise' or 'global', got {cg!r}")
        if hvp not in HVP_MODES:
            raise ValueError(f"hvp must be one of {HVP_MODES}, got {hvp!r}")
        if solver not in SOLVERS:
            raise ValueError(f"solver must be one of {SOLVERS}, got {solver!r}")
        if solver != "cg" and cg != "global":
            raise ValueError(
                f"solver={solver!r} has no layer-wise variant; use cg='global' (the layer-wise "
                "scalars are the reference's CG heuristic)"
            )
        if fd_scheme not in ("central", "forward"):
            raise ValueError(f"fd_scheme must be 'central' or 'forward', got {fd_scheme!r}")
        if iters < 0 or recycle_iters < 0 or recycle_max < 1:
            raise ValueError(
                f"iters={iters}, recycle_iters={recycle_iters} must be >= 0 and "
                f"recycle_max={recycle_max} >= 1"
            )
        if lam + damping <= 0:
            raise ValueError(f"lam + damping must be > 0, got {lam + damping}")
        self.lam, self.damping, self.iters = lam, damping, iters
        self.cg, self.hvp, self.solver = cg, hvp, solver
        self.fd_scheme, self.fd_step = fd_scheme, fd_step
        self.warm_start = warm_start
        self.recycle_iters, self.recycle_max = recycle_iters, recycle_max
        self.products = 0  # Hessian-vector products since begin_stage (for measurements)
        self.last_unwarmed: Vectors | None = None  # the last solve before the warm combination
        self.last_info: SolveInfo | None = None  # what the last solve did (breakdowns)
        self._params: list[Tensor] | None = None
        self._reset_stage_state()

    def _reset_stage_state(self) -> None:
        self._hvp: ScaledProduct | None = None
        self._buffers: list[Tensor] = []
        self._saved_buffers: list[Tensor] = []
        self._previous: tuple[Vectors, Vectors] | None = None  # (x, A x) of the last solve
        self._space = RecycledSubspace(self.recycle_max)

    @property
    def active(self) -> bool:
        """Whether a stage has begun and not ended."""
        return self._hvp is not None

    def begin_stage(
        self,
        loss_fn: Callable[[], Tensor],
        params: Sequence[Tensor],
        buffers: Iterable[Tensor] = (),
        module: nn.Module | None = None,
    ) -> None:
        """Fix θ_L and the Hessian batch (``loss_fn`` evaluates L_P on it) until ``end_stage``.

        Runs the stage's one forward pass (exact, finite differences); ``params`` must not change
        until ``end_stage``. ``buffers`` are restored after every pass the solver makes.
        ``module``: the module ``loss_fn`` runs, holding ``params`` (``hvp="jvp"`` only).
        """
        self.end_stage()
        params = list(params)
        for i, p in enumerate(params):
            if not p.requires_grad:
                raise ValueError(f"params[{i}] (shape {tuple(p.shape)}) does not require grad")
        self._params = params
        self._buffers = list(buffers)
        self._saved_buffers = [b.detach().clone() for b in self._buffers]
        self.products = 0
        try:
            self._hvp = stage_products(
                loss_fn, params, self.hvp, self.fd_step, self.fd_scheme, module
            )
        finally:
            self._restore_buffers()

    def end_stage(self) -> None:
        """Free what the stage held (graph, base gradient, previous solution, subspace)."""
        self._reset_stage_state()
        self._params = None

    def _restore_buffers(self) -> None:
        # Through ``.data``: the exact mode's graph has saved the BatchNorm running statistics
        # (train-mode batch_norm takes them as inputs, without using their values for gradients),
        # and an in-place copy visible to autograd would bump their version and invalidate the
        # graph for the rest of the stage. The values restored are those the forward pass read.
        with torch.no_grad():
            for b, saved in zip(self._buffers, self._saved_buffers, strict=True):
                b.data.copy_(saved)

    def _checked(self, vectors: Sequence[Tensor]) -> Vectors:
        if self._hvp is None or self._params is None:
            raise RuntimeError("ImplicitSolver: call begin_stage(...) before solve(...)")
        vectors = [v.detach() for v in vectors]
        if len(vectors) != len(self._params):
            raise ValueError(f"got {len(self._params)} params but {len(vectors)} vectors")
        for i, (p, v) in enumerate(zip(self._params, vectors, strict=True)):
            if p.shape != v.shape:
                raise ValueError(
                    f"vectors[{i}] has shape {tuple(v.shape)}, params[{i}] {tuple(p.shape)}"
                )
        return vectors

    def _product(self, x: Sequence[Tensor]) -> tuple[Vectors, Tensor | float]:
        """(u, c) with H x = c·u, u averaged over the ranks (c is the same on every rank: it
        depends only on x, which the ranks share)."""
        assert self._hvp is not None
        u, c = self._hvp(x)
        u = unaliased(u, x)
        all_reduce_mean_(u)
        self.products += 1
        return u, c

    @property
    def _operator(self) -> ShiftedOperator:
        """A = I + H/(λ+δ) with this stage's products."""
        return ShiftedOperator(self._product, shift=1.0, scale=1.0 / (self.lam + self.damping))

    def _with_previous(self, vectors: Vectors, x: Vectors, ax: Vectors) -> tuple[Vectors, Vectors]:
        """Warm start: the best combination α x + β x_prev of this solve's solution and the
        stage's previous one, by least squares on ||v − α A x − β A x_prev|| (A x_prev is kept
        from the previous solve: no product). (α, β) = (1, 0) is among the candidates, so the
        residual is never above the cold solve's. Computed on the device (2 × 2 pseudo-inverse)."""
        if self._previous is None:
            return x, ax
        x_prev, ax_prev = self._previous
        # the 2 × 2 normal equations in float64: their entries are squared norms of the
        # right-hand side's scale, which float32 cannot hold beyond 1.8e19
        pairs = [(ax, ax), (ax, ax_prev), (ax_prev, ax_prev), (ax, vectors), (ax_prev, vectors)]
        aa, ab, bb, av, bv = (_dot64(a, b) for a, b in pairs)
        gram = torch.stack([torch.stack([aa, ab]), torch.stack([ab, bb])])
        alpha, beta = (torch.linalg.pinv(gram) @ torch.stack([av, bv])).to(x[0].dtype)
        return (
            [alpha * a + beta * b for a, b in zip(x, x_prev, strict=True)],
            [alpha * a + beta * b for a, b in zip(ax, ax_prev, strict=True)],
        )

    def solve(self, vectors: Sequence[Tensor]) -> list[Tensor]:
        """Approximate (I + H/(λ+δ))⁻¹ v with this stage's products; detached tensors."""
        vectors = self._checked(vectors)
        warm = self.warm_start and self.solver != "recycled"  # only the warm start needs A x
        try:
            if self.solver == "recycled":
                k = self.iters if len(self._space) == 0 else self.recycle_iters
                result = solve_recycled(self._operator, vectors, k, self._space)
            elif self.solver == "minres":
                result = solve_minres(self._operator, vectors, self.iters, with_image=warm)
            else:
                result = solve_cg(self._operator, vectors, self.iters, self.cg, with_image=warm)
        finally:
            self._restore_buffers()
        self.last_info = result.info
        x = [t.detach() for t in result.x]
        self.last_unwarmed = x  # this solve's own solution (measurements of the warm start)
        if warm:
            if result.ax is None:  # a breakdown lost A x: combine nothing with this solve
                self._previous = None
                return x
            x, ax = self._with_previous(vectors, x, [t.detach() for t in result.ax])
            self._previous = (x, ax)
        return x

    def relative_residual(self, x: Sequence[Tensor], vectors: Sequence[Tensor]) -> Tensor:
        """‖(I + H/(λ+δ))x − v‖ / ‖v‖ with this stage's products; costs one product."""
        vectors = self._checked(vectors)
        try:
            ax = self._operator.apply([t.detach() for t in x])
        finally:
            self._restore_buffers()
        self.products -= 1  # a measurement, not part of the solve
        residual = norm([a - v for a, v in zip(ax, vectors, strict=True)])
        den = norm(vectors)
        value = residual / den if den > 0 else 0.0
        return torch.tensor(value, dtype=vectors[0].dtype, device=vectors[0].device)


def implicit_jacobian_product(
    loss_fn: Callable[[], Tensor],
    params: Sequence[Tensor],
    vectors: Sequence[Tensor],
    lam: float,
    damping: float = 10.0,
    iters: int = 5,
    cg: CGMode = "global",
    hvp: HVPMode = "exact",
    buffers: Iterable[Tensor] = (),
    fd_step: float | None = None,
    fd_scheme: FDScheme = "forward",
    solver: SolverKind = "cg",
    module: nn.Module | None = None,
) -> list[Tensor]:
    """Approximate (I + H/(lam + damping))⁻¹ v by ``iters`` Krylov iterations (one-shot form).

    A stage of one solve of :class:`ImplicitSolver`; an upper stage with N_U solves should use the
    solver itself, which builds the graph / base gradient once.

    Args:
        loss_fn: evaluates the lower-level loss L_P at the current values of ``params``.
        params: the tensors H is taken with respect to (the lower backbone θ_L); they must
            require grad. Their values are unchanged on return (finite differences perturb them
            temporarily and restore them).
        vectors: one tensor per parameter, the right-hand side v (∇_θ L_D at θ_L for BiSSL).
        lam: the proximal weight λ of the lower level (SPEC §4: 0.001).
        damping: δ, added to λ for numerical stability (SPEC §4: 10).
        iters: K, the number of iterations = the number of Hessian-vector products.
        cg: ``"global"`` (textbook CG over all tensors, the default) or ``"layerwise"``
            (separate CG scalars per tensor, the reference's variant). Both cost the same K
            products; global CG leaves the smaller residual ||(I + H/(λ+δ))x − v|| in every
            measurement we made (tests/core/test_implicit.py, bissl_dense.benchmarks.implicit).
        hvp: ``"exact"``, ``"finite_difference"``, ``"recompute"`` or ``"jvp"``
            (:mod:`~bissl_dense.core.hvp`).
        buffers: tensors that ``loss_fn`` may change in place (BatchNorm running statistics,
            ``num_batches_tracked``); restored to their values at entry before returning.
        fd_step: fixed finite-difference step; by default scaled to the norms of θ and v.
        fd_scheme: ``"forward"`` (K + 1 gradients, error O(ε), the default) or ``"central"``
            (2K gradients, error O(ε²)).
        solver: ``"cg"`` (default), ``"minres"`` or ``"recycled"`` (module docstring).
        module: the module ``loss_fn`` runs, holding ``params`` (``hvp="jvp"`` only).

    Returns:
        One tensor per parameter (detached), the approximate solution x.
    """
    params = list(params)
    vectors = list(vectors)
    if len(params) != len(vectors):
        raise ValueError(f"got {len(params)} params but {len(vectors)} vectors")
    for i, (p, v) in enumerate(zip(params, vectors, strict=True)):
        if p.shape != v.shape:
            raise ValueError(
                f"vectors[{i}] has shape {tuple(v.shape)}, params[{i}] {tuple(p.shape)}"
            )
    implicit_solver = ImplicitSolver(
        lam=lam,
        damping=damping,
        iters=iters,
        cg=cg,
        hvp=hvp,
        solver=solver,
        fd_scheme=fd_scheme,
        fd_step=fd_step,
    )
    implicit_solver.begin_stage(loss_fn, params, buffers, module)
    try:
        return implicit_solver.solve(vectors)
    finally:
        implicit_solver.end_stage()
