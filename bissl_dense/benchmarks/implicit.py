"""Cost of BiSSL's implicit-Jacobian products: ``python -m bissl_dense.benchmarks.implicit``.

ResNet-18 on 64×64 inputs, batches of 32 inputs: a SimCLR-style lower loss on 16 positive pairs
(two views of 16 images, 3-layer projector, NT-Xent) and a cross-entropy upper loss on 32 images.
Prints, and optionally writes as JSON, the median seconds and peak memory of

* one gradient of the lower loss,
* one implicit-Jacobian product (K = 5) for each ``hvp`` × ``cg`` combination,
* one full BiSSL upper step and one plain fine-tuning step (ResNet-18 + linear head, SGD),

each as a ratio to ``hvp="recompute"`` (the authors' scheme) measured in the same run with the
modes interleaved, since the machines are noisy; plus ||x_fd − x_exact|| / ||x_exact|| and
||x_exact − x_recompute|| / ||x_recompute|| over all tensors, the relative CG residual
||(I + H/(λ+δ)) x − v|| / ||v|| of every solution, and the error of one finite-difference product
(forward and central) along the same v.

Peak memory is the CUDA allocator's peak on ``--device cuda``; on the CPU it is the peak resident
set size above the level before the measured call, sampled every 5 ms by a thread.
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
from bissl_dense.fileio import atomic_write_text
from bissl_dense.pretext.backbones import build_backbone
from bissl_dense.pretext.methods import SimCLR

HVP_MODES = ("recompute", "exact", "finite_difference")
CG_MODES = ("layerwise", "global")


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
    def __init__(self, cifar_stem: bool, num_classes: int = 10) -> None:
        super().__init__()
        self.backbone, dim = build_backbone("resnet18", cifar_stem=cifar_stem)
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


def run(
    device: str = "cpu",
    batch: int = 32,
    size: int = 64,
    repeats: int = 5,
    iters: int = 5,
    cifar_stem: bool = False,
    seed: int = 0,
    with_central: bool = False,
) -> dict[str, Any]:
    dev = torch.device(device)
    torch.manual_seed(seed)
    lower = SimCLR(backbone=dict(arch="resnet18", cifar_stem=cifar_stem)).to(dev).train()
    upper = _Classifier(cifar_stem).to(dev).train()
    upper.backbone.load_state_dict(lower.backbone.state_dict())
    # `batch` inputs per forward pass, as SimCLR-style positive pairs: two noisy views of the
    # same batch/2 images, one of them mirrored.
    if batch < 2 or batch % 2:
        raise ValueError(f"--batch must be an even number >= 2 (two views per image), got {batch}")
    base = torch.randn(batch // 2, 3, size, size, device=dev)
    views = (base + 0.3 * torch.randn_like(base), base.flip(-1) + 0.3 * torch.randn_like(base))
    images = torch.randn(batch, 3, size, size, device=dev)
    labels = torch.randint(0, 10, (batch,), device=dev)
    params = list(lower.backbone.parameters())
    buffers = list(lower.buffers())
    buffer_snapshot = [b.clone() for b in buffers]

    def upper_loss(b: tuple[Tensor, Tensor], backbone: dict[str, Tensor] | None) -> Tensor:
        x, y = b
        logits = upper(x) if backbone is None else functional_call(upper, backbone, (x,))
        return nn.functional.cross_entropy(logits, y)

    g_lower = torch.autograd.grad(
        upper_loss((images, labels), None), list(upper.backbone.parameters())
    )
    config = BiSSLConfig(cg_iters=iters)
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

    def gradient() -> list[Tensor]:
        return list(torch.autograd.grad(lower.pretext_loss(*views), params))

    def finetune_step() -> None:
        finetune_optimizer.zero_grad(set_to_none=True)
        upper_loss((images, labels), None).backward()
        finetune_optimizer.step()

    def product(hvp: str, cg: str, scheme: str = "forward") -> Callable[[], list[Tensor]]:
        return lambda: implicit_jacobian_product(
            lambda: lower.pretext_loss(*views),
            params,
            g_lower,
            lam=config.lam,
            damping=config.damping,
            iters=iters,
            cg=cg,
            hvp=hvp,
            buffers=buffers,
            fd_scheme=scheme,
        )

    cases: dict[str, Callable[[], Any]] = {"gradient": gradient}
    for cg in CG_MODES:
        for hvp in HVP_MODES:
            cases[f"ij/{hvp}/{cg}"] = product(hvp, cg)
        if with_central:
            cases[f"ij/finite_difference_central/{cg}"] = product(
                "finite_difference", cg, "central"
            )
    cases["bissl_upper_step"] = lambda: step.upper_step((images, labels), views)
    cases["finetune_step"] = finetune_step

    # Warm-up with the cheap cases only (thread pools, allocator, convolution primitives for these
    # shapes): a full round of the expensive ones would cost as much as a repetition, and the
    # medians over interleaved repetitions absorb what is left of first-call costs.
    gradient()
    finetune_step()
    seconds: dict[str, list[float]] = {k: [] for k in cases}
    memory: dict[str, list[float]] = {k: [] for k in cases}
    outputs: dict[str, Any] = {}
    for rep in range(repeats):
        order = list(cases) if rep % 2 == 0 else list(reversed(cases))  # interleaved
        for name in order:
            s, m, out = _timed(cases[name], dev)
            seconds[name].append(s)
            memory[name].append(m)
            outputs[name] = out
        print(f"  repetition {rep + 1}/{repeats} done", flush=True)

    med = {k: statistics.median(v) for k, v in seconds.items()}
    result: dict[str, Any] = {
        "setup": dict(
            device=device,
            arch="resnet18",
            batch=batch,
            image_size=size,
            repeats=repeats,
            cg_iters=iters,
            lam=config.lam,
            damping=config.damping,
            threads=torch.get_num_threads(),
        ),
        "median_seconds": med,
        "peak_memory_mib": {k: max(v) for k, v in memory.items()},
        "ratio_to_recompute": {},
        "gradients_per_product": {},
        "relative_error": {},
        "relative_residual": {},
        "product_relative_error": {},
    }
    for cg in CG_MODES:
        base = med[f"ij/recompute/{cg}"]
        for key in (k for k in cases if k.startswith("ij/") and k.endswith(f"/{cg}")):
            result["ratio_to_recompute"][key] = med[key] / base
            result["gradients_per_product"][key] = med[key] / med["gradient"]
        exact = _flat(outputs[f"ij/exact/{cg}"])
        result["relative_error"][f"finite_difference_vs_exact/{cg}"] = (
            (_flat(outputs[f"ij/finite_difference/{cg}"]) - exact).norm() / exact.norm()
        ).item()
        recompute = _flat(outputs[f"ij/recompute/{cg}"])
        result["relative_error"][f"exact_vs_recompute/{cg}"] = (
            (exact - recompute).norm() / recompute.norm()
        ).item()
    result["bissl_upper_step_over_finetune_step"] = med["bissl_upper_step"] / med["finetune_step"]

    # Solution quality without a reference solve: ||(I + H/(λ+δ)) x − v|| / ||v||, one exact
    # product per solution (not timed). A residual above 1 means K-step CG did worse than x = 0:
    # the system is indefinite (H has eigenvalues below −(λ+δ)), and then the difference between
    # two approximate solutions measures CG's sensitivity more than the products' accuracy,
    # so the accuracy of one finite-difference product is reported as well.
    loss_fn = lambda: lower.pretext_loss(*views)  # noqa: E731
    hvp = make_hvp(loss_fn, params, "exact")
    scale = 1.0 / (config.lam + config.damping)
    v = _flat(g_lower)
    for name, x in outputs.items():
        if name.startswith("ij/"):
            residual = _flat(x) + scale * _flat(hvp(x)) - v
            result["relative_residual"][name[3:]] = (residual.norm() / v.norm()).item()
    hv_exact = _flat(hvp(list(g_lower)))
    del hvp
    for scheme in ("forward", "central"):
        hv = _flat(make_hvp(loss_fn, params, "finite_difference", fd_scheme=scheme)(g_lower))
        result["product_relative_error"][f"finite_difference_{scheme}_vs_exact"] = (
            (hv - hv_exact).norm() / hv_exact.norm()
        ).item()
    for buffer, saved in zip(buffers, buffer_snapshot, strict=True):
        buffer.copy_(saved)
    return result


def _print_table(result: dict[str, Any]) -> None:
    setup = result["setup"]
    print(f"\nimplicit-Jacobian benchmark: {setup}")
    print(
        f"{'case':44s} {'median s':>10s} {'peak MiB':>10s} {'x gradient':>11s} {'x recompute':>12s}"
    )
    for name, s in result["median_seconds"].items():
        ratio = result["ratio_to_recompute"].get(name)
        print(
            f"{name:44s} {s:10.4f} {result['peak_memory_mib'][name]:10.1f} "
            f"{s / result['median_seconds']['gradient']:11.2f} "
            f"{'' if ratio is None else f'{ratio:12.3f}'}"
        )
    for name, err in result["relative_error"].items():
        print(f"relative error {name:40s} {err:.3e}")
    for name, res in result["relative_residual"].items():
        print(f"relative CG residual ||Ax - v||/||v|| {name:38s} {res:.3e}")
    for name, err in result["product_relative_error"].items():
        print(f"one product: relative error {name:40s} {err:.3e}")
    print(
        f"BiSSL upper step / fine-tuning step: {result['bissl_upper_step_over_finetune_step']:.2f}"
    )


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
    parser.add_argument("--repeats", type=int, default=5, help="repetitions, >= 5 for the targets")
    parser.add_argument("--iters", type=int, default=5, help="CG iterations K (default 5)")
    parser.add_argument("--cifar-stem", action="store_true", help="3x3 stem, no max-pool")
    parser.add_argument(
        "--with-central", action="store_true", help="also time central finite differences"
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
    )
    _print_table(result)
    if args.json is not None:
        atomic_write_text(args.json, json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
