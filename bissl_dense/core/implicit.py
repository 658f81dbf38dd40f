"""Implicit-Jacobian products for BiSSL's upper-level gradient (SPEC §2, paper Eq. 7 and App. B.3).

With the proximal lower level  θ_L*(θ_U) = argmin L_P(θ_L) + (λ/2)||θ_L − θ_U||², the implicit
function theorem gives  dθ_L*/dθ_U = (I + H/λ)⁻¹  with H = ∇²_θ L_P(θ_L*). The matrix is symmetric,
so the vector-Jacobian product the upper level needs is the same solve. It is approximated by K
iterations of a Krylov solver on  A x = v,  A = I + H/(λ + δ), δ being a damping term, using only
Hessian-vector products (HVPs).

One solver per upper stage
--------------------------
During an upper stage θ_L and the Hessian batch are fixed (SPEC §3), so H is the same matrix for
all N_U solves of the stage. :class:`ImplicitSolver` builds what the products need once per stage
(``begin_stage``) and reuses it in every ``solve``; ``implicit_jacobian_product`` is the one-shot
form (one stage of one solve).

HVP modes
---------
``"exact"``
    One forward pass and one first-order gradient graph (``create_graph=True``) per *stage*; each
    product is a double backward through that same graph. Memory: the graph stays allocated for
    the whole stage (the forward activations plus what the first-order backward saved for the
    second, a few times one forward's activations; the benchmark reports it as
    ``stage_graph_mib``), and it is freed by ``end_stage``.
``"finite_difference"``
    Differences of gradients: forward, Hv ≈ (∇L(θ + εv) − ∇L(θ)) / ε, with ∇L(θ) and the
    activation pattern computed once per stage, so each product costs one gradient; or central,
    (∇L(θ + εv) − ∇L(θ − εv)) / 2ε, two gradients per product. No second-order graph: less memory
    and no double backward. The perturbed passes replay the activation pattern (ReLU masks,
    clamp/hardtanh saturation, max-pool indices) of the pass at θ, so the difference is taken on
    the smooth piece of the loss that autograd's Hessian describes; a non-smooth operation it
    cannot replay makes the call raise, naming it (activation_pattern.py).
``"recompute"``
    The authors' scheme: a fresh forward pass, first-order graph and double backward for every
    product. Kept as the baseline the other two are measured against
    (``python -m bissl_dense.benchmarks.implicit``).

Solvers
-------
``"cg"``
    Conjugate gradient, ``cg="global"`` (textbook) or ``"layerwise"`` (separate scalars per
    tensor, the reference's variant). CG assumes A positive definite. With the paper's λ + δ = 10
    A is indefinite as soon as H has an eigenvalue below −10, which happens on real networks (the
    benchmark's ResNet-18 with SimCLR): K-step CG can then return an x with
    ||Ax − v|| > ||v||, i.e. worse than x = 0.
``"minres"``
    MINRES (Paige and Saunders, 1975): Lanczos on A with the residual minimised over the Krylov
    space, for symmetric indefinite systems. One product per iteration like CG, and its residual
    never increases, so it is never above ||v|| (never worse than no solve).
``"recycled"``
    Minimal residual over a subspace recycled across the stage (GCR with the Krylov vectors of
    the stage's earlier solves kept together with their images under A). Since A does not change
    within a stage, a new right-hand side is first projected onto the stored subspace for free;
    the first solve of a stage takes ``iters`` products, every later one ``recycle_iters``
    (default 1) products, each of which adds a direction. With an empty subspace it is
    mathematically MINRES. Memory: ``recycle_max`` pairs of backbone-sized vectors.

``warm_start=True`` reuses the stage's previous solution x_prev in every CG/MINRES solve. Plainly
starting the iteration from x_prev lowered the residual on some problems and raised it up to 4x
on others at equal K (tests/core/test_implicit.py), so instead the new solution is the least-
squares best combination of the cold solve's x and x_prev: A x_prev is known from the previous
solve's recurrences, so this costs no product, and the residual is never above the cold solve's.
Consecutive right-hand sides of a stage are correlated, so x_prev usually adds information.

Batch statistics and randomness
-------------------------------
``loss_fn`` is evaluated in whatever mode its modules are in. For BiSSL the lower model is in
train mode, so BatchNorm normalises with the statistics of the (fixed) Hessian batch itself and H
includes the derivatives through those batch statistics; the running statistics do not enter the
products. Every forward pass in train mode would still update the running statistics (the
reference updates them K + 1 times per upper step); the solver restores every tensor passed as
``buffers`` (give it ``model.buffers()``) after each pass it makes, so the running statistics,
like the parameters, are exactly as before.

The random number generators (CPU and the parameters' CUDA devices) are captured when the stage
begins and every loss evaluation of the stage runs on a fork of that state: dropout, drop-path
and masking draw the same randomness in every pass, so H is the Hessian of one fixed function
(without this, recompute and finite differences mix different dropout masks). The caller's
generators are left exactly as they were.

Precision: every loss evaluation runs with autocast disabled, so the products are computed in the
parameters' dtype (float32) even when the surrounding training step uses bf16/fp16 autocast:
second derivatives in bf16 (8 significant bits) are too noisy for a solve. A model that enables
autocast inside its own ``forward`` overrides this.

No host synchronisation happens inside the solvers: their scalars stay on the device, and zero
denominators (an exactly converged residual) are handled with ``torch.where`` rather than a
branch. Under ``torch.distributed`` every Hessian-vector product is averaged across ranks (one
flattened all-reduce per product), so each rank solves with the Hessian of the mean loss over all
ranks' batches. The right-hand side ``vectors`` must already be identical on all ranks (average it
first): K-step Krylov solvers are not linear in their right-hand side.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Literal

import torch
from torch import Tensor

from bissl_dense.core.activation_pattern import ActivationPattern
from bissl_dense.distributed import all_reduce_mean_

__all__ = [
    "HessianVectorProduct",
    "ImplicitSolver",
    "conjugate_gradient",
    "gradients",
    "implicit_jacobian_product",
    "make_hvp",
    "minres",
]

CGMode = Literal["layerwise", "global"]
HVPMode = Literal["exact", "finite_difference", "recompute"]
FDScheme = Literal["central", "forward"]
SolverKind = Literal["cg", "minres", "recycled"]
HessianVectorProduct = Callable[[Sequence[Tensor]], list[Tensor]]
Vectors = list[Tensor]
# v ↦ (u, c) with H v = c·u: a product whose scalar factor is left to the solvers (_Operator)
ScaledProduct = Callable[[Sequence[Tensor]], tuple[Vectors, Tensor | float]]

SOLVERS: tuple[str, ...] = ("cg", "minres", "recycled")


# ---------------------------------------------------------------------------------------------
# vector helpers (a "vector" is a list of tensors, one per parameter)


def _inner(x: Tensor, y: Tensor) -> Tensor:
    """<x, y>, the same bits wherever x and y lie in memory. ``torch.dot`` would avoid the
    temporary x * y but its CPU kernel rounds by alignment (2 results over 16 offsets of one
    vector, measured), and every rank of a distributed solve must compute the same CG scalars
    from the same (all-reduced) vectors, or the ranks' upper steps drift apart."""
    return torch.sum(x * y)


