"""One prepared script for a GPU: every GPU figure bissl needs, and a check of the CUDA paths.

    python -m bissl_dense.benchmarks.device_check [--device cuda] [--json PATH]
    make device-check      # the same, writing work_dirs/benchmarks/device_check.json

No GPU has been available to this project, so the CUDA paths (bf16 autocast, channels-last, the
allocator, detectron2's and mmseg's models on a GPU) and every GPU figure are unmeasured (issue
24). Run this first whenever one is: in at most ``--deadline`` seconds (480) on one GPU it runs,
one section after another,

* ``implicit_fp32``: the implicit-Jacobian benchmark (:mod:`bissl_dense.benchmarks.implicit`) at
  ResNet-50, 96 px, batch 256, K = 5, N_U = 8: the reference's solve (K recomputed products),
  recomputed, exact (reverse-over-reverse), jvp (forward-over-reverse) and finite-difference
  products, per upper step and against the reference, with the solutions' quality;
* ``pretext``: SimCLR step throughput, float32 against bf16 autocast, each with and without
  channels-last (:func:`bissl_dense.benchmarks.pretext.precision_benchmark`);
* ``classification``, ``classification_bf16`` (bf16 autocast + channels-last), ``detection``
  (detectron2 R50-C4, ``tools/train_net.py``) and ``segmentation`` (mmseg FCN-16,
  ``tools/train.py``): a few steps of each task's BiSSL stage on generated data, through the
  commands a user runs, in this process;
* ``implicit_bf16``: the benchmark again with the upper loss's forward passes (the upper step
  without its solve, the fine-tuning step) under ``BiSSLConfig(autocast="bfloat16")``, as a bf16
  BiSSL stage runs them; the products, hence the solves, stay float32; timings only.

Each section has its own time budget and its own ``try``: a failure is recorded as that section's
error and the next section runs; when the deadline has passed, the remaining sections are marked
``"skipped: time"``. A section passes when it ran, every loss it saw (each step of the BiSSL
stages, each precision of the pretext step) and every number it reports is finite, and the BiSSL
stages ran all their steps on the requested device. Progress goes to stderr; one JSON document
with every figure, the GPU's name, the torch/CUDA versions and each section's peak memory goes to
stdout (and to ``--json``). Exit status 0 when every section passed, 1 when one failed or was
skipped, 2 for bad arguments or a device torch cannot use.

``--device cpu --tiny`` runs the same logic at toy sizes (ResNet-18, 16-32 px, batch 4, one
repetition, one alternation of 1 + 1 steps) on the CPU: the test of this script
(tests/benchmarks/test_device_check.py).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import io
import json
import math
import os
import platform
import signal
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
DETECTION_CONFIG = ROOT / "configs" / "detection" / "tiny_cpu.yaml"
CLASSIFICATION_CONFIG = ROOT / "configs" / "classification" / "bissl_simclr_resnet18_synthetic.py"
SEGMENTATION_CONFIG = (
    ROOT / "configs" / "segmentation" / "bissl_simclr_fcn_r50_voc_aug_synthetic.py"
)

# The implicit benchmark's solves timed here: the exact product per step and amortised over the
# stage (global CG and MINRES), forward-over-reverse, finite differences; the reference's solve and
# the recomputed global CG are always timed (implicit._BASELINE_CASES).
IMPLICIT_CASES = (
    "per_step/exact",
    "stage/exact",
    "stage/exact/minres",
    "stage/jvp/minres",
    "stage/finite_difference",
    "stage/finite_difference/minres",
)
# bf16 changes only the levels' loss forward passes (the products are float32): the upper step
# without its solve and the fine-tuning step, against the solves of the default solver.
IMPLICIT_BF16_CASES = ("stage/exact/minres", "stage/jvp/minres", "stage/finite_difference/minres")


@dataclass(frozen=True)
class Sizes:
    """Problem sizes of one run: the GPU's (``FULL``) or toy ones for the CPU test (``TINY``)."""

    implicit: tuple[str, ...]  # arguments of bissl_dense.benchmarks.implicit
    pretext: tuple[str, ...]  # arguments of bissl_dense.benchmarks.pretext
    arch: str  # ResNet of the classification stage (and of segmentation's FCN: depth)
    image_size: int
    batch: int
    schedule: tuple[int, int, int, int]  # alternations, lower steps, upper steps, K
    detection: tuple[str, ...] = field(default=())  # extra KEY VALUE overrides of tiny_cpu.yaml
    voc_size: int = 64
    # the solutions' quality in implicit_fp32 (residuals, errors against a long solve); the tiny
    # run leaves it out (its cost is half the section's on 2 CPU cores, and
    # tests/benchmarks/test_implicit_benchmark.py runs it)
    implicit_quality: bool = True


