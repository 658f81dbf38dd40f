"""Cost of BiSSL's steps through the mmengine stage vs a bare loop over ``BilevelTrainer``.

Ours: ``bissl train``'s runner on ``configs/classification/bissl_simclr_resnet18_synthetic.py``
(BiSSLLoop, all logging hooks, TensorBoard, data loaders on the BiSSL batch stacks).
Baseline: the same model, optimisers, schedules and batch sources driven by a plain
``while not trainer.done: trainer.train_step()``.

Both run in one process on generated data, one after the other, several times (the order
alternating between repeats);
the table gives the median seconds per lower step and per upper step (each measured from one
step's start to the next's, so hook and logging costs are included), the stage's overhead
(target ≤ 5 %), and the upper step's cost as a multiple of one plain fine-tuning step of the
classifier on the same batch.

    python -m bissl_dense.benchmarks.bissl_stage [--device cuda] [--arch resnet18]
        [--image-size 32] [--batch 16] [--alternations 2] [--repeats 4] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

CONFIG = (
    Path(__file__).resolve().parents[2]
    / "configs/classification/bissl_simclr_resnet18_synthetic.py"
)


def _options(args: argparse.Namespace, data: Path, work_dir: Path) -> dict[str, Any]:
    return {
        "train_dataloader.dataset.data_root": str(data / "labelled"),
        "train_dataloader.dataset.image_size": args.image_size,
        "train_dataloader.batch_size": args.batch,
        "train_dataloader.num_workers": args.workers,
        "pretext_dataloader.dataset.data_root": str(data / "unlabeled"),
        "pretext_dataloader.dataset.augmentation.image_size": args.image_size,
        "pretext_dataloader.batch_size": args.batch,
        "pretext_dataloader.num_workers": args.workers,
        "model.pretext.backbone.arch": args.arch,
        "model.task.backbone.arch": args.arch,
        "train_cfg.bissl.alternations": args.alternations,
        "train_cfg.bissl.lower_steps": args.lower_steps,
        "train_cfg.bissl.upper_steps": args.upper_steps,
        "train_cfg.bissl.cg_iters": args.cg_iters,
        "train_cfg.bissl.residual_every": 0,
        "train_cfg.val_interval": 0,
        "val_cfg": None,
        "val_dataloader": None,
        "val_evaluator": None,
        "default_hooks.checkpoint.interval": 10**9,
        "default_hooks.checkpoint.save_last": False,
        "default_hooks.logger.interval": 10,
        "custom_hooks": [],
        "work_dir": str(work_dir),
    }


def _phase_times(phases: list[str], stamps: list[float]) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {"lower": [], "upper": []}
    for phase, start, end in zip(phases, stamps, stamps[1:], strict=False):
        out[phase].append(end - start)
    return out


def run_stage(args: argparse.Namespace, data: Path, work_dir: Path) -> dict[str, list[float]]:
    """Time every step of the mmengine stage (from one step's start to the next's)."""
    from mmengine.hooks import Hook

    from bissl_dense.core import phase_of_step
    from bissl_dense.engine.runner import build_runner, load_config

    cfg = load_config(CONFIG, None, work_dir)
    cfg.merge_from_dict(_options(args, data, work_dir))
    cfg.env_cfg = dict(cfg.env_cfg, cudnn_benchmark=args.device.startswith("cuda"))
    runner = build_runner(cfg)
    stamps: list[float] = []
    phases: list[str] = []
    device = args.device

    class Stamp(Hook):
        priority = "HIGHEST"

        def before_train_iter(self, runner: Any, batch_idx: int, data_batch: Any = None) -> None:
            _synchronize(device)
            stamps.append(time.perf_counter())
            phases.append(phase_of_step(runner.iter, runner.train_loop.config)[0])

        def after_train(self, runner: Any) -> None:
            _synchronize(device)
            stamps.append(time.perf_counter())

    runner.register_hook(Stamp())
    runner.train()
    return _phase_times(phases, stamps)


def run_bare(args: argparse.Namespace, data: Path) -> tuple[dict[str, list[float]], list[float]]:
    """The same stage as a bare loop; also times plain fine-tuning steps of the classifier."""
    import torch
    from mmengine.registry import DATASETS, MODELS

    from bissl_dense.core import BilevelTrainer, BiSSLConfig, phase_of_step
    from bissl_dense.engine.bissl_loop import BiSSLOptimWrapperConstructor
    from bissl_dense.engine.runner import load_config
    from bissl_dense.stage import LevelOptimizers, batch_source, build_bilevel_step

    cfg = load_config(CONFIG, None, None)
    cfg.merge_from_dict(_options(args, data, Path(tempfile.gettempdir())))
    model = MODELS.build(cfg.model).to(args.device)
    wrappers = BiSSLOptimWrapperConstructor(cfg.optim_wrapper)(model)
    config = BiSSLConfig(**cfg.train_cfg.bissl)
    step = build_bilevel_step(
        model.task,
        model.lower,
        config,
        optimizers=LevelOptimizers(wrappers["lower"].optimizer, wrappers["upper"].optimizer),
        device=args.device,
    )

    def source(loader_cfg: Any, stage: int, seed: int) -> Any:
        return batch_source(
            DATASETS.build(loader_cfg.dataset),
            batch_size=loader_cfg.batch_size,
            stage_length=stage,
            seed=seed,
            num_workers=loader_cfg.num_workers,
            device=args.device,
        )

    trainer = BilevelTrainer(
        step,
        source(cfg.pretext_dataloader, config.lower_steps + 1, 0),
        source(cfg.train_dataloader, config.upper_steps, 1),
    )
    stamps, phases = [], []
    while not trainer.done:
        _synchronize(args.device)
        stamps.append(time.perf_counter())
        phases.append(phase_of_step(trainer.global_step, config)[0])
        trainer.train_step()
    _synchronize(args.device)
    stamps.append(time.perf_counter())

    # plain fine-tuning steps of the same classifier on upper batches
    classifier = model.upper
    optimizer = torch.optim.SGD(classifier.parameters(), lr=0.01, momentum=0.9)
    batches = source(cfg.train_dataloader, config.upper_steps, 2)(0)
    finetune = []
    classifier.train()
    for _ in range(max(4, config.upper_steps)):
        images, targets = next(batches)
        _synchronize(args.device)
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        classifier.loss_of(classifier(images, mode="tensor"), targets).backward()
        optimizer.step()
        _synchronize(args.device)
        finetune.append(time.perf_counter() - start)
    return _phase_times(phases, stamps), finetune[1:]


def _synchronize(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _median_after_warmup(values: list[float]) -> float:
    return statistics.median(values[1:] if len(values) > 2 else values)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--arch", default="resnet18")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--alternations", type=int, default=2)
    parser.add_argument("--lower-steps", type=int, default=3)
    parser.add_argument("--upper-steps", type=int, default=2)
    parser.add_argument("--cg-iters", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=4)
    parser.add_argument("--json", help="also write the figures to this JSON file")
    parser.add_argument("--data", help="generated data folder (default: a temporary one)")
    args = parser.parse_args(argv)

    import logging

    from mmengine.logging import MMLogger

    from bissl_dense.datasets.synthetic import write_imagefolder, write_unlabeled

    with tempfile.TemporaryDirectory() as tmp:
        data = Path(args.data) if args.data else Path(tmp) / "data"
        if not (data / "labelled").exists():
            size = max(args.image_size + 8, 40)
            write_imagefolder(data / "labelled", 10 * args.batch, num_classes=5, size=size)
            write_unlabeled(data / "unlabeled", 8 * args.batch, size=size)
        stage: dict[str, list[float]] = {"lower": [], "upper": []}
        bare: dict[str, list[float]] = {"lower": [], "upper": []}
        finetune: list[float] = []
        for repeat in range(args.repeats):
            # alternate the order, so that drifting machine speed does not favour one side
            if repeat % 2 == 0:
                b, f = run_bare(args, data)
                s = run_stage(args, data, Path(tmp) / f"work{repeat}")
            else:
                s = run_stage(args, data, Path(tmp) / f"work{repeat}")
                b, f = run_bare(args, data)
            MMLogger.get_current_instance().setLevel(logging.WARNING)
            for phase in ("lower", "upper"):
                stage[phase] += s[phase][1:]  # the first step of a run includes start-up
                bare[phase] += b[phase][1:]
            finetune += f
    figures: dict[str, Any] = {"settings": vars(args)}
    print(
        f"\nBiSSL stage vs bare BilevelTrainer loop ({args.arch}, {args.image_size} px, batch "
        f"{args.batch}, K={args.cg_iters}, device {args.device}); median seconds per step"
    )
    print("| step | mmengine stage | bare loop | overhead |\n|---|---|---|---|")
    for phase in ("lower", "upper"):
        ours, base = statistics.median(stage[phase]), statistics.median(bare[phase])
        overhead = ours / base - 1
        figures[phase] = {
            "stage_s": ours,
            "bare_s": base,
            "overhead": overhead,
            "samples": len(stage[phase]),
        }
        print(f"| {phase} | {ours:.4f} | {base:.4f} | {100 * overhead:+.1f} % |")
    ft = _median_after_warmup(finetune)
    figures["finetune_step_s"] = ft
    figures["upper_in_finetune_steps"] = figures["upper"]["stage_s"] / ft
    print(
        f"\nplain fine-tuning step: {ft:.4f} s; one BiSSL upper step = "
        f"{figures['upper_in_finetune_steps']:.1f} fine-tuning steps"
    )
    if args.json:
        from bissl_dense.fileio import atomic_write_text

        atomic_write_text(args.json, json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