def _dots(a: Sequence[Tensor], b: Sequence[Tensor], mode: CGMode) -> list[Tensor]:
    """Per-tensor inner products (layer-wise CG) or the global one repeated for every tensor.
    ``a is b`` (the residual's squared norm) takes the norm kernel: no temporary a * a."""
    if a is b:
        per_tensor = [n.square() for n in torch._foreach_norm(list(a))] if a else []
    else:
        per_tensor = [_inner(x, y) for x, y in zip(a, b, strict=True)]
    if mode == "layerwise":
        return per_tensor
    total = torch.stack(per_tensor).sum()
    return [total] * len(per_tensor)


def _dot(a: Sequence[Tensor], b: Sequence[Tensor]) -> Tensor:
    return torch.stack([_inner(x, y) for x, y in zip(a, b, strict=True)]).sum()


def _dot_into(a: Sequence[Tensor], b: Sequence[Tensor], scratch: Sequence[Tensor]) -> Tensor:
    """<a, b> as :func:`_dot` computes it (the same bits: the elementwise products are summed
    from an aligned buffer either way), with the products written into ``scratch`` instead of a
    new model-sized temporary."""
    sums = [torch.mul(x, y, out=s).sum() for x, y, s in zip(a, b, scratch, strict=True)]
    return torch.stack(sums).sum()


def _scaled(x: Sequence[Tensor], alpha: Tensor | float) -> Vectors:
    """alpha * x (a new vector)."""
    return list(torch._foreach_mul(list(x), alpha)) if x else []


def _norm(a: Sequence[Tensor]) -> Tensor:
    return torch.linalg.vector_norm(torch.stack(list(torch._foreach_norm(list(a)))))


def _axpy(y: Sequence[Tensor], alpha: Tensor | float, x: Sequence[Tensor]) -> Vectors:
    """y + alpha * x (a new vector)."""
    return _axpy_([t.clone() for t in y], alpha, x)