FULL = Sizes(
    implicit=("--arch", "resnet50", "--size", "96", "--batch", "256", "--repeats", "2",
              "--iters", "5", "--upper-steps", "8", "--quality-solves", "1",
              "--reference-iters", "10"),
    pretext=("--arch", "resnet50", "--batch", "256", "--image-size", "96", "--warmup", "3",
             "--iters", "10"),
    arch="resnet50",
    image_size=96,
    batch=32,
    schedule=(2, 2, 2, 5),
    detection=("INPUT.MIN_SIZE_TRAIN", "(128,)", "INPUT.MAX_SIZE_TRAIN", "128",
               "SOLVER.IMS_PER_BATCH", "4", "BISSL.LOWER_IMS_PER_BATCH", "16",
               "BISSL.PRETEXT.IMAGE_SIZE", "64"),
    voc_size=128,
)  # fmt: skip
TINY = Sizes(
    implicit=("--arch", "resnet18", "--size", "16", "--batch", "4", "--repeats", "1",
              "--iters", "1", "--upper-steps", "1", "--quality-solves", "1",
              "--reference-iters", "1"),
    pretext=("--arch", "resnet18", "--batch", "2", "--image-size", "16", "--warmup", "0",
             "--iters", "1"),
    arch="resnet18",
    image_size=32,
    batch=4,
    schedule=(1, 1, 1, 1),
    implicit_quality=False,
)  # fmt: skip


@dataclass
class Context:
    """What every section gets: the device, the sizes and a scratch folder of its own."""

    device: str
    sizes: Sizes
    tiny: bool
    work_dir: Path


# name, budget in seconds, function (looked up by name when the section runs). Order: the most
# wanted figures first; the budgets add up to more than the deadline, which caps the last ones.
SECTIONS: tuple[tuple[str, float, str], ...] = (
    ("implicit_fp32", 180.0, "section_implicit_fp32"),
    ("pretext", 45.0, "section_pretext"),
    ("classification", 60.0, "section_classification"),
    ("classification_bf16", 45.0, "section_classification_bf16"),
    ("detection", 75.0, "section_detection"),
    ("segmentation", 60.0, "section_segmentation"),
    ("implicit_bf16", 90.0, "section_implicit_bf16"),
)


# ----------------------------------------------------------------------------------- sections


def _implicit(ctx: Context, extra: list[str]) -> dict[str, Any]:
    from bissl_dense.benchmarks import implicit

    result = implicit.main(["--device", ctx.device, *ctx.sizes.implicit, *extra])
    return {"figures": result, "losses": {}}


def section_implicit_fp32(ctx: Context) -> dict[str, Any]:
    quality = [] if ctx.sizes.implicit_quality else ["--no-quality"]
    return _implicit(ctx, ["--cases", ",".join(IMPLICIT_CASES), *quality])


def section_implicit_bf16(ctx: Context) -> dict[str, Any]:
    return _implicit(
        ctx, ["--cases", ",".join(IMPLICIT_BF16_CASES), "--autocast", "bfloat16", "--no-quality"]
    )


def section_pretext(ctx: Context) -> dict[str, Any]:
    from bissl_dense.benchmarks import pretext

    args = pretext.build_parser().parse_args(["--device", ctx.device, *ctx.sizes.pretext])
    losses: dict[str, float] = {}
    images_per_second = pretext.precision_benchmark(args, losses=losses)
    fp32 = images_per_second["fp32"]
    return {
        "figures": {
            "setup": {k: getattr(args, k) for k in ("arch", "batch", "image_size", "iters")},
            "images_per_second": images_per_second,
            "speedup_over_fp32": {k: v / fp32 for k, v in images_per_second.items()},
        },
        "losses": losses,
    }


