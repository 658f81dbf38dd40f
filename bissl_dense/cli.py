"""The ``bissl`` console script: one sub-command per pipeline stage (SPEC §1).

    bissl pretrain CONFIG [--work-dir DIR] [--cfg-options k=v ...] [--resume] [--launcher ...]
    bissl fit-head --backbone FILE --config CONFIG [same options]

Multi-GPU: ``torchrun --nproc_per_node=N tools/pretrain.py CONFIG --launcher pytorch``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable


def _add_run_options(parser: argparse.ArgumentParser) -> None:
    from mmengine.config import DictAction

    parser.add_argument("--work-dir", help="output directory (default: work_dirs/<config name>)")
    parser.add_argument(
        "--cfg-options",
        nargs="+",
        action=DictAction,
        default={},
        metavar="KEY=VALUE",
        help="override config entries, e.g. train_dataloader.dataset.data_root=/data/train "
        "train_cfg.max_iters=100 (keys must exist in the config)",
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue from the last checkpoint in the work directory (same steps, lr, data order)",
    )
    parser.add_argument(
        "--launcher",
        choices=["none", "pytorch", "slurm", "mpi"],
        default="none",
        help="'pytorch' under torchrun for multi-GPU training",
    )
    # torch.distributed.launch passes --local-rank; torchrun uses the LOCAL_RANK variable.
    parser.add_argument("--local-rank", "--local_rank", type=int, default=0, help=argparse.SUPPRESS)


def _run_guarded(command: str, build: Callable[[], object], run: Callable[[object], None]) -> int:
    """Build and run; a problem the user can fix is reported in one line (exit status 2).

    Only :class:`~bissl_dense.errors.UserError` (a bad config, missing data, wrong weights) is
    turned into a one-line message: its text says what to change. Every other exception is a bug
    (or an environment failure) and propagates with its traceback.
    """
    from bissl_dense.errors import UserError

    try:
        run(build())
    except UserError as error:
        print(f"bissl {command}: error: {error}", file=sys.stderr)
        return 2
    return 0


def _pretrain(args: argparse.Namespace) -> int:
    from bissl_dense.engine.runner import build_runner, load_config

    return _run_guarded(
        "pretrain",
        lambda: build_runner(
            load_config(args.config, args.cfg_options, args.work_dir, args.resume, args.launcher)
        ),
        lambda runner: runner.train(),  # type: ignore[attr-defined]
    )


def _fit_head(args: argparse.Namespace) -> int:
    from bissl_dense.engine.runner import build_runner, fit_head_options, load_config

    def build() -> object:
        options = fit_head_options(args.backbone, args.cfg_options)
        return build_runner(
            load_config(args.config, options, args.work_dir, args.resume, args.launcher)
        )

    return _run_guarded("fit-head", build, lambda runner: runner.train())  # type: ignore[attr-defined]


def _train(args: argparse.Namespace) -> int:
    from bissl_dense.engine.runner import build_runner, load_config

    return _run_guarded(
        "train",
        lambda: build_runner(
            load_config(args.config, args.cfg_options, args.work_dir, args.resume, args.launcher)
        ),
        lambda runner: runner.train(),  # type: ignore[attr-defined]
    )


def _test(args: argparse.Namespace) -> int:
    from bissl_dense.engine.runner import evaluate_checkpoint

    return _run_guarded(
        "test",
        lambda: evaluate_checkpoint(
            args.config, args.checkpoint, args.work_dir, args.cfg_options, args.out, args.launcher
        ),
        lambda _: None,
    )


def _data_check(args: argparse.Namespace) -> int:
    from classification.datasets.check import main_check

    return main_check(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bissl",
        description="BiSSL: a bilevel stage between self-supervised pretraining and fine-tuning.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    pretrain = commands.add_parser(
        "pretrain",
        help="pretext pretraining (SimCLR/BYOL) from a config; exports the published files",
        description="Pretext pretraining with mmengine. Writes checkpoints, logs (TensorBoard) "
        "and, at the end, <work_dir>/export/Pretext_<task>_arch-<arch>_{backbone,head,config}.",
    )
    pretrain.add_argument(
        "config", help="config file, e.g. configs/pretext/simclr_resnet50_imagenet1k.py"
    )
    _add_run_options(pretrain)
    pretrain.set_defaults(func=_pretrain)

    fit_head = commands.add_parser(
        "fit-head",
        help="fit a new projection head (and BYOL predictor) on a frozen pretrained backbone",
        description="Paper App. C.6: train only the pretext head on a frozen off-the-shelf "
        "backbone (torchvision/timm state dict, published backbone file or .safetensors), "
        "with the pretext config's data and schedule, then export.",
    )
    fit_head.add_argument("--backbone", required=True, help="backbone weight file")
    fit_head.add_argument("--config", required=True, help="pretext config file")
    _add_run_options(fit_head)
    fit_head.set_defaults(func=_fit_head)

    # `bissl data check`: classification datasets (classification/datasets/check.py)
    data = commands.add_parser("data", help="classification datasets: check one before a run")
    data_commands = data.add_subparsers(dest="data_command", required=True, metavar="SUBCOMMAND")
    data_check = data_commands.add_parser(
        "check",
        help="read a dataset as a run would; print its classes and split sizes, or what is missing",
        description="Read a classification dataset from its on-disk layout with the paper's "
        "splits (SPEC §5), check every image file, and print the classes and split sizes. "
        "Exit status 2 with the path looked at and the layout expected if it is missing.",
    )
    data_check.add_argument(
        "--dataset",
        required=True,
        metavar="NAME",
        help="food101 cifar10 cifar100 cub200 sun397 cars aircraft voc2007 dtd pets caltech101 "
        "flowers",
    )
    data_check.add_argument(
        "--root", required=True, help="the folder you would give torchvision (e.g. /data)"
    )
    data_check.add_argument(
        "--download", action="store_true", help="fetch a missing dataset with torchvision"
    )
    data_check.add_argument(
        "--split-dir",
        help="read the authors' index files <name>_{train,val[,test]}_split.txt from here if "
        "present; else write the generated splits here (<name>_seed<seed>.json) or reuse them",
    )
    data_check.add_argument("--seed", type=int, default=0, help="validation hold-out seed")
    data_check.set_defaults(func=_data_check)

    train = commands.add_parser(
        "train",
        help="run any stage's config: pretext, head warm-up, BiSSL, fine-tuning",
        description="Train from an mmengine config (as tools/train.py). Checkpoints are atomic and "
        "weights-only; --resume continues at the exact step, also inside a BiSSL upper stage.",
    )
    train.add_argument("config", help="config file, e.g. configs/classification/bissl_simclr_*.py")
    _add_run_options(train)
    train.set_defaults(func=_train)

    test = commands.add_parser(
        "test",
        help="evaluate a checkpoint with a config's test data and metric",
        description="Evaluate CHECKPOINT on the config's test split (as tools/test.py); prints the "
        "metrics and writes them to <work_dir>/test_results.json (or --out).",
    )
    test.add_argument("config", help="config file of the model and its test data")
    test.add_argument("checkpoint", help="checkpoint file (read with weights_only=True)")
    test.add_argument("--out", help="JSON file for the metrics")
    _add_run_options(test)
    test.set_defaults(func=_test)

    # `bissl compare` / `bissl analyze` (issue 9: bissl_dense/experiments, bissl_dense/analysis)
    from bissl_dense.analysis.cli import add_analyze_parser
    from bissl_dense.experiments.compare import add_compare_parser

    add_compare_parser(commands)
    add_analyze_parser(commands)

    # `bissl demo` (make demo): the whole pipeline on built-in data (bissl_dense/demo.py)
    from bissl_dense.demo import add_demo_parser

    add_demo_parser(commands)

    # `bissl export BACKBONE --to detectron2|torchvision --out FILE` (bissl_dense/export.py)
    from bissl_dense.export import add_export_parser

    add_export_parser(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