def _axpy_(y: Vectors, alpha: Tensor | Sequence[Tensor] | float, x: Sequence[Tensor]) -> Vectors:
    """y += alpha * x in place and return y; ``alpha`` a number, a 0-d tensor or one 0-d tensor
    per tensor (layer-wise CG).

    The solvers update their vectors in place: a new vector is an allocation the size of the
    model, which on CPU is fresh memory every time (page faults: ~6x the cost of the arithmetic,
    measured on ResNet-18) and on GPU one kernel per tensor; the foreach form is one call.
    """
    if not y:
        return y
    if isinstance(alpha, int | float):
        torch._foreach_add_(y, list(x), alpha=alpha)
    else:
        alphas = [alpha] * len(y) if isinstance(alpha, Tensor) else list(alpha)
        torch._foreach_addcmul_(y, list(x), alphas)
    return y


def _scale_(y: Vectors, alpha: Tensor | Sequence[Tensor] | float) -> Vectors:
    """y *= alpha in place and return y (``alpha`` as in :func:`_axpy_`)."""
    if y:
        torch._foreach_mul_(y, alpha if not isinstance(alpha, Sequence) else list(alpha))
    return y


def _safe_div(num: Tensor, den: Tensor) -> Tensor:
    # A residual that is exactly zero gives 0/0; the right step is then 0. torch.where keeps this on
    # the device (no `if` on a tensor value, hence no host synchronisation).
    return torch.where(den != 0, num / torch.where(den != 0, den, torch.ones_like(den)), 0.0)


# ---------------------------------------------------------------------------------------------
# the operator A = shift·I + scale·H, and the solvers: each returns (x, A x), the latter from its
# own recurrences (no extra product)


class _Operator:
    """A = shift·I + scale·H, H given by a product returning (u, c) with H x = c·u.

    The products' own factor c (1/ε of finite differences) and A's shift and scale are scalars
    the solvers can fold into their recurrences instead of spending passes over model-sized
    vectors on them: on the CPU such a pass costs as much as a small convolution (about 3 ms on
    ResNet-18), and MINRES made 12 per iteration (0.15-0.18 s of vector work per solve on the
    benchmark's ResNet-18, 0.11-0.14 s now). ``u`` is a new vector that the solvers may overwrite.
    """

    def __init__(self, product: ScaledProduct, shift: float = 0.0, scale: float = 1.0) -> None:
        if not scale > 0:
            raise ValueError(f"the operator's scale must be > 0, got {scale}")
        self.product, self.shift, self.scale = product, shift, scale

    @classmethod
    def from_matvec(cls, matvec: HessianVectorProduct) -> _Operator:
        """A given as x ↦ A x (shift 0, scale 1); an output aliasing its input is copied."""

        def product(x: Sequence[Tensor]) -> tuple[Vectors, float]:
            return _unaliased(matvec(x), x), 1.0

        return cls(product)

    def apply(self, x: Sequence[Tensor]) -> Vectors:
        """A x (a new vector)."""
        u, c = self.product(x)
        factor = self.scale * c
        if not (isinstance(factor, float) and factor == 1.0):
            _scale_(u, factor)
        if self.shift != 0.0:
            _axpy_(u, self.shift, x)
        return u


def _unaliased(hx: Sequence[Tensor], x: Sequence[Tensor]) -> Vectors:
    """``hx`` with every tensor that shares memory with one of ``x`` copied (an autograd output
    may be its grad_output itself on a trivial graph; the solvers overwrite products in place)."""
    ids = {xi.data_ptr() for xi in x}
    return [h.clone() if h.data_ptr() in ids else h for h in hx]


def _cg(
    op: _Operator,
    rhs: Sequence[Tensor],
    iters: int,
    mode: CGMode,
    x0: Sequence[Tensor] | None = None,
    ax0: Sequence[Tensor] | None = None,
    with_image: bool = True,
) -> tuple[Vectors, Vectors | None]:
    if mode not in ("layerwise", "global"):
        raise ValueError(f"cg must be 'layerwise' or 'global', got {mode!r}")
    if x0 is None or ax0 is None:
        x = [torch.zeros_like(v) for v in rhs]
        r = [v.clone() for v in rhs]
    else:
        x = [t.clone() for t in x0]
        r = _axpy(rhs, -1.0, ax0)
    p = [t.clone() for t in r]
    rr = _dots(r, r, mode)
    for _ in range(iters):
        ap = op.apply(p)
        alpha = _ratios(rr, _dots(p, ap, mode), mode)
        _axpy_(x, alpha, p)
        _axpy_(r, _negated(alpha, mode), ap)
        rr_new = _dots(r, r, mode)
        beta = _ratios(rr_new, rr, mode)
        _axpy_(_scale_(p, beta), 1.0, r)  # p = r + β p
        rr = rr_new
    return x, _axpy(rhs, -1.0, r) if with_image else None