def _classification(ctx: Context, extra: dict[str, Any]) -> dict[str, Any]:
    from bissl_dense.cli import main as bissl_main
    from bissl_dense.datasets.synthetic import write_imagefolder, write_unlabeled

    s = ctx.sizes
    data = ctx.work_dir / "data"
    # 60/20/20 split: every class needs an image in val and test
    write_imagefolder(data / "labelled", 5 * s.batch + 10, num_classes=5, size=s.image_size + 8)
    write_unlabeled(data / "unlabeled", 4 * s.batch, size=s.image_size + 8)
    alternations, lower, upper, k = s.schedule
    options: dict[str, Any] = {
        "train_dataloader.dataset.data_root": data / "labelled",
        "train_dataloader.dataset.image_size": s.image_size,
        "train_dataloader.batch_size": s.batch,
        "train_dataloader.num_workers": 0,
        "pretext_dataloader.dataset.data_root": data / "unlabeled",
        "pretext_dataloader.dataset.augmentation.image_size": s.image_size,
        "pretext_dataloader.batch_size": s.batch,
        "pretext_dataloader.num_workers": 0,
        "model.pretext.backbone.arch": s.arch,
        "model.task.backbone.arch": s.arch,
        "train_cfg.bissl.alternations": alternations,
        "train_cfg.bissl.lower_steps": lower,
        "train_cfg.bissl.upper_steps": upper,
        "train_cfg.bissl.cg_iters": k,
        "train_cfg.bissl.residual_every": 1,
        "train_cfg.val_interval": 0,
        "val_cfg": None,
        "val_dataloader": None,
        "val_evaluator": None,
        "default_hooks.checkpoint.interval": 10**9,
        "custom_hooks": [],
        **extra,
    }
    argv = ["train", str(CLASSIFICATION_CONFIG), "--work-dir", str(ctx.work_dir / "run")]
    argv += ["--cfg-options", *[f"{key}={value}" for key, value in options.items()]]
    with recorded_steps(ctx.device) as steps:
        _command("bissl train", bissl_main, argv)
    return stage_figures(steps, alternations * (lower + upper), ctx.device)


def section_classification(ctx: Context) -> dict[str, Any]:
    return _classification(ctx, {})


def section_classification_bf16(ctx: Context) -> dict[str, Any]:
    return _classification(
        ctx,
        {
            "train_cfg.bissl.autocast": "bfloat16",
            "model.pretext.backbone.channels_last": True,
            "model.task.backbone.channels_last": True,
        },
    )


def section_detection(ctx: Context) -> dict[str, Any]:
    from bissl_dense.datasets.synthetic import write_voc
    from bissl_dense.detection import train_net

    s = ctx.sizes
    voc = ctx.work_dir / "voc"
    write_voc(voc, 12, size=s.voc_size)
    alternations, lower, upper, k = s.schedule
    argv = ["--config-file", str(DETECTION_CONFIG), "--num-gpus", "1"]
    argv += ["MODEL.WEIGHTS", "random", "MODEL.DEVICE", ctx.device]
    argv += ["DATASETS.VOC_ROOT", str(voc), "DATASETS.TEST", "()"]
    argv += ["OUTPUT_DIR", str(ctx.work_dir / "run"), "SOLVER.CHECKPOINT_PERIOD", "100000"]
    argv += ["BISSL.STAGE", "bissl", "BISSL.PRETEXT.HEAD", "random", "BISSL.SEED", "0"]
    argv += ["BISSL.ALTERNATIONS", str(alternations), "BISSL.LOWER_STEPS", str(lower)]
    argv += ["BISSL.UPPER_STEPS", str(upper), "BISSL.CG_ITERS", str(k), *s.detection]
    with recorded_steps(ctx.device) as steps:
        _command("tools/train_net.py", train_net.main, argv)
    return stage_figures(steps, alternations * (lower + upper), ctx.device)


