"""``bissl demo`` (``make demo``): the whole pipeline on built-in data, ending in a report.

What a new user runs first. It writes the data, then runs the commands a user runs on real
data, each printed as a shell line before it runs (``$ bissl pretrain ...``):

1. data: generated labelled images and unlabeled pretext images (``--data synthetic``), or
   scikit-learn's bundled handwritten digits (``--data digits``, real scans; see
   ``bissl_dense.datasets.digits``), in the ImageFolder layout;
2. ``bissl pretrain``: SimCLR pretext pretraining of a ResNet-18 (SPEC §1, step 1);
3. ``bissl compare --arms ft,bissl``: per arm a Ray Tune random search over lr × weight decay
   and seeds at the chosen configuration; the BiSSL arm first warms up the downstream head on
   the frozen pretext backbone and runs BiSSL (SPEC §1, steps 2-3); then the table with the
   exact permutation test (SPEC §4) and its plots;
4. ``bissl analyze``: cosine similarities of parameters and features, pretext/BiSSL backbone vs
   their fine-tuned seeds, and t-SNE plots (SPEC §7);
5. ``<work_dir>/report.md``: the table, accuracy per seed and arm, the loss curves of both
   BiSSL levels, the searches, the cosine similarities and t-SNE, and the commands that made
   them.

Rerunning the same command after an interruption continues where it stopped: finished data and
pretext exports are kept, an interrupted pretext run resumes from its last checkpoint, and
``bissl compare`` resumes its own stages and trials.

Budgets (``--preset``): ``full`` is sized for at most 15 minutes on 2 CPU cores; ``quick``
(the test suite's shortened demo) runs every stage with a handful of steps, 2 configurations
and 2 seeds.
"""

from __future__ import annotations

import argparse
import json
import shlex
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bissl_dense.errors import ConfigError, UserError
from bissl_dense.experiments.progress import format_duration, print_line

__all__ = ["DEMO_PRESETS", "DemoBudget", "add_demo_parser", "run_demo"]

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
DATA_KINDS = ("synthetic", "digits")
#: Classes of each kind of data: the configs' heads are sized from it (the generated-data configs
#: default to the generator's 5 classes, the digits have 10).
NUM_CLASSES = {"synthetic": 5, "digits": 10}


@dataclass(frozen=True)
class DemoBudget:
    """How much of everything a demo run does (the image size is the configs' 32 px)."""

    labelled_images: int  # synthetic only: train/val/test together (60/20/20)
    unlabeled_images: int  # synthetic only
    digits_limit: int | None  # digits only: None = all 1,797
    pretext_epochs: int
    warmup_epochs: int
    finetune_epochs: int
    alternations: int  # T of the BiSSL stage
    lower_steps: int  # N_L
    upper_steps: int  # N_U
    bissl_pretext_batch: int  # pretext images per lower step of the BiSSL stage
    search_configurations: int
    seeds: int


DEMO_PRESETS: dict[str, DemoBudget] = {
    "full": DemoBudget(
        labelled_images=400,
        unlabeled_images=1000,
        digits_limit=None,
        pretext_epochs=20,
        warmup_epochs=5,
        finetune_epochs=5,
        alternations=10,
        lower_steps=4,
        upper_steps=2,
        bissl_pretext_batch=32,
        search_configurations=4,
        seeds=3,
    ),
    "quick": DemoBudget(
        labelled_images=60,
        unlabeled_images=64,
        digits_limit=120,
        pretext_epochs=1,
        warmup_epochs=1,
        finetune_epochs=1,
        alternations=2,
        lower_steps=1,
        upper_steps=1,
        bissl_pretext_batch=8,
        search_configurations=2,
        seeds=2,
    ),
}