def _ratios(num: Sequence[Tensor], den: Sequence[Tensor], mode: CGMode) -> list[Tensor]:
    """num / den per tensor (0/0 = 0); for global CG one division, shared by every tensor."""
    if mode == "global" and num:
        return [_safe_div(num[0], den[0])] * len(num)
    return [_safe_div(a, b) for a, b in zip(num, den, strict=True)]


def _negated(values: Sequence[Tensor], mode: CGMode) -> list[Tensor]:
    if mode == "global" and values:
        return [-values[0]] * len(values)
    return [-v for v in values]


def conjugate_gradient(
    matvec: HessianVectorProduct,
    rhs: Sequence[Tensor],
    iters: int,
    mode: CGMode = "global",
    x0: Sequence[Tensor] | None = None,
) -> list[Tensor]:
    """K iterations of CG for ``matvec(x) = rhs`` starting from ``x0`` (default x = 0).

    ``mode="global"`` is the textbook method: one step size α and one conjugation coefficient β
    over the concatenation of all tensors. ``mode="layerwise"`` runs the same recurrences with
    separate α and β per tensor, as the BiSSL reference does (paper App. B.3). It is exact when the
    system has no coupling between tensors (block-diagonal matrix) and a heuristic otherwise.
    A start ``x0`` costs one product for its residual.
    """
    op = _Operator.from_matvec(matvec)
    ax0 = None if x0 is None else op.apply(list(x0))
    return _cg(op, rhs, iters, mode, x0, ax0, with_image=False)[0]


def _minres(
    op: _Operator,
    rhs: Sequence[Tensor],
    iters: int,
    x0: Sequence[Tensor] | None = None,
    ax0: Sequence[Tensor] | None = None,
    with_image: bool = True,
) -> tuple[Vectors, Vectors | None]:
    """MINRES on the correction d of A (x0 + d) = rhs; see :func:`minres`.

    Arranged for the cost of passes over model-sized vectors (:class:`_Operator`):

    * the first Lanczos vector is the right-hand side itself, q_1 = m_1 p_1 with the scalar
      m_1 = 1/||b|| (later ones are normalised, m_k = 1: p_k = q_k), and the product's factor and
      A's shift and scale live in the scalars: with H p_k = c u,
      A q_k = σ q_k + g u where g = s m_k c, so  y = A q_k − β_k q_{k−1} = σ q_k + g ŷ  with
      ŷ = u − (β_k m_{k−1} / g) p_{k−1},  α_k = σ + g m_k <p_k, ŷ>, and the next Lanczos vector
      z = y − α_k q_k = g ẑ with ẑ = ŷ − m_k² <p_k, ŷ> p_k, all formed in u's storage;
    * α_k is taken after β_k q_{k−1} is removed (the modified Gram-Schmidt order, the variant
      Paige (1976) showed to be the stable one);
    * p_{k−1} is dead once ŷ is formed: its storage takes the dot product's temporary, then the
      search direction w_k;
    * A x, when asked for, is rhs − r_k with the residual's own recurrence
      r_k = s_k² r_{k−1} − φ̄_k c_k q_{k+1} (2 passes per iteration, not the 5 of A w_k's).

    Per iteration (from the third): 10 passes besides the product, 12 and a temporary before.
    """
    sigma, scale = op.shift, op.scale
    # p_1 = b = rhs − A x0; the caller's rhs is read, never written
    p: Vectors = _axpy(rhs, -1.0, ax0) if ax0 is not None else list(rhs)
    p_is_ours = ax0 is not None
    tiny = torch.finfo(p[0].dtype).tiny
    norm = _norm(p)
    one = torch.ones_like(norm)
    m = _safe_div(one, norm)
    beta = norm  # β_1; it multiplies q_0 = 0, which is skipped
    # QR of the (k+1) × k tridiagonal Lanczos matrix by Givens rotations (c_k, s_k); the k-th
    # column after the two previous rotations is (ε_k, δ_k, γ̄_k, β_{k+1}). The residual norm of
    # x_k is |φ̄_k| with φ̄_0 = β_1, φ̄_k = s_k φ̄_{k−1}.
    c = -one
    s = torch.zeros_like(norm)
    delta_bar = torch.zeros_like(norm)
    eps_next = torch.zeros_like(norm)
    phi_bar = norm.clone()
    p_prev: Vectors | None = None
    m_prev = one
    prev_is_ours = False
    w_prev2: Vectors | None = None
    w_prev: Vectors | None = None
    d: Vectors | None = None
    r = [t.clone() for t in p] if with_image else []  # r_0 = b
    for _ in range(iters):
        u, product_factor = op.product(p)
        g = scale * m * product_factor  # s·H q_k = g·u
        if p_prev is not None:
            _axpy_(u, -_safe_div(beta * m_prev, g), p_prev)  # ŷ
        scratch = (
            p_prev if p_prev is not None and prev_is_ours else [torch.empty_like(t) for t in p]
        )
        projection = _dot_into(p, u, scratch)  # <p_k, ŷ>
        alpha = sigma + g * m * projection
        _axpy_(u, -(m * m * projection), p)  # ẑ
        z_norm = _norm(u)
        beta_next = g * z_norm
        epsilon = eps_next
        delta = c * delta_bar + s * alpha
        gamma_bar = s * delta_bar - c * alpha
        eps_next = s * beta_next
        delta_bar = -c * beta_next
        gamma = torch.sqrt(gamma_bar**2 + beta_next**2).clamp_min(tiny)
        c, s = gamma_bar / gamma, beta_next / gamma
        tau = c * phi_bar
        phi_bar = s * phi_bar
        inverse_gamma = 1.0 / gamma
        # w_k = (q_k − δ_k w_{k−1} − ε_k w_{k−2}) / γ_k, in the scratch storage (p_{k−1}'s)
        w = [torch.mul(t, m * inverse_gamma, out=o) for t, o in zip(p, scratch, strict=True)]
        if w_prev is not None:
            _axpy_(w, -delta * inverse_gamma, w_prev)
        if w_prev2 is not None:
            _axpy_(w, -epsilon * inverse_gamma, w_prev2)
        d = _scaled(w, tau) if d is None else _axpy_(d, tau, w)
        # q_{k+1} = ẑ / ||ẑ||: the one normalisation pass; unnormalised, the vectors' scale would
        # grow by ||H|| per iteration and overflow float32 where the curvature is large (BatchNorm
        # over a few samples)
        _scale_(u, _safe_div(one, z_norm))
        if with_image:  # r_k = s_k² r_{k−1} − φ̄_k c_k q_{k+1}
            _axpy_(_scale_(r, s * s), -phi_bar * c, u)
        w_prev2, w_prev = w_prev, w
        p_prev, m_prev, prev_is_ours = p, m, p_is_ours
        p, m, p_is_ours = u, one, True
        beta = beta_next
    if d is None:
        d = [torch.zeros_like(t) for t in rhs]
    x = d if x0 is None else _axpy_(d, 1.0, x0)
    return x, (_axpy(rhs, -1.0, r) if with_image else None)