def section_segmentation(ctx: Context) -> dict[str, Any]:
    from bissl_dense.cli import main as bissl_main
    from bissl_dense.datasets.synthetic import write_unlabeled, write_voc
    from bissl_dense.segmentation.data import write_voc_aug_split

    s = ctx.sizes
    data = ctx.work_dir / "data"
    write_voc(data / "voc", 12, seed=3, size=80, num_classes=4)
    voc2012 = data / "voc" / "VOCdevkit" / "VOC2012"
    write_voc_aug_split(voc2012, voc2012 / "splits", 0.25, seed=0)  # where the configs read it
    write_unlabeled(data / "unlabeled", 4 * s.batch, size=s.image_size + 8)
    alternations, lower, upper, k = s.schedule
    options: dict[str, Any] = {
        "train_dataloader.dataset.dataset.data_root": voc2012,
        "train_dataloader.batch_size": max(2, s.batch // 4),
        "pretext_dataloader.dataset.data_root": data / "unlabeled",
        "pretext_dataloader.dataset.augmentation.image_size": s.image_size,
        "pretext_dataloader.batch_size": s.batch,
        "train_cfg.bissl.alternations": alternations,
        "train_cfg.bissl.lower_steps": lower,
        "train_cfg.bissl.upper_steps": upper,
        "train_cfg.bissl.cg_iters": k,
        "train_cfg.bissl.residual_every": 1,
        "train_cfg.val_interval": 0,
        "val_cfg": None,
        "val_dataloader": None,
        "val_evaluator": None,
        "default_hooks.checkpoint.interval": 10**9,
        "custom_hooks": [],
    }
    if s.arch != "resnet50":  # the FCN-16 layout on a smaller ResNet (as tests/segmentation)
        depth = int(s.arch.removeprefix("resnet"))
        options["model.pretext.backbone.arch"] = s.arch
        options["model.task.segmentor.backbone.depth"] = depth
        options["model.task.segmentor.decode_head.in_channels"] = 512 if depth < 50 else 2048
    argv = ["train", str(SEGMENTATION_CONFIG), "--work-dir", str(ctx.work_dir / "run")]
    argv += ["--cfg-options", *[f"{key}={value}" for key, value in options.items()]]
    with recorded_steps(ctx.device) as steps:
        _command("tools/train.py", bissl_main, argv)
    return stage_figures(steps, alternations * (lower + upper), ctx.device)


# ---------------------------------------------------------------------------- the BiSSL stages


class _Tee(io.TextIOBase):
    """Writes to a stream and keeps a copy."""

    def __init__(self, stream: Any) -> None:
        self.stream, self.copy = stream, io.StringIO()

    def write(self, text: str) -> int:
        self.copy.write(text)
        return self.stream.write(text)

    def flush(self) -> None:
        self.stream.flush()


def _command(name: str, command: Callable[[list[str]], int], argv: list[str]) -> None:
    """Run a user command in this process; a non-zero status raises with its error line (the
    commands report a bad config or missing data in one line on stderr, then return 2)."""
    tee = _Tee(sys.stderr)
    with contextlib.redirect_stderr(tee):
        status = command(argv)
    if status != 0:
        errors = [line for line in tee.copy.getvalue().splitlines() if "error" in line]
        raise RuntimeError(f"{name} exited with status {status}: {errors[-1] if errors else ''}")


@contextlib.contextmanager
def recorded_steps(device: str) -> Iterator[list[dict[str, Any]]]:
    """Record every ``BilevelTrainer.train_step`` while the block runs: its phase, its loss, its
    seconds and the device its parameters are on. All three tasks' stages (mmengine's BiSSLLoop,
    detectron2's BiSSLTrainer) drive the core's ``BilevelTrainer``, so this sees each of them
    whichever framework runs it."""
    import torch

    from bissl_dense.core.bilevel import BilevelTrainer

    steps: list[dict[str, Any]] = []
    original = BilevelTrainer.train_step

    def train_step(self: BilevelTrainer) -> Any:
        _synchronize(device)
        start = time.perf_counter()
        phase, metrics = original(self)
        _synchronize(device)
        seconds = time.perf_counter() - start
        key = "lower/pretext_loss" if phase == "lower" else "upper/loss"
        parameter = next(self.step_fn.lower_model.parameters())
        steps.append(
            {
                "phase": phase,
                "loss": float(torch.as_tensor(metrics[key]).float()),
                "seconds": seconds,
                "device": parameter.device.type,
            }
        )
        return phase, metrics

    BilevelTrainer.train_step = train_step  # type: ignore[method-assign]
    try:
        yield steps
    finally:
        BilevelTrainer.train_step = original  # type: ignore[method-assign]


def stage_figures(steps: list[dict[str, Any]], expected: int, device: str) -> dict[str, Any]:
    """Losses and step times of a stage; raises if it did not run every step on ``device``."""
    import torch

    wanted = torch.device(device).type
    if len(steps) != expected:
        raise RuntimeError(f"the stage ran {len(steps)} BiSSL steps, expected {expected}")
    elsewhere = sorted({s["device"] for s in steps} - {wanted})
    if elsewhere:
        raise RuntimeError(f"the stage's parameters were on {elsewhere}, not on {wanted}")
    losses = {p: [s["loss"] for s in steps if s["phase"] == p] for p in ("lower", "upper")}
    seconds = {p: [s["seconds"] for s in steps if s["phase"] == p] for p in ("lower", "upper")}
    return {
        "figures": {
            "steps": len(steps),
            # the first step of each level includes building its data loader and (upper) the
            # stage's products: the median of the others where there are others
            "median_seconds_per_step": {
                p: statistics.median(t[1:] if len(t) > 1 else t) for p, t in seconds.items() if t
            },
            "seconds_per_step": seconds,
        },
        "losses": losses,
    }


# ---------------------------------------------------------------------------------- the runner


class SectionTimeout(Exception):
    """A section ran past its time budget."""


@contextlib.contextmanager
def _time_limit(seconds: float) -> Iterator[None]:
    """Raise :class:`SectionTimeout` in the block after ``seconds`` (SIGALRM: main thread only;
    elsewhere the block runs to its end and only the deadline between sections applies)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def expire(signum: int, frame: Any) -> None:
        raise SectionTimeout(f"stopped after its time budget of {seconds:.0f} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, max(seconds, 1e-3))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _synchronize(device: str) -> None:
    import torch

    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def _non_finite(value: Any, path: str = "") -> list[str]:
    """The paths of the non-finite numbers in a nested figure."""
    if isinstance(value, bool):
        return []
    if isinstance(value, int | float):
        return [] if math.isfinite(value) else [f"{path}={value}"]
    if isinstance(value, dict):
        return [bad for k, v in value.items() for bad in _non_finite(v, f"{path}/{k}")]
    if isinstance(value, list | tuple):
        return [bad for i, v in enumerate(value) for bad in _non_finite(v, f"{path}[{i}]")]
    return []


def run_section(
    budget: float, function: Callable[[Context], dict[str, Any]], ctx: Context
) -> dict[str, Any]:
    """Run one section under its budget; its figures, or its error, and its peak memory."""
    import torch

    from bissl_dense.benchmarks.implicit import _PeakMemory

    record: dict[str, Any] = {"status": "failed", "budget_s": round(budget, 1)}
    benchmark_mode, threads = torch.backends.cudnn.benchmark, torch.get_num_threads()
    memory = _PeakMemory(torch.device(ctx.device))
    start = time.perf_counter()
    try:
        with memory, _time_limit(budget):
            output = function(ctx)
        record.update(output)
        bad = _non_finite(output.get("losses", {}), "losses") + _non_finite(
            output.get("figures", {}), "figures"
        )
        record["losses_finite"] = not _non_finite(output.get("losses", {}))
        if bad:
            record["error"] = f"non-finite: {', '.join(bad[:10])}"
        else:
            record["status"] = "ok"
    except Exception as error:  # noqa: BLE001  recorded; the next section runs
        record["error"] = f"{type(error).__name__}: {error}"
    finally:
        # detectron2's default_setup and mmengine's env_cfg set these process-wide
        torch.backends.cudnn.benchmark = benchmark_mode
        torch.set_num_threads(threads)
        if torch.device(ctx.device).type == "cuda":  # the next section starts from an empty GPU
            gc.collect()
            torch.cuda.empty_cache()
    record["seconds"] = time.perf_counter() - start
    record["peak_memory_mib"] = memory.peak_mib  # above the level at the start; CPU: RSS
    return record


def environment(device: str) -> dict[str, Any]:
    """The machine: the GPU's name and memory, torch/CUDA/cuDNN and the frameworks' versions."""
    from importlib import metadata

    import torch

    info: dict[str, Any] = {
        "requested_device": device,
        "gpu_name": None,
        "torch": torch.__version__,
        "cuda_runtime": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "cuda_available": torch.cuda.is_available(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "packages": {},
    }
    for package in ("detectron2", "mmengine", "mmcv", "mmsegmentation", "torchvision"):
        try:
            info["packages"][package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            info["packages"][package] = None
    if torch.device(device).type == "cuda":
        index = torch.device(device).index or 0
        properties = torch.cuda.get_device_properties(index)
        info.update(
            gpu_name=torch.cuda.get_device_name(index),
            capability=".".join(map(str, torch.cuda.get_device_capability(index))),
            gpu_memory_gib=properties.total_memory / 2**30,
            gpu_count=torch.cuda.device_count(),
            # TF32 changes every float32 figure on Ampere and later: recorded, not changed
            tf32_matmul=torch.backends.cuda.matmul.allow_tf32,
            tf32_cudnn=torch.backends.cudnn.allow_tf32,
        )
    return info


def _log(message: str, started: float) -> None:
    print(f"[device_check {time.perf_counter() - started:6.1f} s] {message}", file=sys.stderr)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bissl_dense.benchmarks.device_check", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu (with --tiny)")
    parser.add_argument("--tiny", action="store_true", help="toy sizes: the CPU test of the logic")
    parser.add_argument(
        "--deadline",
        type=float,
        default=480.0,
        help="seconds for the whole check (480); sections past it are skipped",
    )
    parser.add_argument(
        "--sections",
        help=f"comma-separated subset to run, in the usual order (of {[s[0] for s in SECTIONS]})",
    )
    parser.add_argument(
        "--budget-scale",
        type=float,
        default=1.0,
        help="multiply every section's time budget (for slow machines; the deadline still holds)",
    )
    parser.add_argument("--threads", type=int, help="torch CPU threads during the check")
    parser.add_argument("--json", type=Path, help="also write the JSON here (atomically)")
    return parser


def main(argv: list[str] | None = None) -> int:
    started = time.perf_counter()
    parser = build_parser()
    args = parser.parse_args(argv)
    names = [s[0] for s in SECTIONS]
    chosen = names if args.sections is None else [n for n in args.sections.split(",") if n]
    unknown = [n for n in chosen if n not in names]
    if unknown:
        parser.error(f"--sections: unknown {unknown} (sections: {names})")
    if args.deadline <= 0 or args.budget_scale <= 0:
        parser.error("--deadline and --budget-scale must be > 0")

    import torch

    usable = _device_usable(args.device)
    result: dict[str, Any] = {
        "gpu_name": None,
        "environment": environment(args.device if usable else "cpu"),
        "tiny": args.tiny,
        "deadline_s": args.deadline,
        "budget_scale": args.budget_scale,
        "sections": {},
    }
    result["gpu_name"] = result["environment"]["gpu_name"]
    if not usable:
        result["error"] = f"--device {args.device}: not usable here (no GPU visible to torch?)"
        result["ok"] = False
        _log(result["error"], started)
        _finish(result, args.json, started)
        return 2
    threads = torch.get_num_threads()
    if args.threads:
        torch.set_num_threads(args.threads)
    sizes = TINY if args.tiny else FULL
    try:
        with (
            tempfile.TemporaryDirectory(prefix="bissl_device_check_") as scratch,
            contextlib.redirect_stdout(sys.stderr),  # stdout carries the JSON only
        ):
            for name, budget, function_name in SECTIONS:
                if name not in chosen:
                    continue
                left = args.deadline - (time.perf_counter() - started)
                if left < 1.0:
                    result["sections"][name] = {"status": "skipped: time"}
                    _log(f"{name}: skipped, the deadline has passed", started)
                    continue
                budget = min(budget * args.budget_scale, left)
                _log(f"{name}: start (budget {budget:.0f} s)", started)
                ctx = Context(args.device, sizes, args.tiny, Path(scratch) / name)
                ctx.work_dir.mkdir(parents=True)
                function = globals()[function_name]  # by name: a test may replace one
                record = run_section(budget, function, ctx)
                result["sections"][name] = record
                outcome = record["status"] if record["status"] == "ok" else record["error"]
                _log(f"{name}: {outcome} ({record['seconds']:.1f} s)", started)
    finally:
        torch.set_num_threads(threads)
    result["ok"] = all(r["status"] == "ok" for r in result["sections"].values())
    _finish(result, args.json, started)
    return 0 if result["ok"] else 1


def _device_usable(device: str) -> bool:
    import torch

    try:
        kind = torch.device(device)
    except RuntimeError:
        return False
    if kind.type == "cpu":
        return True
    return kind.type == "cuda" and torch.cuda.is_available()


def _finish(result: dict[str, Any], path: Path | None, started: float) -> None:
    from bissl_dense.fileio import atomic_write_text

    result["total_seconds"] = time.perf_counter() - started
    text = json.dumps(result, indent=2)
    print(text, flush=True)
    if path is not None:
        atomic_write_text(path, text + "\n")
        _log(f"written to {path}", started)


if __name__ == "__main__":
    _args, _ = build_parser().parse_known_args()
    if _args.device == "cpu":  # before torch meets CUDA: mmengine's runners then stay on the CPU
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
    sys.exit(main())
