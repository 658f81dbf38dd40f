"""``tools/train_net.py``: detection warm-up, BiSSL and fine-tuning as detectron2 users run them.

    python tools/train_net.py --config-file configs/voc_bissl.yaml --num-gpus 8 \\
        DATASETS.VOC_ROOT /data/VOCdevkit MODEL.WEIGHTS work_dirs/.../model_final.pth
    python tools/train_net.py --config-file ... --resume        # continue a killed run exactly
    python tools/train_net.py --config-file ... --eval-only MODEL.WEIGHTS model_final.pth

detectron2's own argument parser (``--config-file``, ``--num-gpus``, ``--num-machines``,
``--machine-rank``, ``--dist-url``, ``--resume``, ``--eval-only``, trailing ``KEY VALUE``
overrides); ``detectron2.engine.launch`` starts the worker processes (on CPU: gloo). ``BISSL.STAGE``
picks the trainer. At the end, AP/AP50/AP75 on ``DATASETS.TEST`` (detectron2's
``PascalVOCDetectionEvaluator``) go to ``OUTPUT_DIR/BISSL.RESULTS_FILE`` (JSON).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["main", "parse_args", "preflight", "run", "setup"]

logger = logging.getLogger(__name__)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    from detectron2.engine import default_argument_parser

    parser = default_argument_parser(
        epilog="BiSSL stages: BISSL.STAGE warmup | bissl | finetune (see configs/detection/)."
    )
    return parser.parse_args(None if argv is None else list(argv))


def setup(args: argparse.Namespace) -> Any:
    """Config (``_BASE_`` chain + overrides, checked), VOC registration, logging, output dir."""
    from detectron2.engine import default_setup

    from bissl_dense.detection.config import load_config
    from bissl_dense.detection.data import register_voc, register_voc_val_split

    cfg = load_config(args.config_file, args.opts)
    if cfg.DATASETS.VOC_ROOT:
        register_voc(cfg.DATASETS.VOC_ROOT)
    register_voc_val_split(cfg)  # DATASETS.VAL_FRACTION > 0: voc_0712_val and the rest
    if cfg.SEED < 0:  # detectron2 would seed every process differently: replicas must agree
        cfg.SEED = int(cfg.BISSL.SEED)
    cfg.freeze()
    default_setup(cfg, args)
    return cfg


def preflight(args: argparse.Namespace) -> None:
    """The config and data checks, once in the launching process before any worker starts.

    A missing data folder or a bad key then ends in one ``train_net: error:`` line instead of a
    traceback from each of the ``--num-gpus`` workers (``launch`` re-raises theirs).
    """
    from bissl_dense.detection.config import load_config
    from bissl_dense.detection.data import check_voc_data, voc_val_split

    cfg = load_config(args.config_file, args.opts)
    check_voc_data(cfg)
    if float(cfg.DATASETS.VAL_FRACTION) > 0:  # written here once, before the workers read it
        voc_val_split(cfg)


def run(args: argparse.Namespace) -> dict[str, dict[str, float]]:
    """One process's work (``launch`` calls this on every process)."""
    from detectron2.utils import comm

    from bissl_dense.detection.evaluation import evaluate_voc, write_results
    from bissl_dense.detection.model import build_detector
    from bissl_dense.detection.trainer import BiSSLTrainer, FinetuneTrainer

    cfg = setup(args)
    if args.eval_only:
        model = build_detector(cfg)
        model.eval()
        results = {name: evaluate_voc(cfg, model, name) for name in cfg.DATASETS.TEST}
        iteration = 0
    elif cfg.BISSL.STAGE == "bissl":
        trainer = BiSSLTrainer(cfg)
        trainer.resume_or_load(resume=args.resume)
        trainer.train()
        results, iteration = trainer.evaluation, trainer.iter
    else:
        trainer = FinetuneTrainer(cfg)
        trainer.resume_or_load(resume=args.resume)
        trainer.train()
        # DefaultTrainer returns its results only with TEST.EXPECTED_RESULTS; its EvalHook keeps
        # the last ones here
        raw = getattr(trainer, "_last_eval_results", None) or {}
        if "bbox" in raw:  # DefaultTrainer.test unwraps the results of a single test set
            raw = {cfg.DATASETS.TEST[0]: raw}
        results = {name: dict(r["bbox"]) for name, r in raw.items() if "bbox" in r}
        iteration = trainer.iter
    if comm.is_main_process():
        path = write_results(
            Path(cfg.OUTPUT_DIR) / cfg.BISSL.RESULTS_FILE,
            results,
            iteration=iteration,
            extra={
                "stage": "eval" if args.eval_only else cfg.BISSL.STAGE,
                "config_file": str(args.config_file),
                "weights": str(cfg.MODEL.WEIGHTS),
                "num_processes": comm.get_world_size(),
            },
        )
        for name, metrics in results.items():
            logger.info("%s: %s", name, metrics)
            print(
                f"[bissl detection] {name}: "
                + ", ".join(f"{k} {v:.2f}" for k, v in metrics.items())
            )
        print(f"[bissl detection] results written to {path}")
    return results


def main(argv: Sequence[str] | None = None) -> int:
    from detectron2.engine import launch

    from bissl_dense.errors import UserError

    args = parse_args(argv)
    try:
        preflight(args)
        launch(
            run,
            args.num_gpus,
            num_machines=args.num_machines,
            machine_rank=args.machine_rank,
            dist_url=args.dist_url,
            args=(args,),
        )
    except UserError as error:
        print(f"train_net: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