def minres(
    matvec: HessianVectorProduct,
    rhs: Sequence[Tensor],
    iters: int,
    x0: Sequence[Tensor] | None = None,
) -> list[Tensor]:
    """K iterations of MINRES for the symmetric (possibly indefinite) system ``matvec(x) = rhs``.

    x_k minimises ||rhs − A x|| over x0 + the Krylov space K_k(A, rhs − A x0), so the residual
    never increases with k and equals the dense solve's (zero) after n iterations in exact
    arithmetic. One product per iteration (a start ``x0`` costs one more for its residual).
    """
    op = _Operator.from_matvec(matvec)
    ax0 = None if x0 is None else op.apply(list(x0))
    return _minres(op, rhs, iters, x0, ax0, with_image=False)[0]


class _RecycledSubspace:
    """Pairs (u_i, w_i = A u_i) with the w_i orthonormal, kept across the solves of a stage."""

    def __init__(self, max_size: int) -> None:
        self.max_size = max_size
        self.u: list[Vectors] = []
        self.w: list[Vectors] = []

    def __len__(self) -> int:
        return len(self.w)

    def project(self, v: Sequence[Tensor]) -> tuple[Vectors, Vectors]:
        """x in span(u) minimising ||v − A x|| (no product), and its residual v − A x."""
        x = [torch.zeros_like(t) for t in v]
        r = [t.clone() for t in v]
        for u, w in zip(self.u, self.w, strict=True):
            coefficient = _dot(w, r)  # modified Gram-Schmidt order: against the current residual
            _axpy_(x, coefficient, u)
            _axpy_(r, -coefficient, w)
        return x, r

    def add(self, u: Vectors, w: Vectors) -> tuple[Vectors, Vectors]:
        """Orthonormalise w against the stored w_i (same combination on u), store, return it.

        ``u`` and ``w`` are fresh vectors of the caller's: they are changed in place and kept.
        """
        for ui, wi in zip(self.u, self.w, strict=True):
            h = _dot(wi, w)
            _axpy_(u, -h, ui)
            _axpy_(w, -h, wi)
        inverse = _safe_div(torch.ones((), dtype=w[0].dtype, device=w[0].device), _norm(w))
        _scale_(u, inverse)
        _scale_(w, inverse)
        self.u.append(u)
        self.w.append(w)
        if len(self.w) > self.max_size:  # a subset of an orthonormal set stays orthonormal
            del self.u[0], self.w[0]
        return u, w


