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
    """Build the run; a config or data problem is reported in one line (exit status 2)."""
    from bissl_dense.engine.runner import ConfigError

    try:
        runner = build()
    except (ConfigError, FileNotFoundError, KeyError, TypeError, ValueError) as error:
        message = error.args[0] if isinstance(error, KeyError) and error.args else error
        print(f"bissl {command}: error: {message}", file=sys.stderr)
        return 2
    run(runner)
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
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
