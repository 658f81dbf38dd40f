"""Hessian-vector products of the lower-level loss (SPEC §2–§3), built once per upper stage.

During an upper stage θ_L and the Hessian batch are fixed, so H is one matrix for the stage's N_U
solves. :func:`stage_products` builds what the products need once (``begin_stage`` of
:class:`~bissl_dense.core.implicit.ImplicitSolver`) and returns v ↦ (u, c) with H v = c·u, the
factor c left to the Krylov solvers (:mod:`bissl_dense.core.krylov`).

Modes
-----
``"exact"``
    One forward pass and one first-order gradient graph (``create_graph=True``) per *stage*; each
    product is a double backward through that graph, which stays allocated until the stage ends.
``"finite_difference"``
    Differences of gradients: forward, Hv ≈ (∇L(θ + εv) − ∇L(θ)) / ε, with ∇L(θ) and the
    activation pattern taken once per stage (one gradient per product); or central,
    (∇L(θ + εv) − ∇L(θ − εv)) / 2ε (two). The perturbed passes replay the activation pattern
    (ReLU masks, clamp saturation, max-pool indices) of the pass at θ, so the difference is taken
    on the smooth piece of the loss that autograd's Hessian describes; an operation it cannot
    replay makes the call raise, naming it (activation_pattern.py).
``"recompute"``
    The BiSSL reference's scheme: a fresh forward pass, first-order graph and double backward for
    every product (the baseline of ``python -m bissl_dense.benchmarks.implicit``).
``"jvp"``
    Forward-over-reverse: Hv = d/dt ∇L(θ + t v) at t = 0, a ``torch.func.jvp`` of the gradient.
    Exact like ``"exact"``, but it holds no graph between products: each product is one forward
    and one backward pass carrying tangents. It needs the module the parameters belong to (the
    loss is re-evaluated with the parameters substituted). BatchNorm layers normalise with the
    batch statistics as in train mode, but do not update their running statistics inside the
    transform (an in-place update of a plain buffer from dual tensors is refused): their
    ``track_running_stats`` is switched off for the product, which leaves the function the same.

Batch statistics and randomness
-------------------------------
The loss is evaluated in whatever mode its modules are in. For BiSSL the lower model is in train
mode, so BatchNorm normalises with the Hessian batch's own statistics and H includes the
derivatives through them; the running statistics do not enter the products (the caller restores
them after each pass: ``ImplicitSolver``'s ``buffers``).

The random number generators (CPU and the parameters' CUDA devices) are captured when the stage
begins, and every loss evaluation runs on a fork of that state: dropout, drop-path and masking draw
the same randomness in every pass, so H is the Hessian of one fixed function. The caller's
generators are left as they were. Autocast is disabled inside: the products are computed in the
parameters' dtype (float32) even under a bf16/fp16 training step — second derivatives in bf16
(8 significant bits) are too noisy for a solve.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Literal

import torch
from torch import Tensor, nn
from torch.nn.utils.stateless import _reparametrize_module

from bissl_dense.core.activation_pattern import ActivationPattern
from bissl_dense.core.krylov import ScaledProduct, Vectors, _axpy_, _scale_

__all__ = ["FDScheme", "HVPMode", "HessianVectorProduct", "gradients", "make_hvp", "stage_products"]

HVPMode = Literal["exact", "finite_difference", "recompute", "jvp"]
FDScheme = Literal["central", "forward"]
HVP_MODES: tuple[str, ...] = ("exact", "finite_difference", "recompute", "jvp")
HessianVectorProduct = Callable[[Sequence[Tensor]], list[Tensor]]


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


def _products(
    evaluate: Callable[[], Tensor],
    params: Sequence[Tensor],
    mode: HVPMode,
    fd_step: float | None,
    fd_scheme: FDScheme,
    module: nn.Module | None = None,
) -> ScaledProduct:
    """Build v ↦ (u, c) with H v = c·u; what can be built once (graph, base gradient, pattern)
    is built here."""
    params = list(params)
    if mode == "jvp":
        return _jvp_products(evaluate, params, module)
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

    raise ValueError(f"hvp must be one of {HVP_MODES}, got {mode!r}")


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


@contextlib.contextmanager
def _batch_statistics_untracked(module: nn.Module) -> Iterator[None]:
    """BatchNorm layers normalise with the batch's statistics and leave their running ones
    alone (train mode without tracking: the same function, no in-place buffer update)."""
    norms = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    tracked = [m.track_running_stats for m in norms]
    training = [m.training for m in norms]
    for m in norms:
        if m.training:
            m.track_running_stats = False
    try:
        yield
    finally:
        for m, was_tracked, was_training in zip(norms, tracked, training, strict=True):
            m.track_running_stats, m.training = was_tracked, was_training


def _jvp_products(
    evaluate: Callable[[], Tensor], params: list[Tensor], module: nn.Module | None
) -> ScaledProduct:
    if module is None:
        raise ValueError("hvp='jvp' needs the module the parameters belong to (module=...)")
    names_by_id = {id(p): name for name, p in module.named_parameters()}
    missing = [i for i, p in enumerate(params) if id(p) not in names_by_id]
    if missing:
        raise ValueError(f"hvp='jvp': params {missing[:8]} are not parameters of the module")
    names = [names_by_id[id(p)] for p in params]

    def loss_at(*theta: Tensor) -> Tensor:
        with _reparametrize_module(module, dict(zip(names, theta, strict=True))):
            return evaluate()

    gradient_at = torch.func.grad(loss_at, argnums=tuple(range(len(params))))

    def jvp_product(vectors: Sequence[Tensor]) -> tuple[Vectors, float]:
        primals = tuple(p.detach() for p in params)
        tangents = tuple(v.to(p.dtype) for v, p in zip(vectors, params, strict=True))
        # no graph for the outer autograd (the head's parameters still require grad)
        with _batch_statistics_untracked(module), torch.no_grad():
            _, hv = torch.func.jvp(gradient_at, primals, tangents)
        return [h.detach() for h in hv], 1.0

    return jvp_product


def stage_products(
    loss_fn: Callable[[], Tensor],
    params: Sequence[Tensor],
    mode: HVPMode = "exact",
    fd_step: float | None = None,
    fd_scheme: FDScheme = "forward",
    module: nn.Module | None = None,
) -> ScaledProduct:
    """v ↦ (u, c) with H v = c·u for the Hessian of ``loss_fn()`` w.r.t. ``params``; what can be
    built once (graph, base gradient, activation pattern) is built now, under the random state
    of this moment, which every later pass replays. ``module`` (``"jvp"`` only): the module
    whose parameters ``params`` are and that ``loss_fn`` runs (BatchNorm layers included)."""
    params = list(params)
    randomness = _StageRandomness(params)

    def evaluate() -> Tensor:
        with randomness.replay():
            return loss_fn()

    return _products(evaluate, params, mode, fd_step, fd_scheme, module)


def make_hvp(
    loss_fn: Callable[[], Tensor],
    params: Sequence[Tensor],
    mode: HVPMode = "exact",
    fd_step: float | None = None,
    fd_scheme: FDScheme = "forward",
    module: nn.Module | None = None,
) -> HessianVectorProduct:
    """A function v ↦ H v, H the Hessian of ``loss_fn()`` w.r.t. ``params`` (module docstring)."""
    product = stage_products(loss_fn, params, mode, fd_step, fd_scheme, module)

    def hvp(vectors: Sequence[Tensor]) -> list[Tensor]:
        u, c = product(vectors)
        return u if isinstance(c, float) and c == 1.0 else _scale_(u, c)

    return hvp
