"""``bissl analyze``: the alignment analysis (SPEC §7) of a finished comparison.

Backbones before fine-tuning (``--pretext``, ``--bissl`` weight files) are compared with their
fine-tuned versions (the work directories of fine-tuning runs, each holding ``best.pth``, the
best-validation checkpoint) by ``analyze_alignment``: parameter CS, feature CS on the test split
of ``--config`` after re-estimating BatchNorm statistics on its training split, and t-SNE plots.
The data loaders are the config's own (``test_dataloader``, ``train_dataloader``), so the
features are those of the images fine-tuning was evaluated on.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

__all__ = ["add_analyze_parser", "run_analyze"]


def _pairs(loader: Iterable[Any]) -> Iterator[tuple[Any, Any]]:
    """(inputs, labels) from a classification loader's batches (tuples or mmengine dicts)."""
    for batch in loader:
        if isinstance(batch, dict):
            yield batch["inputs"], batch.get("data_samples", batch.get("targets"))
        else:
            yield batch[0], batch[1]


def _finetuned_file(path: Path) -> Path:
    if path.is_dir() or (not path.exists() and not path.suffix):  # a (missing) work dir
        path = path / "best.pth"
    if not path.is_file():
        from bissl_dense.errors import DataError

        raise DataError(f"no fine-tuned weights '{path}' (a fine-tuning work dir holds best.pth)")
    return path


def run_analyze(
    config: str | Path,
    pretext: str | Path,
    bissl: str | Path,
    ft_pretext: list[str | Path],
    ft_bissl: list[str | Path],
    out: str | Path,
    cfg_options: dict[str, Any] | None = None,
    num_bn_batches: int | None = None,
    device: str | None = None,
) -> Any:
    """Build the backbones and loaders from ``config``; run ``analyze_alignment`` into ``out``."""
    from mmengine.runner import Runner

    from bissl_dense.analysis.report import analyze_alignment
    from bissl_dense.engine.runner import load_config
    from bissl_dense.pretext.backbones import build_backbone
    from bissl_dense.pretext.weights import load_backbone_into

    cfg = load_config(config, cfg_options or {}, Path(out) / "work")
    arch = dict(cfg.model.get("backbone") or {})

    def backbone(path: str | Path) -> Any:
        module, _ = build_backbone(**arch)
        load_backbone_into(module, path)
        return module.to(device) if device is not None else module

    groups = {
        "pretext": (backbone(pretext), [backbone(_finetuned_file(Path(p))) for p in ft_pretext]),
        "BiSSL": (backbone(bissl), [backbone(_finetuned_file(Path(p))) for p in ft_bissl]),
    }
    train_loader = Runner.build_dataloader(cfg.train_dataloader)
    test_loader = Runner.build_dataloader(cfg.test_dataloader)
    if len(train_loader) == 0:
        from bissl_dense.errors import ConfigError

        raise ConfigError(
            f"the training split of {config} gives no batch to re-estimate BatchNorm statistics "
            f"on ({len(train_loader.dataset)} images, train_dataloader.batch_size="
            f"{train_loader.batch_size}, drop_last); lower train_dataloader.batch_size"
        )
    classes = getattr(getattr(test_loader.dataset, "base", None), "classes", None)
    result = analyze_alignment(
        groups,
        lambda: _pairs(train_loader),
        lambda: _pairs(test_loader),
        out,
        num_bn_batches=num_bn_batches,
        device=device,
        class_names=list(classes) if classes else None,
    )
    print(result.to_markdown(), flush=True)
    for kind, path in sorted(result.files.items()):
        print(f"{kind}: {path}")
    return result


def _analyze(args: argparse.Namespace) -> int:
    from bissl_dense.cli import _run_guarded  # one-line messages for UserError, exit status 2

    def run(_: object) -> None:
        run_analyze(
            args.config,
            args.pretext,
            args.bissl,
            args.ft_pretext,
            args.ft_bissl,
            args.out,
            dict(args.cfg_options),
            args.num_bn_batches,
            args.device,
        )

    return _run_guarded("analyze", lambda: None, run)


def add_analyze_parser(commands: Any) -> argparse.ArgumentParser:
    """Register ``bissl analyze`` on the sub-command parsers of ``bissl_dense.cli``."""
    from mmengine.config import DictAction

    parser = commands.add_parser(
        "analyze",
        help="alignment analysis: parameter/feature cosine similarity, t-SNE (SPEC §7)",
        description="Cosine similarity of backbone parameters and of test features between the "
        "pretext / BiSSL backbones and their fine-tuned versions (BatchNorm re-estimated on "
        "training batches first), and t-SNE plots; writes alignment.{md,csv,json} and tsne.png.",
    )
    parser.add_argument("--pretext", required=True, help="pretext backbone file")
    parser.add_argument("--bissl", required=True, help="BiSSL lower backbone file")
    parser.add_argument(
        "--ft-pretext", nargs="+", required=True, help="fine-tuning work dirs (or best.pth) from it"
    )
    parser.add_argument(
        "--ft-bissl", nargs="+", required=True, help="fine-tuning work dirs (or best.pth) from it"
    )
    parser.add_argument("--config", required=True, help="fine-tuning config (data, backbone arch)")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--num-bn-batches", type=int, help="cap on BN re-estimation batches")
    parser.add_argument("--device", help="e.g. cuda:0 (default CPU)")
    parser.add_argument(
        "--cfg-options", nargs="+", action=DictAction, default={}, metavar="KEY=VALUE",
        help="config overrides (e.g. data roots)",
    )  # fmt: skip
    parser.set_defaults(func=_analyze)
    return parser