@dataclass(frozen=True)
class DemoPaths:
    """Where a demo run puts everything (all under ``--work-dir``)."""

    work_dir: Path

    @property
    def data(self) -> Path:
        return self.work_dir / "data"

    @property
    def labelled(self) -> Path:
        return self.data / "labelled"

    @property
    def unlabeled(self) -> Path:
        return self.data / "unlabeled"

    @property
    def pretext(self) -> Path:
        return self.work_dir / "pretext"

    @property
    def compare(self) -> Path:
        return self.work_dir / "compare"

    @property
    def analysis(self) -> Path:
        return self.work_dir / "analysis"

    @property
    def report(self) -> Path:
        return self.work_dir / "report.md"


def _shell(argv: Sequence[str]) -> str:
    return "$ bissl " + " ".join(shlex.quote(str(a)) for a in argv)


def _run_cli(argv: list[str], log: Callable[[str], None], commands: list[str]) -> None:
    """Run one ``bissl`` command in this process, exactly as on the command line."""
    from bissl_dense.cli import main

    line = _shell(argv)
    commands.append(line)
    log(line)
    status = main(argv)
    if status != 0:  # the command printed its one-line error already
        raise UserError(f"the step `bissl {argv[0]}` failed (its error is above); fix it and rerun")


def _loader_options(prefix: str, root: Path) -> list[str]:
    # the demo's images are tiny: worker processes would cost more than they save
    options = [f"{prefix}.dataset.data_root={root}", f"{prefix}.num_workers=0"]
    if prefix != "pretext_dataloader":  # a batch stack's loader, not an mmengine dataloader
        options.append(f"{prefix}.persistent_workers=False")
    return options


def _write_data(data: str, budget: DemoBudget, paths: DemoPaths, log: Callable[[str], None]) -> str:
    """Write the demo's images once (atomically); return a one-line description."""
    if (paths.data / "demo_data.json").is_file():
        info = json.loads((paths.data / "demo_data.json").read_text())
        if info.get("data") != data:
            raise ConfigError(
                f"{paths.work_dir} holds a demo of --data {info.get('data')}, not {data}; "
                "choose another --work-dir"
            )
        log(f"[demo] data written before: {paths.data}")
        return str(info["description"])
    if paths.data.exists():  # a leftover of an interrupted write of an older layout
        raise ConfigError(
            f"{paths.data} exists but holds no demo_data.json; remove it or choose another "
            "--work-dir"
        )
    from bissl_dense.fileio import atomic_write_text, staged_directory

    with staged_directory(paths.data) as staging:
        if data == "digits":
            from bissl_dense.datasets.digits import write_digits

            # write_digits stages its own directory: give it a fresh one inside ours
            sizes = write_digits(staging / "digits", size=32, limit=budget.digits_limit)
            for name in ("labelled", "unlabeled"):
                (staging / "digits" / name).rename(staging / name)
            (staging / "digits").rmdir()
            description = (
                f"scikit-learn's handwritten digits (10 classes, 8×8 scans upscaled to 32 px): "
                f"{sizes['train']} train / {sizes['val']} val / {sizes['test']} test images; "
                f"pretext images: the {sizes['train']} training images without labels"
            )
        else:
            from bissl_dense.datasets.synthetic import write_imagefolder, write_unlabeled

            write_imagefolder(
                staging / "labelled",
                budget.labelled_images,
                num_classes=NUM_CLASSES["synthetic"],
                size=32,
            )
            write_unlabeled(staging / "unlabeled", budget.unlabeled_images, size=32)
            description = (
                f"generated images ({NUM_CLASSES['synthetic']} shape/stripe classes, 32 px): "
                f"{budget.labelled_images} labelled (60/20/20 train/val/test), "
                f"{budget.unlabeled_images} unlabeled pretext images"
            )
        atomic_write_text(
            staging / "demo_data.json", json.dumps({"data": data, "description": description})
        )
    log(f"[demo] data: {description} → {paths.data}")
    return description


def _pretext_files(paths: DemoPaths) -> dict[str, Path] | None:
    export = paths.pretext / "export"
    found = {}
    for kind in ("backbone", "head"):
        files = sorted(export.glob(f"Pretext_simclr_arch-resnet18_{kind}_id-*.pth"))
        if not files:
            return None
        found[kind] = files[-1]
    return found