def _recycled(
    op: _Operator, rhs: Sequence[Tensor], iters: int, space: _RecycledSubspace
) -> tuple[Vectors, Vectors]:
    """GCR from the projection onto ``space``; every product extends the space (minimal residual
    over the whole stored subspace plus the new directions)."""
    x, r = space.project(rhs)
    for _ in range(iters):
        u, w = space.add([t.clone() for t in r], op.apply(r))
        coefficient = _dot(w, r)
        _axpy_(x, coefficient, u)
        _axpy_(r, -coefficient, w)
    return x, _axpy(rhs, -1.0, r)


# ---------------------------------------------------------------------------------------------
# Hessian-vector products


def gradients(loss: Tensor, params: Sequence[Tensor], create_graph: bool = False) -> list[Tensor]:
    """∂loss/∂p for each p, zeros for parameters the loss does not depend on."""
    grads = torch.autograd.grad(loss, params, create_graph=create_graph, allow_unused=True)
    return [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads, strict=True)]


class _StageRandomness:
    """The CPU and CUDA generator states at the start of a stage, replayed for every loss pass."""

    def __init__(self, params: Sequence[Tensor]) -> None:
        self.devices = sorted({p.device.index or 0 for p in params if p.device.type == "cuda"})
        self.cpu_state = torch.get_rng_state()
        self.cuda_states = [torch.cuda.get_rng_state(d) for d in self.devices]
        self.device_type = params[0].device.type if params else "cpu"

    @contextlib.contextmanager
    def replay(self) -> Iterator[None]:
        with torch.random.fork_rng(devices=self.devices):
            torch.set_rng_state(self.cpu_state)
            for device, state in zip(self.devices, self.cuda_states, strict=True):
                torch.cuda.set_rng_state(state, device)
            with _autocast_disabled(self.device_type):
                yield


def _autocast_disabled(device_type: str) -> contextlib.AbstractContextManager[None]:
    if device_type in ("cpu", "cuda"):
        return torch.autocast(device_type=device_type, enabled=False)
    return contextlib.nullcontext()


def _make_products(
    evaluate: Callable[[], Tensor],
    params: Sequence[Tensor],
    mode: HVPMode,
    fd_step: float | None,
    fd_scheme: FDScheme,
) -> ScaledProduct:
    """Build v ↦ (u, c) with H v = c·u (:class:`_Operator`); what can be built once (graph, base
    gradient, pattern) is built here."""
    params = list(params)
    if mode == "exact":
        with torch.enable_grad():
            grads = gradients(evaluate(), params, create_graph=True)
        differentiable = [i for i, g in enumerate(grads) if g.requires_grad]

        def exact(vectors: Sequence[Tensor]) -> tuple[Vectors, float]:
            if not differentiable:
                return [torch.zeros_like(p) for p in params], 1.0
            second = torch.autograd.grad(
                [grads[i] for i in differentiable],
                params,
                grad_outputs=[vectors[i] for i in differentiable],
                retain_graph=True,
                allow_unused=True,
            )
            return [
                torch.zeros_like(p) if h is None else h for p, h in zip(params, second, strict=True)
            ], 1.0

        return exact

    if mode == "recompute":

        def recompute(vectors: Sequence[Tensor]) -> tuple[Vectors, float]:
            with torch.enable_grad():
                grads = gradients(evaluate(), params, create_graph=True)
                dot = sum(
                    (g * v).sum() for g, v in zip(grads, vectors, strict=True) if g.requires_grad
                )
                if not isinstance(dot, Tensor) or not dot.requires_grad:
                    return [torch.zeros_like(p) for p in params], 1.0
                return gradients(dot, params), 1.0

        return recompute

    if mode == "finite_difference":
        return _finite_difference_products(evaluate, params, fd_step, fd_scheme)

    raise ValueError(f"hvp must be 'exact', 'finite_difference' or 'recompute', got {mode!r}")


