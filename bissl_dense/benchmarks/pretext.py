"""Pretext throughput: augmentation per core, SimCLR step through our stack, precision/layout.

1. **Augmentation** (always): two-view ``PretextAugmentation`` images per second on one core
   (``torch.set_num_threads(1)``, one process), before (:func:`previous_augmentation`,
   torchvision's transforms on PIL images) and after
   (:class:`~bissl_dense.pretext.transforms.PretextView`), interleaved.
2. **Model step, precision and memory layout** (``--device cuda``): images per second of a plain
   SimCLR training step on generated tensors (no data loading) in float32 and bf16 autocast, each
   with and without channels-last (``build_backbone(channels_last=True)``).
3. **Stack vs. hand-written loop** (unless ``--skip-stack``), as follows.

Ours: mmengine ``Runner`` with :class:`~bissl_dense.pretext.methods.SimCLR`, the LARS optimizer
wrapper, ``ResumableTrainLoop``, ``SeededSampler`` and ``PretextImageFolder`` (per-draw seeded
augmentation), all hooks of a training run except checkpointing/export.
Baseline: the same backbone, projector, loss, LARS, batch and augmentation in a plain
``DataLoader`` + ``loss.backward(); opt.step()`` loop.

Both run in one process, interleaved in blocks (so machine load affects both alike); the table
shows median seconds per step (data loading included) and images per second, and the ratio
ours/baseline (target >= 0.9).

    python -m bissl_dense.benchmarks.pretext [--device cuda] [--arch resnet18] [--batch 64]
        [--iters N] [--image-size 96] [--workers 2] [--data DIR] [--aug-images N] [--skip-stack]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def _synchronize(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


class _PlainImages:
    """Minimal dataset of the baseline: open an image, make two views."""

    def __init__(self, files: Sequence[Path], augmentation: Any) -> None:
        self.files = list(files)
        self.augmentation = augmentation

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[Any, Any]:
        from PIL import Image

        with Image.open(self.files[index]) as image:
            return self.augmentation(image.convert("RGB"))


class HandWrittenLoop:
    """The baseline: a plain PyTorch SimCLR training loop."""

    def __init__(self, args: argparse.Namespace, data_root: Path, lr: float) -> None:
        import torch
        from torch.utils.data import DataLoader

        from bissl_dense.engine.datasets import find_images
        from bissl_dense.pretext import LARS, PretextAugmentation, ProjectionHead, build_backbone

        self.device = args.device
        self.backbone, feature_dim = build_backbone(args.arch)
        self.projector = ProjectionHead(feature_dim)
        self.backbone.to(self.device).train()
        self.projector.to(self.device).train()
        params = list(self.backbone.parameters()) + list(self.projector.parameters())
        self.optimizer = LARS(params, lr=lr, weight_decay=1e-6)
        dataset = _PlainImages(
            find_images(data_root), PretextAugmentation(image_size=args.image_size)
        )
        self.loader = DataLoader(
            dataset,
            batch_size=args.batch,
            shuffle=True,
            num_workers=args.workers,
            persistent_workers=args.workers > 0,
            pin_memory=self.device.startswith("cuda"),
            drop_last=True,
            generator=torch.Generator().manual_seed(0),
        )
        self.batches = iter(self.loader)
        self.warmup = args.warmup
        self.steps_done = 0
        self.step_times: list[float] = []

    def _next_batch(self) -> tuple[Any, Any]:
        try:
            return next(self.batches)
        except StopIteration:
            self.batches = iter(self.loader)
            return next(self.batches)

    def run(self, steps: int) -> None:
        """Take ``steps`` steps; the first ``warmup`` steps overall are not recorded."""
        from bissl_dense.pretext import nt_xent_loss

        for _ in range(steps):
            start = time.perf_counter()
            view1, view2 = self._next_batch()
            view1 = view1.to(self.device, non_blocking=True)
            view2 = view2.to(self.device, non_blocking=True)
            z1 = self.projector(self.backbone(view1))
            z2 = self.projector(self.backbone(view2))
            loss = nt_xent_loss(z1, z2, temperature=0.5)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            loss.item()  # both loops read the loss once per step (mmengine logs it)
            _synchronize(self.device)
            if self.steps_done >= self.warmup:
                self.step_times.append(time.perf_counter() - start)
            self.steps_done += 1


def _interleave_hook(baseline: HandWrittenLoop, args: argparse.Namespace) -> Any:
    from mmengine.hooks import Hook

    class InterleavedTimingHook(Hook):
        """Times our steps; after every block of them, runs a block of baseline steps."""

        priority = "LOWEST"  # after every other after_train_iter hook, which we include

        def __init__(self) -> None:
            self.step_times: list[float] = []
            self.started = 0.0
            self.pending = 0

        def before_train(self, runner: Any) -> None:
            self.started = time.perf_counter()

        def after_train_iter(self, runner: Any, batch_idx: int, **kwargs: Any) -> None:
            _synchronize(args.device)
            elapsed = time.perf_counter() - self.started
            if runner.iter >= args.warmup:  # runner.iter: 0-based index of the step just taken
                self.step_times.append(elapsed)
            self.pending += 1
            if self.pending == args.block or runner.iter + 1 == runner.max_iters:
                baseline.run(self.pending)
                self.pending = 0
            self.started = time.perf_counter()

    return InterleavedTimingHook()


def _runner_config(args: argparse.Namespace, data_root: Path, work_dir: Path) -> dict[str, Any]:
    return dict(
        model=dict(
            type="SimCLR",
            backbone=dict(arch=args.arch),
            projector=dict(hidden_dim=256, out_dim=256, num_layers=3),
            temperature=0.5,
        ),
        work_dir=str(work_dir),
        train_dataloader=dict(
            batch_size=args.batch,
            num_workers=args.workers,
            persistent_workers=args.workers > 0,
            pin_memory=args.device.startswith("cuda"),
            drop_last=True,
            sampler=dict(type="SeededSampler", shuffle=True),
            collate_fn=dict(type="default_collate"),
            dataset=dict(
                type="PretextImageFolder",
                data_root=str(data_root),
                augmentation=dict(image_size=args.image_size),
            ),
        ),
        optim_wrapper=dict(
            type="OptimWrapper", optimizer=dict(type="LARS", lr=args.lr, weight_decay=1e-6)
        ),
        train_cfg=dict(type="ResumableTrainLoop", max_iters=args.warmup + args.iters),
        default_hooks=dict(
            logger=dict(type="LoggerHook", interval=10**9),
            checkpoint=None,
        ),
        custom_hooks=[dict(type="PretextStepHook")],
        log_processor=dict(by_epoch=False),
        env_cfg=dict(cudnn_benchmark=args.device.startswith("cuda"), dist_cfg=dict(backend="gloo")),
        randomness=dict(seed=0),
        default_scope="mmengine",
        log_level="WARNING",
    )


def _table(rows: list[tuple[str, list[float]]], batch: int) -> str:
    lines = [f"{'loop':<28}{'median s/step':>15}{'images/s':>12}{'steps':>7}"]
    for name, times in rows:
        median = statistics.median(times)
        lines.append(f"{name:<28}{median:>15.4f}{batch / median:>12.1f}{len(times):>7}")
    return "\n".join(lines)


def run_benchmark(args: argparse.Namespace) -> dict[str, float]:
    import torch
    from mmengine.config import Config
    from mmengine.runner import Runner

    import bissl_dense.engine  # noqa: F401  registrations
    import bissl_dense.pretext.methods  # noqa: F401

    torch.manual_seed(0)
    with tempfile.TemporaryDirectory(prefix="bissl_bench_") as tmp:
        tmp_dir = Path(tmp)
        if args.data is None:
            from bissl_dense.datasets.synthetic import write_unlabeled

            data_root = tmp_dir / "images"
            write_unlabeled(data_root, n=2 * args.batch, size=max(args.image_size + 16, 48))
        else:
            data_root = Path(args.data)
        baseline = HandWrittenLoop(args, data_root, args.lr)
        cfg = Config(_runner_config(args, data_root, tmp_dir / "work"))
        runner = Runner.from_cfg(cfg)
        timing = _interleave_hook(baseline, args)
        runner.register_hook(timing)
        runner.train()
        ours = timing.step_times
        theirs = baseline.step_times
    print(
        f"SimCLR step, {args.arch}, batch {args.batch}, {args.image_size} px, device "
        f"{args.device}, {args.workers} workers, {torch.get_num_threads()} threads"
    )
    print(
        _table(
            [("bissl (mmengine runner)", ours), ("hand-written PyTorch loop", theirs)], args.batch
        )
    )
    ratio = statistics.median(theirs) / statistics.median(ours)
    print(f"throughput ratio ours / hand-written: {ratio:.3f} (target >= 0.9)")
    return {
        "ours_s_per_step": statistics.median(ours),
        "baseline_s_per_step": statistics.median(theirs),
        "ratio": ratio,
    }


def previous_augmentation(image_size: int = 96, **options: Any) -> Any:
    """The two-view augmentation as it was before issue 13's speed-up, for comparisons: each view
    a ``v2.Compose`` of torchvision's transforms on PIL images (crop, flip, jitter, grayscale,
    torchvision's ``GaussianBlur``, solarise), then ``ToImage → ToDtype → Normalize``. Same
    parameters, probabilities and random draws as :class:`PretextView`."""
    import torch
    from torchvision.transforms import v2

    from bissl_dense.pretext import PretextAugmentation

    aug = PretextAugmentation(image_size=image_size, **options)
    views = []
    for view in aug.view_transforms:
        jitter = view.jitter
        views.append(
            v2.Compose(
                [
                    view.crop,
                    v2.RandomHorizontalFlip(p=view.flip_p),
                    v2.RandomApply([jitter], p=view.jitter_p),
                    v2.RandomGrayscale(p=view.grayscale_p),
                    v2.RandomApply(
                        [v2.GaussianBlur(view.blur_kernel_size, sigma=view.blur_sigma)],
                        p=view.blur_p,
                    ),
                    v2.RandomSolarize(threshold=view.solarize_threshold, p=view.solarize_p),
                    v2.ToImage(),
                    v2.ToDtype(torch.float32, scale=True),
                    v2.Normalize(mean=view.mean.ravel().tolist(), std=view.std.ravel().tolist()),
                ]
            )
        )
    aug.view_transforms = tuple(views)  # type: ignore[assignment]
    return aug


def augmentation_benchmark(
    image_size: int, images: int, source_size: int = 160
) -> dict[str, float]:
    """Two-view augmentations per second on one core, old vs new, interleaved in blocks.

    Time is the process's CPU time (``time.process_time``; one thread: torch and, in the new
    pipeline, numpy's element-wise ops are single-threaded), so that other work on a shared
    machine does not count; wall-clock rates are printed beside it. ``source_size`` sets the
    generated source images (``source_size`` x ``source_size + 40``)."""
    import numpy as np
    import torch
    from PIL import Image

    from bissl_dense.pretext import PretextAugmentation

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    pictures = [
        Image.fromarray(rng.integers(0, 256, (source_size, source_size + 40, 3), dtype=np.uint8))
        for _ in range(16)
    ]
    pipelines = {"before": previous_augmentation(image_size),
                 "after": PretextAugmentation(image_size=image_size)}  # fmt: skip
    times: dict[str, list[float]] = {name: [] for name in pipelines}
    walls: dict[str, list[float]] = {name: [] for name in pipelines}
    block = 16
    try:
        for aug in pipelines.values():  # warm-up
            aug(pictures[0])
        for start in range(0, images, block):
            for name, aug in pipelines.items():
                t0, w0 = time.process_time(), time.perf_counter()
                for i in range(start, min(images, start + block)):
                    aug(pictures[i % len(pictures)])
                count = min(block, images - start)
                times[name].append((time.process_time() - t0) / count)
                walls[name].append((time.perf_counter() - w0) / count)
    finally:
        torch.set_num_threads(threads)
    rates = {name: 1.0 / statistics.median(t) for name, t in times.items()}
    wall_rates = {name: 1.0 / statistics.median(t) for name, t in walls.items()}
    print(
        f"two-view augmentation, {source_size}x{source_size + 40} source -> {image_size} px, "
        f"one core, {images} images each"
    )
    for name, rate in rates.items():
        print(
            f"  {name:<8}{rate:>10.1f} images/s per core (CPU time), "
            f"{wall_rates[name]:.1f} wall-clock"
        )
    speedup = rates["after"] / rates["before"]
    wall_speedup = wall_rates["after"] / wall_rates["before"]
    print(f"  speed-up: {speedup:.2f}x (CPU time), {wall_speedup:.2f}x wall-clock")
    return {**rates, "speedup": speedup, **{f"{k}_wall": v for k, v in wall_rates.items()}}


def precision_benchmark(
    args: argparse.Namespace, losses: dict[str, float] | None = None
) -> dict[str, float]:
    """Images/s of a plain SimCLR step in float32 / bf16 autocast, with/without channels-last.

    ``losses``, when given, receives each setting's loss at its last step (the device check
    requires them finite)."""
    import torch

    from bissl_dense.pretext import LARS, ProjectionHead, build_backbone, nt_xent_loss

    results: dict[str, float] = {}
    print(f"SimCLR step on {args.device}, {args.arch}, batch {args.batch}, {args.image_size} px")
    for dtype in (None, torch.bfloat16):
        for channels_last in (False, True):
            torch.manual_seed(0)
            backbone, dim = build_backbone(args.arch, channels_last=channels_last)
            projector = ProjectionHead(dim)
            backbone.to(args.device).train()
            projector.to(args.device).train()
            optimizer = LARS(list(backbone.parameters()) + list(projector.parameters()), lr=0.1)
            shape = (args.batch, 3, args.image_size, args.image_size)
            fmt = torch.channels_last if channels_last else torch.contiguous_format
            views = [torch.randn(shape, device=args.device).to(memory_format=fmt) for _ in "ab"]
            times = []
            for step in range(args.warmup + args.iters):
                start = time.perf_counter()
                with torch.autocast(
                    device_type=torch.device(args.device).type,
                    dtype=dtype or torch.float32,
                    enabled=dtype is not None,
                ):
                    z = [projector(backbone(v)) for v in views]
                    loss = nt_xent_loss(z[0].float(), z[1].float(), temperature=0.5)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                _synchronize(args.device)
                if step >= args.warmup:
                    times.append(time.perf_counter() - start)
            name = f"{'bf16' if dtype else 'fp32'}{' + channels-last' if channels_last else ''}"
            results[name] = args.batch / statistics.median(times)
            if losses is not None:
                losses[name] = loss.item()
            print(f"  {name:<28}{results[name]:>10.1f} images/s")
    return results


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bissl_dense.benchmarks.pretext", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--arch", default="resnet18")
    parser.add_argument("--batch", type=int, default=64, help="images per step (two views each)")
    parser.add_argument("--iters", type=int, default=8, help="measured steps per loop")
    parser.add_argument("--warmup", type=int, default=2, help="unmeasured steps per loop first")
    parser.add_argument("--block", type=int, default=2, help="steps per interleaved block")
    parser.add_argument("--image-size", type=int, default=96)
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers per loop")
    parser.add_argument("--lr", type=float, default=0.3)
    parser.add_argument("--data", help="image folder (default: generated images)")
    parser.add_argument(
        "--aug-images", type=int, default=160, help="images per pipeline, augmentation benchmark"
    )
    parser.add_argument(
        "--aug-source-size",
        type=int,
        default=160,
        help="generated source images for the augmentation benchmark: N x (N + 40) px",
    )
    parser.add_argument(
        "--skip-stack", action="store_true", help="skip the stack vs hand-written comparison"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.device == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = ""  # before torch initialises CUDA: runner on CPU
    for name in ("iters", "block", "batch"):
        if getattr(args, name) < 1:
            raise SystemExit(f"--{name} must be >= 1")
    augmentation_benchmark(args.image_size, args.aug_images, args.aug_source_size)
    if args.device.startswith("cuda"):
        precision_benchmark(args)
    else:
        print("bf16 / channels-last step throughput: run with --device cuda (GPU only)")
    if not args.skip_stack:
        run_benchmark(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