def _pretrain(
    budget: DemoBudget, paths: DemoPaths, log: Callable[[str], None], commands: list[str]
) -> dict[str, Path]:
    if (done := _pretext_files(paths)) is not None:
        log(f"[demo] pretext pretraining done before: {done['backbone']}")
        return done
    epochs = budget.pretext_epochs
    argv = [
        "pretrain",
        str(CONFIGS / "pretext" / "simclr_resnet18_synthetic.py"),
        "--work-dir",
        str(paths.pretext),
        "--cfg-options",
        *_loader_options("train_dataloader", paths.unlabeled),
        f"train_cfg.max_epochs={epochs}",
        # the 20-epoch schedule's shape (a tenth warm-up, then cosine) at the demo's length
        f"param_scheduler.0.end={max(1, epochs // 10)}",
        f"param_scheduler.1.begin={max(1, epochs // 10)}",
        f"param_scheduler.1.end={max(2, epochs)}",
    ]
    if (paths.pretext / "last_checkpoint").is_file():
        argv.append("--resume")
    _run_cli(argv, log, commands)
    found = _pretext_files(paths)
    if found is None:
        raise RuntimeError(f"pretext pretraining wrote no export under {paths.pretext / 'export'}")
    return found


def _compare(
    budget: DemoBudget,
    paths: DemoPaths,
    pretext: Mapping[str, Path],
    log: Callable[[str], None],
    commands: list[str],
    num_cpus: int | None,
    num_classes: int,
) -> None:
    classification = CONFIGS / "classification"
    test_loader = _loader_options("test_dataloader", paths.labelled)
    argv = [
        "compare",
        "--task-config",
        str(classification / "finetune_resnet18_synthetic.py"),
        "--warmup-config",
        str(classification / "warmup_resnet18_synthetic.py"),
        "--bissl-config",
        str(classification / "bissl_simclr_resnet18_synthetic.py"),
        "--backbone",
        str(pretext["backbone"]),
        "--head",
        str(pretext["head"]),
        "--work-dir",
        str(paths.compare),
        "--arms",
        "ft,bissl",
        "--num-samples",
        str(budget.search_configurations),
        "--seeds",
        str(budget.seeds),
        "--cfg-options",
        *_loader_options("train_dataloader", paths.labelled),
        *_loader_options("val_dataloader", paths.labelled),
        "log_level=WARNING",  # compare prints each trial's progress; mmengine's would drown it
        "--finetune-options",
        f"train_cfg.max_epochs={budget.finetune_epochs}",
        f"param_scheduler.0.end={budget.finetune_epochs}",
        f"model.num_classes={num_classes}",
        *test_loader,
        "--warmup-options",
        f"train_cfg.max_epochs={budget.warmup_epochs}",
        f"model.num_classes={num_classes}",
        *test_loader,
        "--bissl-options",
        f"model.task.num_classes={num_classes}",
        *_loader_options("pretext_dataloader", paths.unlabeled),
        f"pretext_dataloader.batch_size={budget.bissl_pretext_batch}",
        f"train_cfg.bissl.alternations={budget.alternations}",
        f"train_cfg.bissl.lower_steps={budget.lower_steps}",
        f"train_cfg.bissl.upper_steps={budget.upper_steps}",
        f"train_cfg.val_interval={max(1, budget.alternations // 2)}",
        # log and checkpoint at least twice per run, so the report has both levels' curves
        f"default_hooks.logger.interval={max(1, budget.lower_steps + budget.upper_steps)}",
    ]
    if num_cpus is not None:
        argv += ["--num-cpus", str(num_cpus)]
    _run_cli(argv, log, commands)


def _seed_dirs(paths: DemoPaths, arm: str) -> list[Path]:
    seeds = json.loads((paths.compare / "arms" / arm / "seeds" / "seeds.json").read_text())
    return [Path(record["config"]["trial_dir"]) for _, record in sorted(seeds["trials"].items())]


def _bissl_backbone(paths: DemoPaths) -> Path:
    found = sorted(
        (paths.compare / "prepare" / "bissl" / "export").glob("BiSSL_*_lower_backbone_*")
    )
    if not found:
        raise RuntimeError("bissl compare finished without a BiSSL lower backbone export")
    return found[-1]