def _finite_difference_products(
    evaluate: Callable[[], Tensor],
    params: list[Tensor],
    fd_step: float | None,
    fd_scheme: FDScheme,
) -> ScaledProduct:
    if fd_scheme not in ("central", "forward"):
        raise ValueError(f"fd_scheme must be 'central' or 'forward', got {fd_scheme!r}")
    # The perturbed forward passes replay the activation pattern of the pass at θ (see
    # activation_pattern.py): without this, kink crossings dominate the difference.
    pattern = ActivationPattern()
    with torch.enable_grad():
        with pattern.recording():
            base_loss = evaluate()
        # the forward scheme differences against ∇L(θ); the central one needs only the pattern
        base_grad = gradients(base_loss, params) if fd_scheme == "forward" else None
    del base_loss
    # θ + εv − εv is not θ in floating point: restore from a copy, bit for bit.
    saved = [p.detach().clone() for p in params]
    # Step rule: no tensor moves by more than a fraction c of its own norm,
    #   ε = c / max_i(||v_i|| / s_i),  s_i = max(||θ_i||, ||θ||·√(n_i / n)),
    # the floor giving zero-norm tensors (fresh BatchNorm biases) their share of ||θ||. A step
    # scaled by the global ||θ|| is far too large when v is concentrated: the upper gradient of a
    # ResNet-18 put 66% of ||v||² on conv1, moved 6x its norm per unit step. c balances truncation
    # against cancellation: √(machine ε) for the forward scheme (error O(ε)); for the central one
    # (O(ε²)) theory says ∛ up to constants, measured best at c ≈ 1e-3 in float32 (machine
    # ε^0.42). Measured on ResNet-18 with a SimCLR loss, float32, along the upper gradient and a
    # random direction: relative product errors 5e-3 (forward) and 5e-4 (central).
    norms = torch.stack([p.detach().norm() for p in params])
    total = torch.linalg.vector_norm(norms)
    n_total = sum(p.numel() for p in params)
    floors = torch.stack([total * (p.numel() / n_total) ** 0.5 for p in params])
    scales = torch.maximum(norms, floors).clamp_min(torch.finfo(norms.dtype).tiny)
    info = torch.finfo(norms.dtype)
    relative_step = info.eps ** (0.5 if fd_scheme == "forward" else 0.42)

    def gradient_at(shift: Tensor, vectors: Sequence[Tensor]) -> list[Tensor]:
        with torch.no_grad():
            torch._foreach_addcmul_(params, list(vectors), [shift] * len(params))
        try:
            with torch.enable_grad(), pattern.replaying():
                shifted_loss = evaluate()
            return gradients(shifted_loss, params)
        finally:
            with torch.no_grad():
                for p, original in zip(params, saved, strict=True):
                    p.copy_(original)

    def finite_difference(vectors: Sequence[Tensor]) -> tuple[Vectors, Tensor]:
        if fd_step is not None:
            eps = torch.as_tensor(fd_step, dtype=norms.dtype, device=norms.device)
        else:
            v_norms = torch.stack(list(torch._foreach_norm(list(vectors))))
            eps = relative_step / (v_norms / scales).max().clamp_min(info.tiny)
        plus = gradient_at(eps, vectors)  # fresh tensors: the differences are taken in place
        # the 1/ε (1/2ε) is returned as the factor c of H v = c·u: the solvers fold it into their
        # scalars instead of a pass over the vector
        if base_grad is not None:
            return _axpy_(plus, -1.0, base_grad), 1.0 / eps
        minus = gradient_at(-eps, vectors)
        return _axpy_(plus, -1.0, minus), 0.5 / eps

    return finite_difference


def make_hvp(
    loss_fn: Callable[[], Tensor],
    params: Sequence[Tensor],
    mode: HVPMode = "exact",
    fd_step: float | None = None,
    fd_scheme: FDScheme = "forward",
) -> HessianVectorProduct:
    """A function v ↦ H v, H the Hessian of ``loss_fn()`` w.r.t. ``params`` (module docstring).

    The random number generators are captured now and replayed around every evaluation of
    ``loss_fn`` (dropout sees the same masks in every pass); autocast is disabled inside.
    """
    params = list(params)
    randomness = _StageRandomness(params)

    def evaluate() -> Tensor:
        with randomness.replay():
            return loss_fn()

    product = _make_products(evaluate, params, mode, fd_step, fd_scheme)

    def hvp(vectors: Sequence[Tensor]) -> list[Tensor]:
        u, c = product(vectors)
        return u if isinstance(c, float) and c == 1.0 else _scale_(u, c)

    return hvp


