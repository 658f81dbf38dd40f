"""Cost of BiSSL's implicit-Jacobian solves over an upper stage.

``python -m bissl_dense.benchmarks.implicit``: ResNet-18 on 64×64 inputs, batches of 32
inputs: a SimCLR-style lower loss on 16 positive pairs (two views of 16 images, 3-layer
projector, NT-Xent; the Hessian batch, fixed for the stage) and a cross-entropy upper loss on
N_U = 8 batches of 32 images (the stage's 8 right-hand sides v_k = ∇_θ L_D(θ_L) on batch k).
Prints, and optionally writes as JSON:

* seconds **per upper step** (median over repetitions, the cases interleaved since the machines
  are noisy) of the implicit-Jacobian solve, for
  - ``reference (K recomputed products)``: the BiSSL reference's solve as its ``cg_solver``
    computes it (x = 0 and r = v given, so K products; layer-wise CG scalars with 1e-12 guards;
    every product recomputes the forward pass and first-order graph: SPEC §3), the baseline
    of every "× reference" figure;
  - ``per_step/<hvp>``: one solve that builds everything itself (``per_step/recompute`` is
    global CG on K recomputed products);
  - ``stage/<hvp>[/<solver>]``: a whole stage (``begin_stage``, 8 solves, ``end_stage``) of
    :class:`~bissl_dense.core.implicit.ImplicitSolver` divided by 8 (graph / base gradient
    built once per stage; global CG unless named: ``minres`` is BiSSLConfig's default solver,
    ``jvp`` forward-over-reverse products, ``recycled`` K products for the first solve and 1
    for each later one);
  each as a ratio to ``per_step/recompute``, to the reference's solve and in gradients of the
  lower loss;
* one product alone, exact (a double backward through a held graph), forward-over-reverse
  (``jvp``) and recomputed (forward pass, first-order graph, double backward): the exact/recompute
  ratio is the floor of the exact mode against the recompute baseline, since an exact stage still
  pays one double backward per product;
* the rest of a BiSSL upper step (``BilevelStep.upper_step`` without its solve: the upper loss's
  gradients at θ_U and at θ_L, the SGD step) and one plain fine-tuning step (ResNet-18 + linear
  head, SGD); the full upper step (rest + solve) in fine-tuning steps for every mode;
* the relative residual ||(I + H/(λ+δ)) x − v|| / ||v|| (exact products) of every mode's
  solutions (mean and max over the stage's first ``--quality-solves`` solves), for CG (global,
  layer-wise), MINRES, warm-started CG/MINRES and the recycled solver at equal K, and the
  distance of each solution and of the resulting upper backbone gradient x + ∇_θU L_D to those
  of a long MINRES solve (the stage's first solve);
* the amortised exact stage against the per-step exact solve (the stage's first and last
  solve), the reference's solve against bissl's ``cg="layerwise"``, jvp against exact, and the
  error of one
  finite-difference product (forward and central).

Peak memory is the CUDA allocator's peak on ``--device cuda``; on the CPU it is the peak resident
set size above the level before the measured call, sampled every 5 ms by a thread.
``stage_graph_mib`` is what the exact mode holds during a stage (its first-order graph).

For larger runs (``bissl_dense.benchmarks.device_check`` on a GPU): ``--arch`` (both levels'
ResNet), ``--autocast bfloat16`` (the upper loss's forward passes of ``finetune_step`` and
``upper_step_without_solve`` under ``BiSSLConfig(autocast=...)``; the products stay float32),
``--cases`` (time only the named solves besides the baselines) and ``--no-quality`` (timings only).
"""

from __future__ import annotations

import argparse
import json
import statistics
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call

from bissl_dense.core import (
    BilevelStep,
    BiSSLConfig,
    implicit_jacobian_product,
    make_hvp,
    prefix_correspondence,
)
from bissl_dense.core.bilevel import restored_buffers
from bissl_dense.core.implicit import ImplicitSolver
from bissl_dense.fileio import atomic_write_text
from bissl_dense.pretext.backbones import build_backbone
from bissl_dense.pretext.methods import SimCLR