def _analyze(
    paths: DemoPaths,
    pretext: Mapping[str, Path],
    log: Callable[[str], None],
    commands: list[str],
    num_classes: int,
) -> None:
    if (paths.analysis / "alignment.json").is_file() and (paths.analysis / "tsne.png").is_file():
        log(f"[demo] alignment analysis done before: {paths.analysis}")
        return
    argv = [
        "analyze",
        "--config",
        str(CONFIGS / "classification" / "finetune_resnet18_synthetic.py"),
        "--pretext",
        str(pretext["backbone"]),
        "--bissl",
        str(_bissl_backbone(paths)),
        "--ft-pretext",
        *map(str, _seed_dirs(paths, "ft")),
        "--ft-bissl",
        *map(str, _seed_dirs(paths, "bissl")),
        "--out",
        str(paths.analysis),
        "--cfg-options",
        f"model.num_classes={num_classes}",
        *_loader_options("train_dataloader", paths.labelled),
        *_loader_options("test_dataloader", paths.labelled),
    ]
    _run_cli(argv, log, commands)


def write_demo_report(
    paths: DemoPaths,
    *,
    data_description: str,
    budget: DemoBudget,
    commands: Sequence[str],
    elapsed: Mapping[str, float],
) -> Path:
    """``<work_dir>/report.md`` from a finished demo's outputs (compare's and analyze's files).

    Every figure is one the stages wrote (``MarkdownReport.image`` refuses a missing one); the
    table is compare's ``comparison.json``; the alignment table is analyze's ``alignment.md``.
    """
    from bissl_dense.reports.markdown import MarkdownReport
    from bissl_dense.reports.tables import ComparisonTable

    compare_report = paths.compare / "report"
    figures = compare_report / "figures"
    table = ComparisonTable.from_json((compare_report / "comparison.json").read_text())
    report = MarkdownReport(paths.report, "bissl demo: fine-tuning vs BiSSL + fine-tuning")
    report.paragraph(
        "ResNet-18, SimCLR pretext task; every stage below was run by the commands listed at "
        "the end of this report. Test accuracy is the top-1 accuracy of the best-validation "
        "checkpoint of each seed; p is the exact two-sample permutation test (SPEC §4)."
    )
    report.section("Setup")
    report.key_values(
        {
            "data": data_description,
            "pretext pretraining": f"SimCLR, {budget.pretext_epochs} epochs",
            "head warm-up": f"{budget.warmup_epochs} epochs, frozen backbone",
            "BiSSL": (
                f"T={budget.alternations} alternations of N_L={budget.lower_steps} lower and "
                f"N_U={budget.upper_steps} upper steps"
            ),
            "fine-tuning": (
                f"{budget.finetune_epochs} epochs; search of {budget.search_configurations} "
                f"lr × wd configurations, then {budget.seeds} seeds per arm"
            ),
            **{f"time: {name}": format_duration(seconds) for name, seconds in elapsed.items()},
        }
    )
    report.section("Fine-tuning vs BiSSL + fine-tuning (test top-1 %)")
    report.table(table)
    report.image(figures / "seeds.png", "test accuracy per seed and arm")
    report.section("BiSSL training")
    report.image(figures / "losses_bissl.png", "losses of the lower (SimCLR) and upper level")
    report.section("Alignment (SPEC §7)")
    report.table((paths.analysis / "alignment.md").read_text())
    report.image(paths.analysis / "tsne.png", "t-SNE of test features, pretext vs BiSSL backbone")
    report.section("Hyper-parameter searches")
    for arm in ("ft", "bissl"):
        report.image(figures / f"search_{arm}.png", f"search of {arm}: lr × weight decay")
    report.section("Commands")
    report.paragraph("```\n" + "\n".join(commands) + "\n```")
    report.paragraph(f"All outputs: `{paths.work_dir}`; compare's own report: `{compare_report}`.")
    return report.write()


