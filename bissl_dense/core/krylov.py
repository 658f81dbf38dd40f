"""Krylov solvers for the symmetric systems of BiSSL's implicit gradient (SPEC §2, paper App. B.3).

The upper level needs x ≈ A⁻¹ v with A = I + H/(λ + δ) symmetric (possibly indefinite: H is the
Hessian of a non-convex pretext loss) and reachable only through products. A "vector" here is a
list of tensors, one per parameter.

* :func:`solve_cg` — conjugate gradient, ``mode="global"`` (textbook: one pair of scalars over
  all tensors) or ``mode="layerwise"`` (separate scalars per tensor, the BiSSL reference's
  variant, reproduced with its guards: see :func:`solve_cg`).
* :func:`solve_minres` — MINRES (Paige and Saunders, 1975): minimal residual over the Krylov
  space, for indefinite systems; its residual never increases, so it is never worse than x = 0.
* :func:`solve_recycled` — minimal residual over a subspace kept across the solves of one stage
  (:class:`RecycledSubspace`), for a sequence of right-hand sides with the same A.

Scale safety (issue 21). BatchNorm over a few samples makes ||H|| enormous: a ResNet-18 on 4
images of 16 px has ||H|| ≈ 9e17, so a product of an unnormalised vector of norm 10 has a squared
norm (8e37 · 100) beyond float32's 3.4e38, and the recurrences became inf − inf = NaN. Whether
that happened depended on the CPU's convolution kernels (a BatchNorm channel whose variance is 0
or 1e-12). The solvers here therefore

* apply A only to vectors of norm 1 (MINRES's Lanczos vectors, CG on v/||v||, GCR directions),
  so every product has a norm of at most ||A||;
* compute norms that overflow float32's sum of squares by rescaling (:func:`norm`);
* keep their scalar recurrences in Python floats (double precision; one host synchronisation per
  iteration, against a Hessian-vector product that costs a forward and a double backward);
* stop at a breakdown — a non-finite product or scalar, an exactly singular projected system —
  and return the best finite iterate (x = 0 at worst), with :class:`SolveInfo` saying where and
  why, so that a caller can log it. A non-finite vector never leaves a solver.

The operator is :class:`ShiftedOperator`: A = shift·I + scale·H with H given by a product that may
return H x = c·u with a scalar factor c (finite differences' 1/ε). The solvers fold shift, scale
and c into their scalars instead of spending passes over model-sized vectors on them.

Distributed: the solvers are deterministic functions of the products and the right-hand side;
every rank computes the same scalars from the same (all-reduced) vectors, so the ranks' solutions
are bit-identical. Inner products are ``sum(x * y)``: ``torch.dot``'s CPU kernel rounds by memory
alignment, which differs between ranks.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

__all__ = [
    "CGMode",
    "KrylovResult",
    "RecycledSubspace",
    "ShiftedOperator",
    "SolveInfo",
    "conjugate_gradient",
    "dot",
    "minres",
    "norm",
    "solve_cg",
    "solve_minres",
    "solve_recycled",
]

CGMode = Literal["layerwise", "global"]
Vectors = list[Tensor]
MatVec = Callable[[Sequence[Tensor]], list[Tensor]]
# v ↦ (u, c) with H v = c·u: a product whose scalar factor is left to the solvers
ScaledProduct = Callable[[Sequence[Tensor]], tuple[Vectors, Tensor | float]]

# The BiSSL reference's guard added to the denominators of its layer-wise CG (ij_solvers.py).
REFERENCE_CG_GUARD = 1e-12


# ---------------------------------------------------------------------------------------------
# vector helpers


def _inner(x: Tensor, y: Tensor) -> Tensor:
    """<x, y> with the same bits wherever x and y lie in memory (see the module docstring)."""
    return torch.sum(x * y)


def dot(a: Sequence[Tensor], b: Sequence[Tensor]) -> Tensor:
    """<a, b> over all tensors (a 0-d tensor on the vectors' device)."""
    return torch.stack([_inner(x, y) for x, y in zip(a, b, strict=True)]).sum()


def _dot_into(a: Sequence[Tensor], b: Sequence[Tensor], scratch: Sequence[Tensor]) -> Tensor:
    """<a, b> as :func:`dot` computes it (the same bits), the elementwise products written into
    ``scratch`` instead of a new model-sized temporary."""
    sums = [torch.mul(x, y, out=s).sum() for x, y, s in zip(a, b, scratch, strict=True)]
    return torch.stack(sums).sum()


def _fast_norm(a: Sequence[Tensor]) -> Tensor:
    """||a||₂ by the norm kernel; inf where the float32 sum of squares overflows."""
    return torch.linalg.vector_norm(torch.stack(list(torch._foreach_norm(list(a)))))


def _measurable(value: float, dtype: torch.dtype) -> bool:
    """Whether a norm computed as the square root of a sum of squares in ``dtype`` is accurate:
    finite, and not so small that the squares fell into the subnormal range (float32: between
    1e-12 and 1.8e19)."""
    info = torch.finfo(dtype)
    return math.sqrt(info.tiny) / info.eps <= value < math.sqrt(info.max)


def norm(a: Sequence[Tensor]) -> float:
    """||a||₂ as a Python float, accurate where the sum of squares overflows or underflows the
    vectors' dtype (float32: norms above 1.8e19 or below 1e-12): the vector is then measured
    scaled by its largest entry. Non-finite entries give inf or nan. One host synchronisation."""
    if not a:
        return 0.0
    value = float(_fast_norm(a))
    if math.isnan(value) or _measurable(value, a[0].dtype):
        return value
    largest = float(torch.stack(list(torch._foreach_norm(list(a), math.inf))).max())
    if largest == 0.0 or not math.isfinite(largest):
        return largest
    scaled = [torch.linalg.vector_norm(t / largest) for t in a]
    return largest * float(torch.linalg.vector_norm(torch.stack(scaled)))


def _axpy_(y: Vectors, alpha: Tensor | Sequence[Tensor] | float, x: Sequence[Tensor]) -> Vectors:
    """y += alpha · x in place and return y; ``alpha`` a number, a 0-d tensor or one 0-d tensor
    per tensor (layer-wise CG). In place, with foreach kernels: a new vector is an allocation the
    size of the model (fresh memory on the CPU: page faults cost ~6x the arithmetic, measured on
    ResNet-18)."""
    if not y:
        return y
    if isinstance(alpha, int | float):
        torch._foreach_add_(y, list(x), alpha=alpha)
    else:
        alphas = [alpha] * len(y) if isinstance(alpha, Tensor) else list(alpha)
        torch._foreach_addcmul_(y, list(x), alphas)
    return y


def _axpy(y: Sequence[Tensor], alpha: Tensor | float, x: Sequence[Tensor]) -> Vectors:
    """y + alpha · x (a new vector)."""
    return _axpy_([t.clone() for t in y], alpha, x)


def _scale_(y: Vectors, alpha: Tensor | Sequence[Tensor] | float) -> Vectors:
    """y *= alpha in place and return y (``alpha`` as in :func:`_axpy_`)."""
    if y:
        torch._foreach_mul_(y, alpha if not isinstance(alpha, Sequence) else list(alpha))
    return y


def _zeros(like: Sequence[Tensor]) -> Vectors:
    return [torch.zeros_like(t) for t in like]


def _resolution(a: Sequence[Tensor]) -> float:
    """10ε of the vectors' dtype: a curvature or Lanczos coefficient below this times ||A|| is
    rounding noise (SciPy's minres stops where its condition estimate exceeds 0.1/ε)."""
    return 10 * torch.finfo(a[0].dtype).eps if a else 0.0


def _all_finite(a: Sequence[Tensor]) -> bool:
    return math.isfinite(norm(a)) if a else True


# ---------------------------------------------------------------------------------------------
# the operator


class ShiftedOperator:
    """A = shift·I + scale·H, H given by ``product(x) -> (u, c)`` with H x = c·u.

    ``u`` is a new vector the solvers may overwrite; ``c`` a positive number or 0-d tensor (1 for
    exact products, 1/ε for finite differences).
    """

    def __init__(self, product: ScaledProduct, shift: float = 0.0, scale: float = 1.0) -> None:
        if not scale > 0:
            raise ValueError(f"the operator's scale must be > 0, got {scale}")
        self.product, self.shift, self.scale = product, float(shift), float(scale)

    @classmethod
    def from_matvec(cls, matvec: MatVec) -> ShiftedOperator:
        """A given as x ↦ A x (shift 0, scale 1); an output aliasing its input is copied."""

        def product(x: Sequence[Tensor]) -> tuple[Vectors, float]:
            return unaliased(matvec(x), x), 1.0

        return cls(product)

    def scaled_product(self, x: Sequence[Tensor]) -> tuple[Vectors, float]:
        """(u, g) with scale·H x = g·u (one product; g a Python float, one host sync when the
        product's factor is a tensor)."""
        u, c = self.product(x)
        return u, self.scale * float(c)

    def apply(self, x: Sequence[Tensor]) -> Vectors:
        """A x (a new vector)."""
        u, g = self.scaled_product(x)
        if g != 1.0:
            _scale_(u, g)
        if self.shift != 0.0:
            _axpy_(u, self.shift, x)
        return u


def unaliased(hx: Sequence[Tensor], x: Sequence[Tensor]) -> Vectors:
    """``hx`` with every tensor that shares memory with one of ``x`` copied (an autograd output
    may be its grad_output itself on a trivial graph; the solvers overwrite products in place)."""
    ids = {xi.data_ptr() for xi in x}
    return [h.clone() if h.data_ptr() in ids else h for h in hx]


# ---------------------------------------------------------------------------------------------
# results


@dataclass
class SolveInfo:
    """What a solve did: products spent, and why it stopped early if it did.

    ``breakdown`` is ``None`` for a normal run; otherwise it names the non-finite or singular
    quantity met at product ``iterations`` (1-based), and ``x`` is the best finite iterate
    before it. ``residual`` is the relative residual ||A x − v|| / ||v|| of the returned x where
    the solver knows it from its recurrences (MINRES, CG, recycled), else ``None``.
    ``converged`` means the Krylov space became invariant: x is exact up to rounding.
    """

    solver: str
    requested: int
    iterations: int = 0
    breakdown: str | None = None
    converged: bool = False
    residual: float | None = None

    def describe(self) -> str:
        what = f"{self.solver} stopped at product {self.iterations} of {self.requested}"
        residual = "unknown" if self.residual is None else f"{self.residual:.3g}"
        return (
            f"{what}: {self.breakdown}; kept the best finite iterate (relative residual {residual})"
        )


@dataclass
class KrylovResult:
    """The solution, its image A x when asked for (from the recurrences: no product), and
    :class:`SolveInfo`."""

    x: Vectors
    ax: Vectors | None
    info: SolveInfo


def _initial_residual(rhs: Sequence[Tensor], ax0: Sequence[Tensor] | None) -> Vectors:
    """b = rhs − A x0 (a new vector; the caller's rhs is never written)."""
    return [t.clone() for t in rhs] if ax0 is None else _axpy(rhs, -1.0, ax0)


def _finish(
    info: SolveInfo,
    correction: Vectors | None,
    residual: Vectors | None,
    rhs: Sequence[Tensor],
    x0: Sequence[Tensor] | None,
    ax0: Sequence[Tensor] | None,
    with_image: bool,
) -> KrylovResult:
    """x = x0 + correction and, when asked, A x = rhs − r. A non-finite x (which the solvers'
    checks should have prevented) is replaced by x0 (or 0): nothing non-finite leaves a solver."""
    if correction is not None and not _all_finite(correction):
        info.breakdown = info.breakdown or "non-finite solution"
        info.residual, correction, residual = None, None, None
    if correction is None:  # no step: x = x0, A x = A x0
        x = _zeros(rhs) if x0 is None else [t.clone() for t in x0]
        ax = (_zeros(rhs) if ax0 is None else [t.clone() for t in ax0]) if with_image else None
        return KrylovResult(x, ax, info)
    x = correction if x0 is None else _axpy_(correction, 1.0, x0)
    ax = _axpy(rhs, -1.0, residual) if with_image and residual is not None else None
    return KrylovResult(x, ax, info)


def _relative(residual_norm: float, rhs: Sequence[Tensor], b_norm: float, has_x0: bool) -> float:
    """||rhs − A x|| / ||rhs||, from the norm of the residual the solver tracks."""
    rhs_norm = norm(rhs) if has_x0 else b_norm
    return residual_norm / rhs_norm if rhs_norm > 0 else 0.0


# ---------------------------------------------------------------------------------------------
# conjugate gradient


def solve_cg(
    op: ShiftedOperator,
    rhs: Sequence[Tensor],
    iters: int,
    mode: CGMode = "global",
    x0: Sequence[Tensor] | None = None,
    ax0: Sequence[Tensor] | None = None,
    with_image: bool = True,
) -> KrylovResult:
    """K iterations of conjugate gradient on A x = rhs from ``x0`` (``ax0`` = A x0 given: no
    product is spent on the start).

    ``mode="global"``: the textbook method, run on b/||b|| (b = rhs − A x0) and scaled back: its
    iterates are homogeneous in b, and the products then have a norm of at most ||A||. A
    non-finite product or a zero curvature p·Ap stops it; it then returns the last iterate, or
    x0 where that iterate's residual is above ||b|| (worse than no step). A curvature at
    rounding level (|p·Ap| ≤ 10ε ||A|| ||p||²) counts as zero. CG assumes A positive
    definite; with the paper's λ + δ = 10, A is indefinite as soon as H has an eigenvalue below
    −10 (real networks do), and K-step CG can end worse than x = 0 (:func:`solve_minres` cannot).

    ``mode="layerwise"``: the BiSSL reference's variant as its ``cg_solver`` computes it
    (``source/bissl/ij_solvers.py``): separate α and β per tensor, each denominator plus 1e-12,
    r = v at the start (K products for K iterations) and ``nan_to_num`` of the result. The
    guards make its solution depend on the scale of v once a tensor's squared norms come near
    1e-12; that is the reference's behaviour and is kept so that this mode reproduces it. It is
    exact when A has no coupling between tensors and a heuristic otherwise.
    """
    if mode == "layerwise":
        return _layerwise_cg(op, rhs, iters, x0, ax0, with_image)
    if mode != "global":
        raise ValueError(f"cg must be 'layerwise' or 'global', got {mode!r}")
    info = SolveInfo("cg", iters)
    r = _initial_residual(rhs, ax0)
    b_norm = norm(r)
    if not math.isfinite(b_norm):
        info.breakdown = "non-finite right-hand side"
        return _finish(info, None, None, rhs, x0, ax0, with_image)
    if b_norm == 0.0 or iters == 0:
        info.converged = b_norm == 0.0
        info.residual = _relative(b_norm, rhs, b_norm, x0 is not None) if b_norm else 0.0
        return _finish(info, None, None, rhs, x0, ax0, with_image)
    _scale_(r, 1.0 / b_norm)  # CG for b/||b||: r, d of unit scale
    d = [t.clone() for t in r]
    x = _zeros(rhs)
    rr = 1.0
    resolution, a_norm = _resolution(r), 0.0
    for k in range(1, iters + 1):
        ad = op.apply(d)
        measured = torch.stack([dot(d, ad), _fast_norm(d), _fast_norm(ad)]).tolist()  # one sync
        curvature, d_norm, ad_norm = measured
        info.iterations = k
        if math.isfinite(curvature):  # norms beyond the sum of squares' range, rescaled
            d_norm = d_norm if _measurable(d_norm, d[0].dtype) else norm(d)
            ad_norm = ad_norm if _measurable(ad_norm, ad[0].dtype) else norm(ad)
        if not all(math.isfinite(m) for m in (curvature, d_norm, ad_norm)):
            info.breakdown = "non-finite Hessian-vector product"
            break
        a_norm = max(a_norm, ad_norm / d_norm)  # a lower bound of ||A||
        if abs(curvature) <= resolution * a_norm * d_norm**2:
            # p·Ap at rounding level: the step rr/p·Ap would be noise divided by ~0
            info.breakdown = "zero curvature p·Ap (singular operator)"
            break
        alpha = rr / curvature
        _axpy_(x, alpha, d)
        _axpy_(r, -alpha, ad)
        rr_new = norm(r) ** 2
        if not math.isfinite(rr_new):
            _axpy_(x, -alpha, d)  # back to the last finite iterate (r is lost: no image)
            info.breakdown = "non-finite residual"
            break
        if rr_new == 0.0:
            rr, info.converged = 0.0, True
            break
        _axpy_(_scale_(d, rr_new / rr), 1.0, r)  # d = r + β d
        rr = rr_new
    if info.breakdown is not None and rr > 1.0:  # the last finite iterate is worse than x0
        info.residual = _relative(b_norm, rhs, b_norm, x0 is not None)
        return _finish(info, None, None, rhs, x0, ax0, with_image)
    info.residual = _relative(math.sqrt(rr) * b_norm, rhs, b_norm, x0 is not None)
    residual = None if info.breakdown == "non-finite residual" else _scale_(r, b_norm)
    return _finish(info, _scale_(x, b_norm), residual, rhs, x0, ax0, with_image)


def _layerwise_cg(
    op: ShiftedOperator,
    rhs: Sequence[Tensor],
    iters: int,
    x0: Sequence[Tensor] | None,
    ax0: Sequence[Tensor] | None,
    with_image: bool,
) -> KrylovResult:
    """The reference's layer-wise CG (see :func:`solve_cg`): tensor scalars, no host sync."""
    info = SolveInfo("cg/layerwise", iters, iterations=iters)
    x = _zeros(rhs) if x0 is None else [t.clone() for t in x0]
    r = _initial_residual(rhs, ax0)
    d = [t.clone() for t in r]
    rr = [torch.sum(t * t) for t in r]
    for _ in range(iters):
        ad = op.apply(d)
        alpha = [
            a / (_inner(di, adi) + REFERENCE_CG_GUARD) for a, di, adi in zip(rr, d, ad, strict=True)
        ]
        _axpy_(x, alpha, d)
        _axpy_(r, [-a for a in alpha], ad)
        rr_new = [torch.sum(t * t) for t in r]
        beta = [a / (b + REFERENCE_CG_GUARD) for a, b in zip(rr_new, rr, strict=True)]
        _axpy_(_scale_(d, beta), 1.0, r)  # d = r + β d
        rr = rr_new
    finite = _all_finite(x)
    if not finite:
        info.breakdown = "non-finite entries, set by nan_to_num as the reference does"
        x = [torch.nan_to_num(t) for t in x]
    return KrylovResult(x, _axpy(rhs, -1.0, r) if with_image and finite else None, info)


def conjugate_gradient(
    matvec: MatVec,
    rhs: Sequence[Tensor],
    iters: int,
    mode: CGMode = "global",
    x0: Sequence[Tensor] | None = None,
) -> list[Tensor]:
    """K iterations of CG for ``matvec(x) = rhs`` from ``x0`` (default 0; a start costs one
    product for its residual). See :func:`solve_cg` for the two modes."""
    op = ShiftedOperator.from_matvec(matvec)
    ax0 = None if x0 is None else op.apply(list(x0))
    return solve_cg(op, rhs, iters, mode, x0, ax0, with_image=False).x


# ---------------------------------------------------------------------------------------------
# MINRES


def solve_minres(
    op: ShiftedOperator,
    rhs: Sequence[Tensor],
    iters: int,
    x0: Sequence[Tensor] | None = None,
    ax0: Sequence[Tensor] | None = None,
    with_image: bool = True,
) -> KrylovResult:
    """K iterations of MINRES on A x = rhs from ``x0`` (``ax0`` = A x0 given: no product).

    Lanczos on unit vectors q_k (q_1 = b/||b||, b = rhs − A x0) with the tridiagonal matrix's QR
    by Givens rotations (c_k, s_k); the residual norm of x_k is |φ̄_k| (φ̄_0 = ||b||,
    φ̄_k = s_k φ̄_{k−1}), non-increasing. With s·H q_k = g·u (the product's factor and A's scale
    folded into g) and A's shift σ:

        ŷ = u − (β_k/g) q_{k−1},   α_k = σ + g <q_k, ŷ>,   ẑ = ŷ − <q_k, ŷ> q_k,
        β_{k+1} = g ||ẑ||,          q_{k+1} = ẑ / ||ẑ||,

    all formed in u's storage; α_k is taken after β_k q_{k−1} is removed (the modified
    Gram-Schmidt order, the stable one: Paige 1976). q_{k−1} is dead once ŷ is formed: its
    storage takes the inner product's temporary, then the search direction w_k. A x, when
    asked for, is rhs − r_k with r_k = s_k² r_{k−1} − φ̄_k c_k q_{k+1} (no product).

    A non-finite product stops it before the iterate it would change (the last iterate is the
    best one: the residual never increases); so does a projected system that is singular to
    working precision (γ_k ≤ 10ε ||T_k||: A singular, or cond(A) beyond 0.1/ε), where the
    update would be rounding noise divided by γ_k. β_{k+1} at that level means the Krylov space
    is invariant: x_k is exact, the solve ends.
    """
    info = SolveInfo("minres", iters)
    b = _initial_residual(rhs, ax0)
    beta1 = norm(b)
    if not math.isfinite(beta1):
        info.breakdown = "non-finite right-hand side"
        return _finish(info, None, None, rhs, x0, ax0, with_image)
    if beta1 == 0.0 or iters == 0:
        info.converged = beta1 == 0.0
        info.residual = _relative(beta1, rhs, beta1, x0 is not None) if beta1 else 0.0
        return _finish(info, None, None, rhs, x0, ax0, with_image)
    r = [t.clone() for t in b] if with_image else []  # r_0 = b
    q = _scale_(b, 1.0 / beta1)  # q_1, in b's storage
    sigma = op.shift
    resolution = _resolution(q)
    a_norm = 0.0
    c, s = -1.0, 0.0
    delta_bar = eps_next = 0.0
    phi_bar = beta1
    beta = 0.0  # β_k; multiplies q_0 = 0 (skipped)
    q_prev: Vectors | None = None
    w_prev: Vectors | None = None
    w_prev2: Vectors | None = None
    d: Vectors | None = None  # the correction x_k − x0
    for k in range(1, iters + 1):
        info.iterations = k
        u, g = op.scaled_product(q)  # s·H q_k = g·u
        if q_prev is not None:
            _axpy_(u, -beta / g, q_prev)  # ŷ
        scratch = q_prev if q_prev is not None else [torch.empty_like(t) for t in q]
        projection_t = _dot_into(q, u, scratch)  # <q_k, ŷ>
        _axpy_(u, -projection_t, q)  # ẑ
        projection, z_norm = torch.stack([projection_t, _fast_norm(u)]).tolist()  # one sync
        if math.isfinite(projection) and not _measurable(z_norm, u[0].dtype):
            z_norm = norm(u)  # the sum of squares overflowed or underflowed: measure it rescaled
        if not (math.isfinite(projection) and math.isfinite(z_norm) and math.isfinite(g)):
            info.breakdown = "non-finite Hessian-vector product"
            break
        alpha = sigma + g * projection
        beta_next = g * z_norm
        epsilon = eps_next
        delta = c * delta_bar + s * alpha
        gamma_bar = s * delta_bar - c * alpha
        eps_next = s * beta_next
        delta_bar = -c * beta_next
        gamma = math.hypot(gamma_bar, beta_next)
        a_norm = max(a_norm, math.hypot(alpha, beta, beta_next))  # ||T_k||, a lower bound of ||A||
        if not gamma > resolution * a_norm:
            # γ_k at rounding level: T_k is singular to working precision (A singular, or its
            # condition number beyond 0.1/ε, SciPy's minres rule), and the step's
            # w_k = (...)/γ_k would be rounding noise magnified by 1/γ_k. x_{k−1} already has
            # the least residual reachable.
            info.breakdown = "singular operator (γ at rounding level)"
            break
        c, s = gamma_bar / gamma, beta_next / gamma
        tau = c * phi_bar
        phi_bar = s * phi_bar
        # w_k = (q_k − δ_k w_{k−1} − ε_k w_{k−2}) / γ_k, in the scratch storage (q_{k−1}'s)
        w = [torch.mul(t, 1.0 / gamma, out=o) for t, o in zip(q, scratch, strict=True)]
        if w_prev is not None:
            _axpy_(w, -delta / gamma, w_prev)
        if w_prev2 is not None:
            _axpy_(w, -epsilon / gamma, w_prev2)
        d = list(torch._foreach_mul(w, tau)) if d is None else _axpy_(d, tau, w)
        if beta_next <= resolution * a_norm:  # invariant Krylov space: x_k is exact
            info.converged = True
            if with_image:
                _scale_(r, s * s)  # s_k = 0: r_k = 0
            break
        _scale_(u, 1.0 / z_norm)  # q_{k+1}
        if with_image:
            _axpy_(_scale_(r, s * s), -phi_bar * c, u)
        w_prev2, w_prev = w_prev, w
        q_prev, q = q, u
        beta = beta_next
    info.residual = _relative(abs(phi_bar), rhs, beta1, x0 is not None)
    return _finish(info, d, r if with_image else None, rhs, x0, ax0, with_image)


def minres(
    matvec: MatVec,
    rhs: Sequence[Tensor],
    iters: int,
    x0: Sequence[Tensor] | None = None,
) -> list[Tensor]:
    """K iterations of MINRES for the symmetric (possibly indefinite) system ``matvec(x) = rhs``.

    x_k minimises ||rhs − A x|| over x0 + the Krylov space K_k(A, rhs − A x0), so the residual
    never increases with k and equals the dense solve's (zero) after n iterations in exact
    arithmetic. One product per iteration (a start ``x0`` costs one more for its residual).
    """
    op = ShiftedOperator.from_matvec(matvec)
    ax0 = None if x0 is None else op.apply(list(x0))
    return solve_minres(op, rhs, iters, x0, ax0, with_image=False).x


# ---------------------------------------------------------------------------------------------
# minimal residual over a recycled subspace


class RecycledSubspace:
    """Pairs (u_i, w_i = A u_i) with the w_i orthonormal, kept across the solves of a stage
    (A does not change within a stage, so a new right-hand side is first projected onto the
    stored subspace for free). Memory: ``max_size`` pairs of backbone-sized vectors."""

    def __init__(self, max_size: int) -> None:
        if max_size < 1:
            raise ValueError(f"max_size must be >= 1, got {max_size}")
        self.max_size = max_size
        self.u: list[Vectors] = []
        self.w: list[Vectors] = []
        self.a_norm = 0.0  # the largest ||A u|| / ||u|| seen: a lower bound of ||A||

    def __len__(self) -> int:
        return len(self.w)

    def project(self, v: Sequence[Tensor]) -> tuple[Vectors, Vectors]:
        """x in span(u) minimising ||v − A x|| (no product), and its residual v − A x."""
        x = _zeros(v)
        r = [t.clone() for t in v]
        for u, w in zip(self.u, self.w, strict=True):
            coefficient = dot(w, r)  # modified Gram-Schmidt: against the current residual
            _axpy_(x, coefficient, u)
            _axpy_(r, -coefficient, w)
        return x, r

    def add(self, u: Vectors, w: Vectors) -> bool:
        """Orthonormalise w against the stored w_i (the same combination on u) and store the
        pair; ``u`` (of norm 1) and ``w = A u`` are the caller's fresh vectors, changed in place
        and kept. Returns False, storing nothing, when w lies in the stored span to working
        precision (no new direction: what is left of it is rounding noise)."""
        self.a_norm = max(self.a_norm, norm(w))
        for ui, wi in zip(self.u, self.w, strict=True):
            h = dot(wi, w)
            _axpy_(u, -h, ui)
            _axpy_(w, -h, wi)
        w_norm = norm(w)
        if not w_norm > _resolution(w) * self.a_norm or not math.isfinite(w_norm):
            return False
        _scale_(u, 1.0 / w_norm)
        _scale_(w, 1.0 / w_norm)
        self.u.append(u)
        self.w.append(w)
        if len(self.w) > self.max_size:  # a subset of an orthonormal set stays orthonormal
            del self.u[0], self.w[0]
        return True


def solve_recycled(
    op: ShiftedOperator, rhs: Sequence[Tensor], iters: int, space: RecycledSubspace
) -> KrylovResult:
    """GCR from the projection onto ``space``; each product extends the space with the unit
    direction r/||r|| (minimal residual over the whole stored subspace plus the new
    directions). With an empty space it is mathematically MINRES. A non-finite product, or one
    that adds no direction, ends the solve at the current (best) iterate."""
    info = SolveInfo("recycled", iters)
    rhs_norm = norm(rhs)
    if not math.isfinite(rhs_norm):
        info.breakdown = "non-finite right-hand side"
        return _finish(info, None, None, rhs, None, None, True)
    x, r = space.project(rhs)
    for k in range(1, iters + 1):
        r_norm = norm(r)
        if r_norm <= _resolution(r) * rhs_norm:  # converged to working precision
            info.converged = True
            break
        info.iterations = k
        u = _scale_([t.clone() for t in r], 1.0 / r_norm)
        w = op.apply(u)
        if not _all_finite(w):
            info.breakdown = "non-finite Hessian-vector product"
            break
        if not space.add(u, w):
            info.breakdown = "the product adds no direction to the subspace"
            break
        coefficient = dot(w, r)
        _axpy_(x, coefficient, u)
        _axpy_(r, -coefficient, w)
    info.residual = norm(r) / rhs_norm if rhs_norm > 0 else 0.0
    return _finish(info, x, r, rhs, None, None, True)