class _PeakMemory:
    """Peak memory above the starting level during a ``with`` block, in MiB."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.peak_mib = 0.0

    @staticmethod
    def _rss_bytes() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * 4096

    def __enter__(self) -> _PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._start = torch.cuda.memory_allocated(self.device)
        else:
            self._start = self._rss_bytes()
            self._peak = self._start
            self._stop = threading.Event()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.is_set():
            self._peak = max(self._peak, self._rss_bytes())
            time.sleep(0.005)  # ample for calls that last seconds; less GIL contention

    def __exit__(self, *exc: object) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            peak = torch.cuda.max_memory_allocated(self.device)
        else:
            self._stop.set()
            self._thread.join()
            peak = max(self._peak, self._rss_bytes())
        self.peak_mib = (peak - self._start) / 2**20


class _Classifier(nn.Module):
    def __init__(self, cifar_stem: bool, num_classes: int = 10, arch: str = "resnet18") -> None:
        super().__init__()
        self.backbone, dim = build_backbone(arch, cifar_stem=cifar_stem)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.backbone(x))


def _timed(fn: Callable[[], Any], device: torch.device) -> tuple[float, float, Any]:
    with _PeakMemory(device) as memory:
        start = time.perf_counter()
        out = fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - start
    return seconds, memory.peak_mib, out


def _flat(tensors: list[Tensor]) -> Tensor:
    return torch.cat([t.reshape(-1) for t in tensors])


def _rel(a: list[Tensor], b: list[Tensor]) -> float:
    fa, fb = _flat(a), _flat(b)
    return ((fa - fb).norm() / fb.norm()).item()


def _graph_mib(fn: Callable[[], Any], exclude: list[Tensor]) -> tuple[float, Any]:
    """MiB of the tensors autograd saves for backward while ``fn`` runs (each storage once,
    parameters in ``exclude`` not counted): what a retained graph keeps allocated. Measured by
    counting, not by the allocator, so it is exact on the CPU too."""
    seen: set[int] = {t.untyped_storage().data_ptr() for t in exclude}
    total = 0

    def pack(t: Tensor) -> Tensor:
        nonlocal total
        storage = t.untyped_storage()
        if storage.data_ptr() not in seen:
            seen.add(storage.data_ptr())
            total += storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return total / 2**20, out


def run(
    device: str = "cpu",
    batch: int = 32,
    size: int = 64,
    repeats: int = 3,
    iters: int = 5,
    cifar_stem: bool = False,
    seed: int = 0,
    with_central: bool = False,
    upper_steps: int = 8,
    reference_iters: int = 20,
    quality_solves: int = 4,
    pretrain_steps: int = 0,
    quality_only: bool = False,
    arch: str = "resnet18",
    autocast: str | None = None,
    only_cases: list[str] | None = None,
    quality: bool = True,
) -> dict[str, Any]:
    """Run the benchmark; ``quality_only`` skips every timing and reports only the solutions'
    quality (residuals and errors against the converged reference, one pass of each solver).

    ``arch``: the ResNet of both levels. ``autocast`` (``"bfloat16"``): the upper loss's forward
    passes in ``finetune_step`` and ``upper_step_without_solve`` run under
    ``BiSSLConfig(autocast=...)``, as a BiSSL stage runs them; the products, hence every solve,
    stay float32 whatever the setting (core/hvp.py disables autocast). ``only_cases``: time only
    these solves besides the baselines every ratio needs (``_BASELINE_CASES``); figures that need
    an absent case are left out. ``quality=False``: timings only (no residuals or errors).
    """
    dev = torch.device(device)
    torch.manual_seed(seed)
    lower = SimCLR(backbone=dict(arch=arch, cifar_stem=cifar_stem)).to(dev).train()
    pretrain_losses = _pretrain(lower, pretrain_steps, batch, size, dev) if pretrain_steps else []
    upper = _Classifier(cifar_stem, arch=arch).to(dev).train()
    upper.backbone.load_state_dict(lower.backbone.state_dict())
    # `batch` inputs per forward pass, as SimCLR-style positive pairs: two noisy views of the
    # same batch/2 images, one of them mirrored.
    if batch < 2 or batch % 2:
        raise ValueError(f"--batch must be an even number >= 2 (two views per image), got {batch}")
    base = torch.randn(batch // 2, 3, size, size, device=dev)
    views = (base + 0.3 * torch.randn_like(base), base.flip(-1) + 0.3 * torch.randn_like(base))
    upper_batches = [
        (
            torch.randn(batch, 3, size, size, device=dev),
            torch.randint(0, 10, (batch,), device=dev),
        )
        for _ in range(upper_steps)
    ]
    params = list(lower.backbone.parameters())
    buffers = list(lower.buffers())
    buffer_snapshot = [b.clone() for b in buffers]

    def upper_loss(b: tuple[Tensor, Tensor], backbone: dict[str, Tensor] | None) -> Tensor:
        x, y = b
        logits = upper(x) if backbone is None else functional_call(upper, backbone, (x,))
        return nn.functional.cross_entropy(logits, y)

    upper_backbone = list(upper.backbone.parameters())
    rhs = [list(torch.autograd.grad(upper_loss(b, None), upper_backbone)) for b in upper_batches]
    # ∇_θU L_D at the same weights: the second term of the upper backbone gradient (SPEC §2)
    direct = rhs  # θ_U = θ_L here, so both terms are evaluated at the same point
    config = BiSSLConfig(cg_iters=iters, upper_steps=upper_steps, autocast=autocast)
    step = BilevelStep(
        lower_model=lower,
        lower_backbone=lower.backbone,
        upper_model=upper,
        correspondence=prefix_correspondence(lower.backbone, "backbone."),
        lower_loss=lambda pair: lower.pretext_loss(*pair),
        upper_loss=upper_loss,
        lower_optimizer=torch.optim.SGD(lower.parameters(), lr=0.0),
        upper_optimizer=torch.optim.SGD(upper.parameters(), lr=0.0, momentum=0.9),
        config=config,
    )  # lr 0: repeated steps time the same computation on unchanged weights
    finetune_optimizer = torch.optim.SGD(upper.parameters(), lr=0.0, momentum=0.9)
    hessian_loss = lambda: lower.pretext_loss(*views)  # noqa: E731
    common = dict(lam=config.lam, damping=config.damping, iters=iters)

    def gradient() -> list[Tensor]:
        return list(torch.autograd.grad(hessian_loss(), params))

    def finetune_step() -> None:
        finetune_optimizer.zero_grad(set_to_none=True)
        with step.autocast():  # --autocast: the forward pass as fine-tuning in that precision
            loss = upper_loss(upper_batches[0], None)
        loss.backward()
        finetune_optimizer.step()

    counter = {"step": 0}

    def per_step(hvp: str, k: int | None = None) -> Callable[[], list[Tensor]]:
        hvp, scheme = ("exact", "forward") if hvp == "exact_at" else (hvp, "forward")

        def solve() -> list[Tensor]:  # the k-th right-hand side, rotating over repetitions
            v = rhs[counter["step"] % upper_steps if k is None else k]
            return implicit_jacobian_product(
                hessian_loss, params, v, hvp=hvp, buffers=buffers, fd_scheme=scheme, **common
            )

        return solve

    def reference_scheme() -> list[Tensor]:
        """The reference's solve as its ``cg_solver`` computes it, written out here: x = 0 and
        r = v taken as given (no product for the first residual), K products, each recomputing
        the forward pass and first-order graph, layer-wise scalars with 1e-12 added to their
        denominators, ``nan_to_num`` of the result: K products per upper step (SPEC §3)."""
        v = rhs[counter["step"] % upper_steps]
        hvp = make_hvp(hessian_loss, params, "recompute")
        scale = 1.0 / (config.lam + config.damping)
        x = [torch.zeros_like(t) for t in v]
        r = [t.clone() for t in v]
        d = [t.clone() for t in v]
        rr = [torch.sum(t * t) for t in r]
        try:
            for _ in range(iters):
                ad = [di + scale * h for di, h in zip(d, hvp(d), strict=True)]
                alpha = [
                    a / (torch.sum(di * adi) + 1e-12) for a, di, adi in zip(rr, d, ad, strict=True)
                ]
                x = [xi + a * di for xi, a, di in zip(x, alpha, d, strict=True)]
                r = [ri - a * adi for ri, a, adi in zip(r, alpha, ad, strict=True)]
                rr_new = [torch.sum(t * t) for t in r]
                d = [
                    ri + (n / (o + 1e-12)) * di
                    for ri, n, o, di in zip(r, rr_new, rr, d, strict=True)
                ]
                rr = rr_new
            return [torch.nan_to_num(t) for t in x]
        finally:
            with torch.no_grad():  # its forward passes updated the BatchNorm statistics K times
                for b, saved in zip(buffers, buffer_snapshot, strict=True):
                    b.copy_(saved)

    def stage(**options: Any) -> Callable[..., list[list[Tensor]]]:
        def solve_stage(keep: bool = False) -> list[list[Tensor]]:
            """The stage's solves; timed with ``keep=False``: an upper step consumes its solution
            and drops it, whereas holding all N_U of them (N_U model-sized vectors of fresh
            memory) added 0.1-0.3 s per upper step on the CPU (page faults), measured."""
            solver = ImplicitSolver(**common, **options)
            solver.begin_stage(hessian_loss, params, buffers, lower)
            solutions = []
            for v in rhs:
                x = solver.solve(v)
                if keep:
                    solutions.append(x)
            solver.end_stage()
            return solutions

        return solve_stage

    theta_u_and_head = list(upper.parameters())
    upper_names = step.correspondence.upper_names

    def upper_rest() -> None:
        """BilevelStep.upper_step without its solve: the upper loss's gradients at θ_U and at θ_L
        (lower backbone substituted, buffers restored), the sums, the SGD step."""
        b = upper_batches[0]
        with step.autocast():  # BilevelStep.upper_step's precision for the forward passes
            loss = upper_loss(b, None)
        grads = torch.autograd.grad(loss, theta_u_and_head)
        with restored_buffers(upper), step.autocast():
            substituted = upper_loss(b, dict(zip(upper_names, params, strict=True)))
        lower_grads = torch.autograd.grad(substituted, params + list(upper.head.parameters()))
        n = len(params)
        total = [g + h for g, h in zip(grads[n:], lower_grads[n:], strict=True)]
        for p, g in zip(theta_u_and_head, list(grads[:n]) + total, strict=True):
            p.grad = g
        step.upper_optimizer.step()

    cases: dict[str, tuple[Callable[..., Any], int]] = {  # name: (call, upper steps it covers)
        "gradient": (gradient, 1),
        "finetune_step": (finetune_step, 1),
        "reference (K recomputed products)": (reference_scheme, 1),
        "per_step/recompute": (per_step("recompute"), 1),
        "per_step/exact": (per_step("exact"), 1),
        "per_step/finite_difference": (per_step("finite_difference"), 1),
        "stage/exact": (stage(hvp="exact"), upper_steps),
        "stage/finite_difference": (stage(hvp="finite_difference"), upper_steps),
        "stage/exact/minres": (stage(hvp="exact", solver="minres"), upper_steps),
        "stage/jvp/minres": (stage(hvp="jvp", solver="minres"), upper_steps),
        "stage/finite_difference/minres": (
            stage(hvp="finite_difference", solver="minres"),
            upper_steps,
        ),
        "stage/exact/recycled": (stage(hvp="exact", solver="recycled"), upper_steps),
        "upper_step_without_solve": (upper_rest, 1),
    }
    if with_central:
        cases["stage/finite_difference_central"] = (
            stage(hvp="finite_difference", fd_scheme="central"),
            upper_steps,
        )
    if only_cases is not None:  # --cases: fewer solves to time (a short run on a large model)
        unknown = sorted(set(only_cases) - set(cases))
        if unknown:
            raise ValueError(f"--cases: unknown {unknown}; the cases are {list(cases)}")
        cases = {k: v for k, v in cases.items() if k in _BASELINE_CASES or k in only_cases}

    result: dict[str, Any] = {
        "setup": dict(
            device=device,
            arch=arch,
            autocast=autocast,
            cases=list(cases),
            batch=batch,
            image_size=size,
            repeats=0 if quality_only else repeats,
            cg_iters=iters,
            upper_steps=upper_steps,
            lam=config.lam,
            damping=config.damping,
            default_solver=config.solver,
            pretrain_steps=pretrain_steps,
            pretrain_loss_first_last=pretrain_losses[:1] + pretrain_losses[-1:],
            threads=torch.get_num_threads(),
        )
    }
    outputs: dict[str, Any] = {}
    if quality_only:  # one untimed pass of the solves whose quality is reported
        outputs = {name: cases[name][0](keep=True) for name in _QUALITY_CASES if name in cases}
    else:
        # Warm-up with the cheap cases only (thread pools, allocator, convolution primitives for
        # these shapes): a full round of the expensive ones would cost as much as a repetition,
        # and the medians over interleaved repetitions absorb what is left of first-call costs.
        gradient()
        finetune_step()
        seconds: dict[str, list[float]] = {k: [] for k in cases}
        memory: dict[str, list[float]] = {k: [] for k in cases}
        for rep in range(repeats):
            counter["step"] = rep
            order = list(cases) if rep % 2 == 0 else list(reversed(cases))  # interleaved
            for name in order:
                call, steps = cases[name]
                s, m, out = _timed(call, dev)
                seconds[name].append(s / steps)
                memory[name].append(m)
                if rep == 0:
                    outputs[name] = out
            print(f"  repetition {rep + 1}/{repeats} done", flush=True)
        # the stages' solutions for the quality figures: one more, untimed pass of each
        if quality:
            outputs.update(
                {name: cases[name][0](keep=True) for name in cases if name.startswith("stage/")}
            )
        med = {k: statistics.median(v) for k, v in seconds.items()}
        base_time = med["per_step/recompute"]
        ij_cases = [k for k in cases if k.startswith(("reference", "per_step/", "stage/"))]
        reference_time = med["reference (K recomputed products)"]
        result.update(
            {
                "median_seconds_per_upper_step": med,
                "peak_memory_mib": {k: max(v) for k, v in memory.items()},
                "ratio_to_recompute": {k: med[k] / base_time for k in ij_cases},
                "ratio_to_reference": {k: med[k] / reference_time for k in ij_cases},
                "gradients_per_upper_step": {k: med[k] / med["gradient"] for k in ij_cases},
            }
        )
        # The full BiSSL upper step in fine-tuning steps, for each way of solving: the measured
        # upper step without its solve plus the measured solve.
        rest = med["upper_step_without_solve"]
        result["bissl_upper_step_over_finetune_step"] = {
            k: (rest + med[k]) / med["finetune_step"] for k in ij_cases
        }
        result["one_product_seconds"] = _one_product_seconds(
            hessian_loss, params, rhs, repeats, lower
        )
        floor = result["one_product_seconds"]
        # K exact products cost K double backwards however the graph is amortised: against K
        # recomputed products the exact mode cannot go below this ratio
        result["exact_floor_ratio_to_recompute"] = floor["exact"] / floor["recompute"]
        for buffer, saved in zip(buffers, buffer_snapshot, strict=True):
            buffer.copy_(saved)  # the recomputed products' forward passes updated them
    graph_mib, exact_solver = _graph_mib(
        lambda: _begun(ImplicitSolver(**common, hvp="exact"), hessian_loss, params, buffers),
        list(lower.parameters()),
    )
    result["stage_graph_mib"] = graph_mib
    if not quality:  # --no-quality: the timings and the graph's size only
        exact_solver.end_stage()
        return result

    # Solution quality (not timed): residuals with exact products, and the distance to a
    # converged solve. A residual above 1 means the solve did worse than x = 0: the system is
    # indefinite (H has eigenvalues below −(λ+δ)) and CG is not made for it.
    solutions: dict[str, list[list[Tensor]]] = {
        name: outputs[case][:quality_solves] if case.startswith("stage/") else [outputs[case]]
        for name, case in {
            "cg/global (per_step/recompute)": "per_step/recompute",
            "cg/global (stage/exact)": "stage/exact",
            "cg/global (stage/finite_difference)": "stage/finite_difference",
            "recycled (stage/exact/recycled)": "stage/exact/recycled",
        }.items()
        if case in outputs
    }
    for name, options in {
        "cg/layerwise": dict(cg="layerwise"),
        "cg/global/warm_start": dict(warm_start=True),
        "minres/warm_start": dict(solver="minres", warm_start=True),
    }.items():
        solver = _begun(
            ImplicitSolver(**common, hvp="exact", **options), hessian_loss, params, buffers
        )
        solutions[name], cold = [], []
        for v in rhs[:quality_solves]:
            solutions[name].append(solver.solve(v))
            cold.append(solver.last_unwarmed)
        solver.end_stage()
        if name == "minres/warm_start":
            solutions["minres"] = cold  # the same solves before the warm-start combination
    reference = ImplicitSolver(**{**common, "iters": reference_iters}, hvp="exact", solver="minres")
    reference.begin_stage(hessian_loss, params, buffers)
    checked = [0]  # the stage's first solve
    converged = {k: reference.solve(rhs[k]) for k in checked}
    reference.end_stage()
    result["relative_residual"] = {}
    result["relative_error_to_converged"] = {}
    result["upper_gradient_relative_error"] = {}
    for name, xs in solutions.items():
        residuals = [
            exact_solver.relative_residual(x, v).item() for x, v in zip(xs, rhs, strict=False)
        ]
        result["relative_residual"][name] = dict(
            mean=statistics.mean(residuals), max=max(residuals)
        )
        ks = [k for k in checked if k < len(xs)]
        errors = [_rel(xs[k], converged[k]) for k in ks]
        result["relative_error_to_converged"][name] = statistics.mean(errors)
        upper_errors = [
            _rel(
                [a + d for a, d in zip(xs[k], direct[k], strict=True)],
                [a + d for a, d in zip(converged[k], direct[k], strict=True)],
            )
            for k in ks
        ]
        result["upper_gradient_relative_error"][name] = statistics.mean(upper_errors)
    result["relative_residual"][f"minres K={reference_iters} (the reference)"] = max(
        exact_solver.relative_residual(c, rhs[k]).item() for k, c in converged.items()
    )
    result["relative_residual"]["x = 0"] = 1.0
    result["relative_error"] = {}
    if not quality_only:
        # each comparison where its cases were timed (--cases may leave some out)
        comparisons: dict[str, tuple[tuple[str, ...], Callable[[], float]]] = {
            "per_step/exact_vs_recompute": (
                ("per_step/exact",),
                lambda: _rel(outputs["per_step/exact"], outputs["per_step/recompute"]),
            ),
            # the amortised graph against today's per-step exact solve, at the stage's first and
            # last solve (the last has reused the graph for (N_U − 1)·K products)
            "stage/exact_vs_per_step/exact (solves 1 and N_U, max)": (
                ("stage/exact",),
                lambda: max(
                    _rel(outputs["stage/exact"][k], per_step("exact_at", k)())
                    for k in (0, upper_steps - 1)
                ),
            ),
            # the reference's solve, written out above, against bissl's cg="layerwise" (its
            # reproduction: the same guards, on exact products through the stage's graph)
            "reference_vs_cg/layerwise (solve 1)": (
                (),
                lambda: _rel(
                    outputs["reference (K recomputed products)"], solutions["cg/layerwise"][0]
                ),
            ),
            "stage/jvp_vs_exact (minres, mean)": (
                ("stage/jvp/minres", "stage/exact/minres"),
                lambda: statistics.mean(
                    _rel(a, b)
                    for a, b in zip(
                        outputs["stage/jvp/minres"], outputs["stage/exact/minres"], strict=True
                    )
                ),
            ),
            "stage/finite_difference_vs_exact (mean)": (
                ("stage/finite_difference", "stage/exact"),
                lambda: statistics.mean(
                    _rel(a, b)
                    for a, b in zip(
                        outputs["stage/finite_difference"], outputs["stage/exact"], strict=True
                    )
                ),
            ),
        }
        result["relative_error"] = {
            name: figure()
            for name, (needs, figure) in comparisons.items()
            if all(case in outputs for case in needs)
        }
    hv_exact = _flat(make_hvp(hessian_loss, params, "exact")(rhs[0]))
    result["product_relative_error"] = {}
    for scheme in ("forward", "central"):
        hv = _flat(make_hvp(hessian_loss, params, "finite_difference", fd_scheme=scheme)(rhs[0]))
        result["product_relative_error"][f"finite_difference_{scheme}_vs_exact"] = (
            (hv - hv_exact).norm() / hv_exact.norm()
        ).item()
    exact_solver.end_stage()
    for buffer, saved in zip(buffers, buffer_snapshot, strict=True):
        buffer.copy_(saved)
    return result


def _one_product_seconds(
    loss_fn: Callable[[], Tensor],
    params: list[Tensor],
    rhs: list[list[Tensor]],
    repeats: int,
    module: nn.Module,
) -> dict[str, float]:
    """Median seconds of one product: ``exact`` a double backward through a held first-order
    graph (what each product of an exact stage costs), ``jvp`` a forward-over-reverse product
    (no held graph), ``recompute`` a forward pass, first-order graph and double backward (the
    reference's product); interleaved."""
    products = {
        "exact": make_hvp(loss_fn, params, "exact"),
        "jvp": make_hvp(loss_fn, params, "jvp", module=module),
        "recompute": make_hvp(loss_fn, params, "recompute"),
    }
    device = params[0].device
    seconds: dict[str, list[float]] = {name: [] for name in products}
    for rep in range(max(3, repeats)):
        for name, product in products.items():
            start = time.perf_counter()
            product(rhs[rep % len(rhs)])
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            seconds[name].append(time.perf_counter() - start)
    return {k: statistics.median(v) for k, v in seconds.items()}


# What ``quality_only`` runs (once, untimed) before the solver comparison: the stage's global CG
# solves. The other solvers (layer-wise CG, MINRES, warm starts) are run by the comparison itself.
_QUALITY_CASES: tuple[str, ...] = ("stage/exact",)

# What every run times, whatever ``--cases`` names: the units and baselines of the ratios.
_BASELINE_CASES: frozenset[str] = frozenset(
    {
        "gradient",
        "finetune_step",
        "upper_step_without_solve",
        "per_step/recompute",
        "reference (K recomputed products)",
    }
)


def _pretrain(model: SimCLR, steps: int, batch: int, size: int, dev: torch.device) -> list[float]:
    """A backbone that has been trained on its pretext task (``--pretrain-steps``): SimCLR with
    SGD on fresh pairs of the benchmark's kind (two noisy views, one mirrored), so that H is
    taken near a trained point rather than at the random initialisation (issue 13, item 4).
    Returns the loss of every step."""
    losses: list[float] = []
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    for i in range(steps):
        base = torch.randn(batch // 2, 3, size, size, device=dev)
        pair = (base + 0.3 * torch.randn_like(base), base.flip(-1) + 0.3 * torch.randn_like(base))
        loss = model.pretext_loss(*pair)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        if i == 0 or (i + 1) % max(1, steps // 4) == 0:
            print(f"  pretraining step {i + 1}/{steps}: SimCLR loss {losses[-1]:.3f}", flush=True)
    return losses


def _begun(
    solver: ImplicitSolver,
    loss_fn: Callable[[], Tensor],
    params: list[Tensor],
    buffers: list,
    module: nn.Module | None = None,
) -> ImplicitSolver:
    solver.begin_stage(loss_fn, params, buffers, module)
    return solver


def _print_table(result: dict[str, Any]) -> None:
    setup = result["setup"]
    print(f"\nimplicit-Jacobian benchmark: {setup}")
    if "median_seconds_per_upper_step" in result:
        _print_timing(result)
    if "relative_residual" in result:  # not with --no-quality
        _print_quality(result)


def _print_timing(result: dict[str, Any]) -> None:
    print(
        f"{'case (per upper step)':34s} {'median s':>10s} {'peak MiB':>10s} {'x gradient':>11s} "
        f"{'x recompute':>12s} {'x reference':>12s}"
    )
    med = result["median_seconds_per_upper_step"]
    for name, s in med.items():
        ratio = result["ratio_to_recompute"].get(name)
        reference = result.get("ratio_to_reference", {}).get(name)
        print(
            f"{name:34s} {s:10.4f} {result['peak_memory_mib'][name]:10.1f} "
            f"{s / med['gradient']:11.2f} {'' if ratio is None else f'{ratio:12.3f}'}"
            f" {'' if reference is None else f'{reference:12.3f}'}"
        )
    print(
        "exact mode holds its first-order graph during a stage: "
        f"{result['stage_graph_mib']:.1f} MiB"
    )
    product = result["one_product_seconds"]
    print(
        f"one product: exact (double backward through a held graph) {product['exact']:.4f} s, "
        f"jvp (forward-over-reverse) {product['jvp']:.4f} s, recomputed "
        f"{product['recompute']:.4f} s: the exact mode's floor is "
        f"{result['exact_floor_ratio_to_recompute']:.3f} x recompute"
    )
    print("BiSSL upper step / fine-tuning step:")
    for name, r in result["bissl_upper_step_over_finetune_step"].items():
        print(f"  {name:44s} {r:8.2f}")


def _print_quality(result: dict[str, Any]) -> None:
    print(
        f"{'solutions (K equal)':40s} {'residual mean':>14s} {'max':>10s} {'err vs ref.':>13s} "
        f"{'upper grad err':>15s}"
    )
    for name, res in result["relative_residual"].items():
        if isinstance(res, dict):
            print(
                f"{name:40s} {res['mean']:14.3e} {res['max']:10.3e} "
                f"{result['relative_error_to_converged'][name]:13.3e} "
                f"{result['upper_gradient_relative_error'][name]:15.3e}"
            )
        else:
            print(f"{name:40s} {res:14.3e}")
    for name, err in result["relative_error"].items():
        print(f"relative error {name:50s} {err:.3e}")
    for name, err in result["product_relative_error"].items():
        print(f"one product: relative error {name:40s} {err:.3e}")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--batch",
        type=int,
        default=32,
        help="inputs per forward pass: batch/2 images x 2 views for the lower loss, batch "
        "images for the upper loss (default 32)",
    )
    parser.add_argument("--size", type=int, default=64, help="image side in pixels (default 64)")
    parser.add_argument("--repeats", type=int, default=3, help="repetitions (default 3)")
    parser.add_argument("--iters", type=int, default=5, help="CG iterations K (default 5)")
    parser.add_argument("--cifar-stem", action="store_true", help="3x3 stem, no max-pool")
    parser.add_argument("--upper-steps", type=int, default=8, help="N_U solves per stage")
    parser.add_argument(
        "--reference-iters", type=int, default=20, help="MINRES iterations of the reference solve"
    )
    parser.add_argument(
        "--quality-solves",
        type=int,
        default=4,
        help="solves of the stage whose residuals are reported (one exact product each)",
    )
    parser.add_argument(
        "--with-central", action="store_true", help="also time central finite differences"
    )
    parser.add_argument(
        "--pretrain-steps",
        type=int,
        default=0,
        help="train the lower SimCLR model this many steps first (H near a trained point)",
    )
    parser.add_argument(
        "--quality-only",
        action="store_true",
        help="skip the timings: only the solutions' residuals and errors (one pass each)",
    )
    parser.add_argument("--arch", default="resnet18", help="ResNet of both levels (resnet18)")
    parser.add_argument(
        "--autocast",
        choices=["bfloat16"],
        help="upper-loss forward passes of finetune_step and upper_step_without_solve under "
        "BiSSLConfig(autocast=...) (the products stay float32)",
    )
    parser.add_argument(
        "--cases",
        help="comma-separated solves to time (e.g. stage/exact/minres,stage/jvp/minres); the "
        "baselines (gradient, finetune_step, upper_step_without_solve, per_step/recompute, the "
        "reference) are always timed",
    )
    parser.add_argument(
        "--no-quality", action="store_true", help="timings only: skip the solutions' quality"
    )
    parser.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    args = parser.parse_args(argv)
    result = run(
        args.device,
        args.batch,
        args.size,
        args.repeats,
        args.iters,
        args.cifar_stem,
        with_central=args.with_central,
        upper_steps=args.upper_steps,
        reference_iters=args.reference_iters,
        quality_solves=args.quality_solves,
        pretrain_steps=args.pretrain_steps,
        quality_only=args.quality_only,
        arch=args.arch,
        autocast=args.autocast,
        only_cases=None if args.cases is None else [c for c in args.cases.split(",") if c],
        quality=not args.no_quality,
    )
    _print_table(result)
    if args.json is not None:
        atomic_write_text(args.json, json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