def run_demo(
    data: str = "synthetic",
    work_dir: str | Path | None = None,
    preset: str = "full",
    *,
    num_cpus: int | None = None,
    log: Callable[[str], None] = print_line,
) -> Path:
    """Run the demo (module docstring) into ``work_dir``; return the report's path."""
    if data not in DATA_KINDS:
        raise ConfigError(f"--data must be one of {', '.join(DATA_KINDS)}, got {data!r}")
    if preset not in DEMO_PRESETS:
        raise ConfigError(f"--preset must be one of {', '.join(DEMO_PRESETS)}, got {preset!r}")
    budget = DEMO_PRESETS[preset]
    paths = DemoPaths(Path(work_dir or f"work_dirs/demo-{data}").resolve())
    paths.work_dir.mkdir(parents=True, exist_ok=True)
    steps = ("data", "pretext pretraining", "compare (warm-up, BiSSL, fine-tuning)", "analysis")
    commands: list[str] = []
    elapsed: dict[str, float] = {}
    start = time.perf_counter()

    def begin(index: int) -> float:
        log(
            f"[demo] step {index}/{len(steps) + 1}: {steps[index - 1]} "
            f"({format_duration(time.perf_counter() - start)} so far)"
        )
        return time.perf_counter()

    t = begin(1)
    description = _write_data(data, budget, paths, log)
    elapsed["data"] = time.perf_counter() - t
    t = begin(2)
    pretext = _pretrain(budget, paths, log, commands)
    elapsed["pretext pretraining"] = time.perf_counter() - t
    t = begin(3)
    from bissl_dense.experiments._ray import ray_session

    with ray_session(num_cpus=num_cpus):  # one Ray start for both arms' searches and seeds
        _compare(budget, paths, pretext, log, commands, num_cpus, NUM_CLASSES[data])
    elapsed["compare"] = time.perf_counter() - t
    t = begin(4)
    _analyze(paths, pretext, log, commands, NUM_CLASSES[data])
    elapsed["analysis"] = time.perf_counter() - t
    elapsed["total (this run)"] = time.perf_counter() - start
    log(f"[demo] step 5/5: report ({format_duration(time.perf_counter() - start)} so far)")
    report = write_demo_report(
        paths, data_description=description, budget=budget, commands=commands, elapsed=elapsed
    )
    print((paths.compare / "report" / "comparison.md").read_text(), flush=True)
    print((paths.analysis / "alignment.md").read_text(), flush=True)
    log(f"[demo] done in {format_duration(time.perf_counter() - start)}; report: {report}")
    return report


def _demo(args: argparse.Namespace) -> int:
    import sys

    try:
        run_demo(args.data, args.work_dir, args.preset, num_cpus=args.num_cpus)
    except UserError as error:
        print(f"bissl demo: error: {error}", file=sys.stderr)
        return 2
    return 0


def add_demo_parser(commands: Any) -> argparse.ArgumentParser:
    """Register ``bissl demo`` on the sub-command parsers of ``bissl_dense.cli``."""
    parser = commands.add_parser(
        "demo",
        help="the whole pipeline on built-in data in minutes, ending in a report (make demo)",
        description="Write built-in data, then run bissl pretrain (SimCLR), bissl compare "
        "(head warm-up, BiSSL, fine-tuning searches and seeds, permutation test) and bissl "
        "analyze (cosine similarities, t-SNE) with a ResNet-18, and write <work-dir>/report.md. "
        "Rerun the same command to continue after an interruption.",
    )
    parser.add_argument("--data", choices=DATA_KINDS, default="synthetic")
    parser.add_argument("--work-dir", help="output directory (default work_dirs/demo-<data>)")
    parser.add_argument(
        "--preset",
        choices=sorted(DEMO_PRESETS),
        default="full",
        help="full: at most ~15 min on 2 CPU cores; quick: a few steps of everything (tests)",
    )
    parser.add_argument("--num-cpus", type=int, help="CPUs of the local Ray (default all)")
    parser.set_defaults(func=_demo)
    return parser
