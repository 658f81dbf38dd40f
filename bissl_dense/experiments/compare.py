"""``bissl compare``: the arms of a comparison, searched, seeded and reported (issue 9, SPEC §4).

For each arm (``arms.py``): its preparation once (e.g. warm-up → BiSSL), then ``run_arm``
(a Ray Tune random search over lr × wd, then N seeds at the chosen configuration; both
resumable through their ledgers), each trial a fine-tuning run of the task config
(``stages.finetune_trial``). At the end ``write_comparison_report`` writes the table, plots and
``report.md``; the table and the report's path are printed.

Task-agnostic: the runner only runs configs and reads ``results.json``; the metric compared is
the test score under each run's own ``selection_metric`` (reported by the trials as ``test``;
the search selects on ``val``, the best validation score).

Layout of ``--work-dir D``: ``D/prepare/`` (warm-up, BiSSL, weighted-sum and data-mix runs,
NoisyTune backbone),
``D/arms/<arm>/{search,seeds}/`` (ledgers, one work directory per trial), ``D/report/``.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from bissl_dense.errors import ConfigError
from bissl_dense.experiments.arms import ArmInputs, parse_arms, prepare_arm
from bissl_dense.experiments.progress import format_duration, print_line
from bissl_dense.experiments.stages import finetune_trial

__all__ = ["add_compare_parser", "arm_inputs", "run_compare"]


def _logged_both_levels(work_dir: Path) -> bool:
    """Whether an mmengine scalar log of the BiSSL run holds losses of both levels."""
    for path in Path(work_dir).glob("*/vis_data/scalars.json"):
        text = path.read_text()
        if '"lower/' in text and '"upper/' in text:
            return True
    return False


def run_compare(
    inputs: ArmInputs,
    arms: Sequence[str],
    work_dir: str | Path,
    *,
    num_samples: int = 100,
    seeds: Sequence[int] = tuple(range(10)),
    mode: str = "max",
    address: str | None = None,
    resources_per_trial: Mapping[str, float] | None = None,
    num_cpus: int | None = None,
    max_concurrent_trials: int | None = None,
    search_seed: int = 0,
    reuse_actors: bool = False,
    title: str | None = None,
    log: Callable[[str], None] = print_line,
) -> Path:
    """Run every arm and write the report; return the path of ``report.md``.

    Running it again with the same arguments redoes nothing that finished (preparations,
    trials, seeds); a killed run continues where it stopped.
    """
    from bissl_dense.experiments.seeds import run_arm
    from bissl_dense.reports.comparison import write_comparison_report

    if not arms:
        raise ConfigError("no arms to compare")
    work_dir = Path(work_dir).resolve()
    for label, path in (("--task-config", inputs.finetune_config), ("--backbone", inputs.backbone)):
        if not Path(path).is_file():
            raise ConfigError(f"{label} file '{path}' does not exist")
    start = time.perf_counter()
    results, bissl_runs = {}, {}
    for index, name in enumerate(arms, 1):
        elapsed = format_duration(time.perf_counter() - start)
        log(f"[compare] arm {index}/{len(arms)}: {name} ({elapsed} so far)")
        prepared = prepare_arm(name, inputs, work_dir / "prepare", log)
        if prepared.bissl_work_dir is not None:
            if _logged_both_levels(prepared.bissl_work_dir):
                bissl_runs[name] = prepared.bissl_work_dir
            else:  # too short a run for the logger interval: no curves, not an error
                log(f"[compare] {name}: no logged losses of both levels; no loss curves")
        results[name] = run_arm(
            name,
            finetune_trial,
            work_dir / "arms" / name,
            num_samples=num_samples,
            seeds=seeds,
            metric="val",
            mode=mode,
            fixed={
                "config": str(Path(inputs.finetune_config).resolve()),
                "options": prepared.options,
            },
            search_seed=search_seed,
            resources_per_trial=resources_per_trial,
            address=address,
            num_cpus=num_cpus,
            max_concurrent_trials=max_concurrent_trials,
            reuse_actors=reuse_actors,
            log=log,
        )
    selection = {
        t.metrics.get("selection_metric") for r in results.values() for t in r.seeds.trials
    }
    reference = "ft" if "ft" in results else arms[0]
    report = write_comparison_report(
        work_dir / "report",
        results,
        title=title or f"BiSSL comparison: {Path(inputs.finetune_config).stem}",
        test_metric="test",
        reference=reference,
        bissl_runs=bissl_runs,
    )
    table = (report.parent / "comparison.md").read_text()
    log(
        f"[compare] done in {format_duration(time.perf_counter() - start)}; test metric: "
        f"{', '.join(sorted(str(s) for s in selection))} of the best-validation checkpoint"
    )
    print(table, flush=True)
    log(f"[compare] report: {report}")
    return report


def _seeds(text: str) -> list[int]:
    try:
        count = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--seeds must be a number of seeds, got {text!r}"
        ) from None
    if count < 1:
        raise argparse.ArgumentTypeError(f"--seeds must be >= 1, got {count}")
    return list(range(count))


def arm_inputs(args: argparse.Namespace) -> ArmInputs:
    """The :class:`ArmInputs` of parsed ``bissl compare`` arguments (paths made absolute)."""

    def path(value: str | None) -> Path | None:
        return None if value is None else Path(value).resolve()

    return ArmInputs(
        finetune_config=path(args.task_config),
        backbone=path(args.backbone),
        head=path(args.head),
        warmup_config=path(args.warmup_config),
        bissl_config=path(args.bissl_config),
        weighted_sum_config=path(args.weighted_sum_config),
        data_mix_config=path(args.data_mix_config),
        common_options=dict(args.cfg_options),
        finetune_options=dict(args.finetune_options),
        warmup_options=dict(args.warmup_options),
        bissl_options=dict(args.bissl_options),
        noisytune_scale=args.noisytune_scale,
    )


def _compare(args: argparse.Namespace) -> int:
    from bissl_dense.cli import _run_guarded  # one-line messages for UserError, exit status 2

    def run(_: object) -> None:
        inputs = arm_inputs(args)
        resources = None
        if args.gpus_per_trial is not None:
            resources = {"cpu": args.cpus_per_trial, "gpu": args.gpus_per_trial}
        run_compare(
            inputs,
            parse_arms(args.arms),
            args.work_dir,
            num_samples=args.num_samples,
            seeds=args.seeds,
            mode=args.mode,
            address=args.address,
            resources_per_trial=resources,
            num_cpus=args.num_cpus,
            max_concurrent_trials=args.max_concurrent_trials,
            reuse_actors=args.reuse_actors,
        )

    return _run_guarded("compare", lambda: None, run)


def add_compare_parser(commands: Any) -> argparse.ArgumentParser:
    """Register ``bissl compare`` on the sub-command parsers of ``bissl_dense.cli``."""
    from mmengine.config import DictAction

    parser = commands.add_parser(
        "compare",
        help="FT vs BiSSL+FT (and baselines): search, seeds, table with permutation tests",
        description="Run the arms (SPEC §4, §6): each a Ray Tune random search over lr and weight "
        "decay, then N seeds at the chosen configuration, every trial a fine-tuning run of "
        "--task-config; then a report with the table (mean ± std, difference, exact permutation "
        "test) and plots. Rerun the same command to resume.",
    )
    parser.add_argument("--task-config", required=True, help="fine-tuning config of the task")
    parser.add_argument("--backbone", required=True, help="pretext backbone file")
    parser.add_argument("--head", help="pretext head file (BiSSL arms)")
    parser.add_argument("--warmup-config", help="head warm-up config (BiSSL arms)")
    parser.add_argument("--bissl-config", help="BiSSL config (BiSSL arms)")
    parser.add_argument(
        "--weighted-sum-config",
        help="weighted-sum config inheriting the BiSSL config (weighted_sum arms; default: "
        "derived from --bissl-config)",
    )
    parser.add_argument(
        "--data-mix-config",
        help="data-mix config inheriting the BiSSL config (data_mix arm; default: derived from "
        "--bissl-config)",
    )
    parser.add_argument("--work-dir", required=True, help="output directory (resumable)")
    parser.add_argument(
        "--arms",
        default="ft,bissl",
        help="comma-separated: ft bissl ij_discarded nu1 lambda_<value> random_init "
        "linear_probe zero_head noisytune weighted_sum weighted_sum_<w> data_mix "
        "(default ft,bissl)",
    )
    parser.add_argument("--num-samples", type=int, default=100, help="search configurations")
    parser.add_argument("--seeds", type=_seeds, default=list(range(10)), help="number of seeds")
    parser.add_argument("--mode", choices=["max", "min"], default="max", help="of the val metric")
    parser.add_argument("--address", help="Ray cluster address (default: a local Ray)")
    parser.add_argument("--num-cpus", type=int, help="CPUs of the local Ray (default all)")
    parser.add_argument("--cpus-per-trial", type=float, default=1.0)
    parser.add_argument("--gpus-per-trial", type=float, help="default 1 when there are GPUs")
    parser.add_argument("--max-concurrent-trials", type=int)
    parser.add_argument("--noisytune-scale", type=float, default=0.15)
    parser.add_argument(
        "--reuse-actors",
        action="store_true",
        help="run several trials in one Ray worker process (saves each trial's start-up: "
        "importing torch and building the registries; worth it for short trials)",
    )
    for flag, what in (
        ("--cfg-options", "every stage"),
        ("--finetune-options", "the fine-tuning runs"),
        ("--warmup-options", "the head warm-up"),
        ("--bissl-options", "the BiSSL runs (and the weighted-sum and data-mix runs)"),
    ):
        parser.add_argument(
            flag, nargs="+", action=DictAction, default={}, metavar="KEY=VALUE",
            help=f"config overrides of {what}",
        )  # fmt: skip
    parser.set_defaults(func=_compare)
    return parser
