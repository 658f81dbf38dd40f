"""Implicit-Jacobian products for BiSSL's upper-level gradient (SPEC §2, paper Eq. 7 and App. B.3).

With the proximal lower level  θ_L*(θ_U) = argmin L_P(θ_L) + (λ/2)||θ_L − θ_U||², the implicit
function theorem gives  dθ_L*/dθ_U = (I + H/λ)⁻¹  with H = ∇²_θ L_P(θ_L*). The matrix is symmetric,
so the vector-Jacobian product the upper level needs is the same solve. It is approximated by K
iterations of conjugate gradient on  (I + H/(λ + δ)) x = v, δ being a damping term, using only
Hessian-vector products (HVPs).

HVP modes
---------
``"exact"``
    One forward pass and one first-order gradient graph (``create_graph=True``); each of the K
    products is a double-backward through that same graph. K + 1 backward-sized passes.
``"finite_difference"``
    Differences of gradients: central, Hv ≈ (∇L(θ + εv) − ∇L(θ − εv)) / 2ε (2K gradients), or
    forward, Hv ≈ (∇L(θ + εv) − ∇L(θ)) / ε with ∇L(θ) computed once (K + 1 gradients). No
    second-order graph: less memory and no double backward. The perturbed
    passes replay the activation pattern (ReLU masks, max-pool indices) of the pass at θ, so the
    difference is taken on the smooth piece of the loss that autograd's Hessian describes; without
    that, units crossing their kink dominate the difference in float32 (activation_pattern.py).
    Its error is measured, not assumed (``bissl_dense.benchmarks.implicit`` reports it).
``"recompute"``
    The authors' scheme: a fresh forward pass, first-order graph and double backward for every
    product. Kept as the baseline the other two are measured against
    (``python -m bissl_dense.benchmarks.implicit``).

Batch statistics: ``loss_fn`` is evaluated in whatever mode its modules are in. For BiSSL the lower
model is in train mode, so BatchNorm normalises with the statistics of the (fixed) Hessian batch
itself and H includes the derivatives through those batch statistics; the running statistics do
not enter the products. Each forward pass in train mode would still update the running statistics
(the reference updates them K + 1 times per upper step); ``implicit_jacobian_product`` restores
every tensor passed as ``buffers`` (give it ``model.buffers()``) so that on return the running
statistics, like the parameters, are exactly as before the call.

No host synchronisation happens inside the CG loop: the CG scalars stay on the device, and a zero
denominator (an exactly converged residual) is handled with ``torch.where`` rather than a branch.
Under ``torch.distributed`` every Hessian-vector product is averaged across ranks (one flattened
all-reduce per product), so each rank solves with the Hessian of the mean loss over all ranks'
batches. The right-hand side ``vectors`` must already be identical on all ranks (average it first):
K-step CG is not linear in its right-hand side, so averaging solutions is not the same thing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Literal

import torch
from torch import Tensor

from bissl_dense.core.activation_pattern import ActivationPattern
from bissl_dense.distributed import all_reduce_mean_

__all__ = [
    "HessianVectorProduct",
    "conjugate_gradient",
    "gradients",
    "implicit_jacobian_product",
    "make_hvp",
]

CGMode = Literal["layerwise", "global"]
HVPMode = Literal["exact", "finite_difference", "recompute"]
FDScheme = Literal["central", "forward"]
HessianVectorProduct = Callable[[Sequence[Tensor]], list[Tensor]]


def _dots(a: Sequence[Tensor], b: Sequence[Tensor], mode: CGMode) -> list[Tensor]:
    """Per-tensor inner products (layer-wise CG) or the global one repeated for every tensor."""
    per_tensor = [torch.sum(x * y) for x, y in zip(a, b, strict=True)]
    if mode == "layerwise":
        return per_tensor
    total = torch.stack(per_tensor).sum()
    return [total] * len(per_tensor)


def _safe_div(num: Tensor, den: Tensor) -> Tensor:
    # A residual that is exactly zero gives 0/0; the right step is then 0. torch.where keeps this on
    # the device (no `if` on a tensor value, hence no host synchronisation).
    return torch.where(den != 0, num / torch.where(den != 0, den, torch.ones_like(den)), 0.0)


def conjugate_gradient(
    matvec: HessianVectorProduct,
    rhs: Sequence[Tensor],
    iters: int,
    mode: CGMode = "global",
) -> list[Tensor]:
    """K iterations of CG for ``matvec(x) = rhs`` starting from x = 0.

    ``mode="global"`` is the textbook method: one step size α and one conjugation coefficient β
    over the concatenation of all tensors. ``mode="layerwise"`` runs the same recurrences with
    separate α and β per tensor, as the BiSSL reference does (paper App. B.3). It is exact when the
    system has no coupling between tensors (block-diagonal matrix) and a heuristic otherwise.
    """
    if mode not in ("layerwise", "global"):
        raise ValueError(f"cg must be 'layerwise' or 'global', got {mode!r}")
    x = [torch.zeros_like(v) for v in rhs]
    r = [v.clone() for v in rhs]
    p = [v.clone() for v in rhs]
    rr = _dots(r, r, mode)
    for _ in range(iters):
        ap = matvec(p)
        alpha = [_safe_div(a, b) for a, b in zip(rr, _dots(p, ap, mode), strict=True)]
        x = [xi + a * pi for xi, a, pi in zip(x, alpha, p, strict=True)]
        r = [ri - a * api for ri, a, api in zip(r, alpha, ap, strict=True)]
        rr_new = _dots(r, r, mode)
        beta = [_safe_div(a, b) for a, b in zip(rr_new, rr, strict=True)]
        p = [ri + b * pi for ri, b, pi in zip(r, beta, p, strict=True)]
        rr = rr_new
    return x


def gradients(loss: Tensor, params: Sequence[Tensor], create_graph: bool = False) -> list[Tensor]:
    """∂loss/∂p for each p, zeros for parameters the loss does not depend on."""
    grads = torch.autograd.grad(loss, params, create_graph=create_graph, allow_unused=True)
    return [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads, strict=True)]


def make_hvp(
    loss_fn: Callable[[], Tensor],
    params: Sequence[Tensor],
    mode: HVPMode = "exact",
    fd_step: float | None = None,
    fd_scheme: FDScheme = "forward",
) -> HessianVectorProduct:
    """A function v ↦ H v, H the Hessian of ``loss_fn()`` w.r.t. ``params`` (module docstring)."""
    params = list(params)
    if mode == "exact":
        grads = gradients(loss_fn(), params, create_graph=True)
        differentiable = [i for i, g in enumerate(grads) if g.requires_grad]

        def hvp(vectors: Sequence[Tensor]) -> list[Tensor]:
            out = [torch.zeros_like(p) for p in params]
            if differentiable:
                second = torch.autograd.grad(
                    [grads[i] for i in differentiable],
                    params,
                    grad_outputs=[vectors[i] for i in differentiable],
                    retain_graph=True,
                    allow_unused=True,
                )
                out = [o if s is None else s for o, s in zip(out, second, strict=True)]
            return out

        return hvp

    if mode == "recompute":

        def hvp(vectors: Sequence[Tensor]) -> list[Tensor]:
            grads = gradients(loss_fn(), params, create_graph=True)
            dot = sum((g * v).sum() for g, v in zip(grads, vectors, strict=True) if g.requires_grad)
            if not isinstance(dot, Tensor) or not dot.requires_grad:
                return [torch.zeros_like(p) for p in params]
            return gradients(dot, params)

        return hvp

    if mode == "finite_difference":
        if fd_scheme not in ("central", "forward"):
            raise ValueError(f"fd_scheme must be 'central' or 'forward', got {fd_scheme!r}")
        # The perturbed forward passes replay the ReLU masks and max-pool indices of the pass at θ
        # (see activation_pattern.py): without this, kink crossings dominate the difference.
        pattern = ActivationPattern()
        with torch.enable_grad():
            with pattern.recording():
                base_loss = loss_fn()
            # the forward scheme differences against ∇L(θ); the central one needs only the pattern
            base_grad = gradients(base_loss, params) if fd_scheme == "forward" else None
        # θ + εv − εv is not θ in floating point: restore from a copy, bit for bit.
        saved = [p.detach().clone() for p in params]
        # Step rule: no tensor moves by more than a fraction c of its own norm,
        #   ε = c / max_i(||v_i|| / s_i),  s_i = max(||θ_i||, ||θ||·√(n_i / n)),
        # the floor giving zero-norm tensors (fresh BatchNorm biases) their share of ||θ||. A
        # step scaled by the global ||θ|| is far too large when v is concentrated: the upper
        # gradient of a ResNet-18 put 66% of ||v||² on conv1, moved 6x its norm per unit step.
        # c balances truncation against cancellation: √(machine ε) for the forward scheme
        # (error O(ε)); for the central one (O(ε²)) theory says ∛ up to constants, measured best
        # at c ≈ 1e-3 in float32 (machine ε^0.42). Measured on ResNet-18 with a SimCLR loss,
        # float32, along the upper gradient and a random direction: relative product errors
        # 5e-3 (forward) and 5e-4 (central).
        norms = torch.stack([p.detach().norm() for p in params])
        total = torch.linalg.vector_norm(norms)
        n_total = sum(p.numel() for p in params)
        floors = torch.stack([total * (p.numel() / n_total) ** 0.5 for p in params])
        scales = torch.maximum(norms, floors).clamp_min(torch.finfo(norms.dtype).tiny)
        info = torch.finfo(norms.dtype)
        relative_step = info.eps ** (0.5 if fd_scheme == "forward" else 0.42)

        def gradient_at(shift: Tensor, vectors: Sequence[Tensor]) -> list[Tensor]:
            with torch.no_grad():
                for p, v in zip(params, vectors, strict=True):
                    p.add_(v * shift)
            try:
                with pattern.replaying():
                    shifted_loss = loss_fn()
                return gradients(shifted_loss, params)
            finally:
                with torch.no_grad():
                    for p, original in zip(params, saved, strict=True):
                        p.copy_(original)

        def hvp(vectors: Sequence[Tensor]) -> list[Tensor]:
            if fd_step is not None:
                eps = torch.as_tensor(fd_step, dtype=norms.dtype, device=norms.device)
            else:
                v_norms = torch.stack([v.norm() for v in vectors])
                eps = relative_step / (v_norms / scales).max().clamp_min(info.tiny)
            plus = gradient_at(eps, vectors)
            if base_grad is not None:
                return [(g1 - g0) / eps for g1, g0 in zip(plus, base_grad, strict=True)]
            minus = gradient_at(-eps, vectors)
            return [(g1 - g0) / (2 * eps) for g1, g0 in zip(plus, minus, strict=True)]

        return hvp

    raise ValueError(f"hvp must be 'exact', 'finite_difference' or 'recompute', got {mode!r}")


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
) -> list[Tensor]:
    """Approximate (I + H/(lam + damping))⁻¹ v by ``iters`` steps of conjugate gradient.

    Args:
        loss_fn: evaluates the lower-level loss L_P at the current values of ``params``.
        params: the tensors H is taken with respect to (the lower backbone θ_L); they must
            require grad. Their values are unchanged on return (finite differences perturb them
            temporarily and restore them).
        vectors: one tensor per parameter, the right-hand side v (∇_θ L_D at θ_L for BiSSL).
        lam: the proximal weight λ of the lower level (SPEC §4: 0.001).
        damping: δ, added to λ for numerical stability (SPEC §4: 10).
        iters: K, the number of CG iterations = the number of Hessian-vector products.
        cg: ``"global"`` (textbook CG over all tensors, the default) or ``"layerwise"``
            (separate CG scalars per tensor, the reference's variant). Both cost the same K
            products; global CG leaves the smaller residual ||(I + H/(λ+δ))x − v|| in every
            measurement we made (tests/core/test_implicit.py, bissl_dense.benchmarks.implicit).
        hvp: ``"exact"``, ``"finite_difference"`` or ``"recompute"`` (module docstring).
        buffers: tensors that ``loss_fn`` may change in place (BatchNorm running statistics,
            ``num_batches_tracked``); restored to their values at entry before returning.
        fd_step: fixed finite-difference step; by default scaled to the norms of θ and v.
        fd_scheme: ``"forward"`` (K + 1 gradients, error O(ε), the default) or ``"central"``
            (2K gradients, error O(ε²)). On ResNet-18 with a SimCLR loss one forward product is
            within ~1e-2 of the exact one at ~0.4x the recomputing scheme's cost, a central one
            within ~1e-3 at ~0.65x (``python -m bissl_dense.benchmarks.implicit``).

    Returns:
        One tensor per parameter (detached), the approximate solution x.
    """
    params = list(params)
    vectors = [v.detach() for v in vectors]
    if len(params) != len(vectors):
        raise ValueError(f"got {len(params)} params but {len(vectors)} vectors")
    for i, (p, v) in enumerate(zip(params, vectors, strict=True)):
        if p.shape != v.shape:
            raise ValueError(
                f"vectors[{i}] has shape {tuple(v.shape)}, params[{i}] {tuple(p.shape)}"
            )
        if not p.requires_grad:
            raise ValueError(f"params[{i}] (shape {tuple(p.shape)}) does not require grad")
    buffers = list(buffers)
    saved_buffers = [b.detach().clone() for b in buffers]
    scale = 1.0 / (lam + damping)
    try:
        hessian_vector_product = make_hvp(loss_fn, params, hvp, fd_step, fd_scheme)

        def matvec(x: Sequence[Tensor]) -> list[Tensor]:
            hx = hessian_vector_product(x)
            all_reduce_mean_(hx)
            return [xi + scale * h for xi, h in zip(x, hx, strict=True)]

        solution = conjugate_gradient(matvec, vectors, iters, cg)
    finally:
        with torch.no_grad():
            for b, saved in zip(buffers, saved_buffers, strict=True):
                b.copy_(saved)
    return [x.detach() for x in solution]