# ---------------------------------------------------------------------------------------------
# the per-stage solver


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
        hvp: ``"exact"``, ``"finite_difference"`` or ``"recompute"`` (module docstring).
        solver: ``"cg"``, ``"minres"`` or ``"recycled"`` (module docstring).
        fd_scheme: ``"forward"`` (one gradient per product after one per stage) or ``"central"``
            (two per product).
        fd_step: fixed finite-difference step; by default scaled to the norms of θ and v.
        warm_start: combine each CG/MINRES solution with the stage's previous one (module
            docstring; no product, no host sync, never a larger residual than without).
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
        if hvp not in ("exact", "finite_difference", "recompute"):
            raise ValueError(
                f"hvp must be 'exact', 'finite_difference' or 'recompute', got {hvp!r}"
            )
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
        self._params: list[Tensor] | None = None
        self._reset_stage_state()

    def _reset_stage_state(self) -> None:
        self._hvp: ScaledProduct | None = None
        self._buffers: list[Tensor] = []
        self._saved_buffers: list[Tensor] = []
        self._previous: tuple[Vectors, Vectors] | None = None  # (x, A x) of the last solve
        self._space = _RecycledSubspace(self.recycle_max)

    @property
    def active(self) -> bool:
        """Whether a stage has begun and not ended."""
        return self._hvp is not None

    def begin_stage(
        self,
        loss_fn: Callable[[], Tensor],
        params: Sequence[Tensor],
        buffers: Iterable[Tensor] = (),
    ) -> None:
        """Fix θ_L and the Hessian batch (``loss_fn`` evaluates L_P on it) until ``end_stage``.

        Runs the stage's one forward pass (exact, finite differences); ``params`` must not change
        until ``end_stage``. ``buffers`` are restored after every pass the solver makes.
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
        randomness = _StageRandomness(params)

        def evaluate() -> Tensor:
            with randomness.replay():
                return loss_fn()

        try:
            self._hvp = _make_products(evaluate, params, self.hvp, self.fd_step, self.fd_scheme)
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
        u = _unaliased(u, x)
        all_reduce_mean_(u)
        self.products += 1
        return u, c

    @property
    def _operator(self) -> _Operator:
        """A = I + H/(λ+δ) with this stage's products."""
        return _Operator(self._product, shift=1.0, scale=1.0 / (self.lam + self.damping))

    def _with_previous(self, vectors: Vectors, x: Vectors, ax: Vectors) -> tuple[Vectors, Vectors]:
        """Warm start: the best combination α x + β x_prev of this solve's solution and the
        stage's previous one, by least squares on ||v − α A x − β A x_prev|| (A x_prev is kept
        from the previous solve: no product). (α, β) = (1, 0) is among the candidates, so the
        residual is never above the cold solve's. Computed on the device (2 × 2 pseudo-inverse),
        no host synchronisation."""
        if self._previous is None:
            return x, ax
        x_prev, ax_prev = self._previous
        gram = torch.stack(
            [
                torch.stack([_dot(ax, ax), _dot(ax, ax_prev)]),
                torch.stack([_dot(ax_prev, ax), _dot(ax_prev, ax_prev)]),
            ]
        )
        alpha, beta = torch.linalg.pinv(gram) @ torch.stack(
            [_dot(ax, vectors), _dot(ax_prev, vectors)]
        )
        return (
            [alpha * a + beta * b for a, b in zip(x, x_prev, strict=True)],
            [alpha * a + beta * b for a, b in zip(ax, ax_prev, strict=True)],
        )

    def solve(self, vectors: Sequence[Tensor]) -> list[Tensor]:
        """Approximate (I + H/(λ+δ))⁻¹ v with this stage's products; detached tensors."""
        vectors = self._checked(vectors)
        warm = self.warm_start and self.solver != "recycled"  # only the warm start needs A x
        ax: Vectors | None
        try:
            if self.solver == "recycled":
                k = self.iters if len(self._space) == 0 else self.recycle_iters
                x, ax = _recycled(self._operator, vectors, k, self._space)
            elif self.solver == "minres":
                x, ax = _minres(self._operator, vectors, self.iters, with_image=warm)
            else:
                x, ax = _cg(self._operator, vectors, self.iters, self.cg, with_image=warm)
        finally:
            self._restore_buffers()
        x = [t.detach() for t in x]
        self.last_unwarmed = x  # this solve's own solution (measurements of the warm start)
        if warm:
            assert ax is not None
            x, ax = self._with_previous(vectors, x, [t.detach() for t in ax])
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
        residual = _norm([a - v for a, v in zip(ax, vectors, strict=True)])
        den = _norm(vectors)
        return (residual / den.clamp_min(torch.finfo(den.dtype).tiny)).detach()


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
        hvp: ``"exact"``, ``"finite_difference"`` or ``"recompute"`` (module docstring).
        buffers: tensors that ``loss_fn`` may change in place (BatchNorm running statistics,
            ``num_batches_tracked``); restored to their values at entry before returning.
        fd_step: fixed finite-difference step; by default scaled to the norms of θ and v.
        fd_scheme: ``"forward"`` (K + 1 gradients, error O(ε), the default) or ``"central"``
            (2K gradients, error O(ε²)).
        solver: ``"cg"`` (default), ``"minres"`` or ``"recycled"`` (module docstring).

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
    implicit_solver.begin_stage(loss_fn, params, buffers)
    try:
        return implicit_solver.solve(vectors)
    finally:
        implicit_solver.end_stage()
