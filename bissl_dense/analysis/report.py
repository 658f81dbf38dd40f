"""The alignment analysis of ``bissl analyze`` (SPEC §7, paper §5 and App. B.10), task-agnostic.

Given the backbones before fine-tuning (pretext, BiSSL) and their fine-tuned versions (one per
seed), it computes the paper's Table 9 and Figure 3/4 material:

- parameter CS (eq. 12) between each backbone and each of its fine-tuned versions, mean ± std
  over the fine-tuned seeds;
- feature CS (eq. 13: per test sample, averaged) between the same pairs, after re-estimating the
  BatchNorm statistics of the backbones *before* fine-tuning on downstream training batches
  (the fine-tuned ones already carry downstream statistics);
- a t-SNE plot of the test features of the backbones before fine-tuning, coloured by class.

The input modules are not modified: BatchNorm re-estimation runs on copies.
"""

from __future__ import annotations

import copy
import csv
import io
import json
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bissl_dense.analysis.alignment import (
    Forward,
    extract_features,
    feature_cosine_similarity,
    parameter_cosine_similarity,
    reestimate_batchnorm,
    tsne_embedding,
)
from bissl_dense.fileio import atomic_write_text
from bissl_dense.reports.plots import plot_tsne
from bissl_dense.reports.statistics import summarize

__all__ = ["AlignmentRow", "AlignmentResult", "analyze_alignment"]


@dataclass(frozen=True)
class AlignmentRow:
    """One backbone (e.g. "pretext") against its fine-tuned versions."""

    backbone: str
    parameter_cs: tuple[float, ...]
    feature_cs: tuple[float, ...]

    def summary(self) -> dict[str, float]:
        out = {}
        for name, values in (("parameter_cs", self.parameter_cs), ("feature_cs", self.feature_cs)):
            s = summarize(values)
            out[f"{name}_mean"], out[f"{name}_std"] = s.mean, s.std
        return out


@dataclass(frozen=True)
class AlignmentResult:
    rows: tuple[AlignmentRow, ...]
    files: dict[str, Path]

    def to_markdown(self, digits: int = 4) -> str:
        lines = [
            "| backbone ↔ fine-tuned | n | parameter CS (mean ± std) | feature CS (mean ± std) |",
            "|---|---:|---:|---:|",
        ]
        for row in self.rows:
            s = row.summary()
            cells = []
            for name in ("parameter_cs", "feature_cs"):
                std = "n/a" if math.isnan(s[f"{name}_std"]) else f"{s[f'{name}_std']:.{digits}f}"
                cells.append(f"{s[f'{name}_mean']:.{digits}f} ± {std}")
            lines.append(f"| {row.backbone} | {len(row.parameter_cs)} | {cells[0]} | {cells[1]} |")
        lines += [
            "",
            "CS: cosine similarity of the flattened backbone parameters (paper eq. 12) "
            "and of the test features, per sample and averaged (eq. 13), over the "
            "fine-tuned seeds.",
        ]
        return "\n".join(lines) + "\n"

    def to_csv(self) -> str:
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(["backbone", "kind", "seed_index", "cosine_similarity"])
        for row in self.rows:
            for kind, values in (("parameter", row.parameter_cs), ("feature", row.feature_cs)):
                for index, value in enumerate(values):
                    writer.writerow([row.backbone, kind, index, repr(value)])
        return buffer.getvalue()

    def to_json(self) -> str:
        def finite(value: float) -> float | None:
            return value if math.isfinite(value) else None

        rows = [
            {
                "backbone": r.backbone,
                "parameter_cs": list(r.parameter_cs),
                "feature_cs": list(r.feature_cs),
                **{k: finite(v) for k, v in r.summary().items()},
            }
            for r in self.rows
        ]
        return json.dumps({"rows": rows}, indent=2, allow_nan=False) + "\n"


def analyze_alignment(
    backbones: Mapping[str, tuple[nn.Module, Sequence[nn.Module]]],
    train_batches: Callable[[], Iterable[Any]],
    test_batches: Callable[[], Iterable[Any]],
    out_dir: str | Path,
    *,
    num_bn_batches: int | None = None,
    forward: Forward | None = None,
    device: torch.device | str | None = None,
    tsne_seed: int = 0,
    class_names: Sequence[str] | None = None,
) -> AlignmentResult:
    """Compute the alignment table and the t-SNE plot; write them under ``out_dir``.

    ``backbones`` maps a name ("pretext", "BiSSL") to (backbone before fine-tuning, its
    fine-tuned backbones). ``train_batches``/``test_batches`` are factories returning fresh
    iterables of (inputs, labels) batches of the downstream training and test sets;
    ``num_bn_batches`` caps the batches used for BatchNorm re-estimation. Writes
    ``alignment.{md,csv,json}`` and ``tsne.png``.
    """
    if not backbones:
        raise ValueError("no backbones to analyse")
    out_dir = Path(out_dir)
    rows, embeddings = [], {}
    for name, (before, finetuned) in backbones.items():
        if not finetuned:
            raise ValueError(f"backbone {name!r} has no fine-tuned versions to compare with")
        parameter_cs = tuple(parameter_cosine_similarity(before, ft) for ft in finetuned)
        calibrated = copy.deepcopy(before)
        reestimate_batchnorm(calibrated, train_batches(), num_bn_batches, forward, device)
        features, labels = extract_features(calibrated, test_batches(), forward, device)
        feature_cs = tuple(
            feature_cosine_similarity(
                features, extract_features(ft, test_batches(), forward, device)[0]
            )
            for ft in finetuned
        )
        rows.append(AlignmentRow(name, parameter_cs, feature_cs))
        if labels is None:
            raise ValueError("test batches must be (inputs, labels) pairs to colour the t-SNE plot")
        embeddings[name] = (tsne_embedding(features, seed=tsne_seed), labels.numpy())
    result = AlignmentResult(tuple(rows), {})
    files = {
        "md": out_dir / "alignment.md",
        "csv": out_dir / "alignment.csv",
        "json": out_dir / "alignment.json",
    }
    atomic_write_text(files["md"], result.to_markdown())
    atomic_write_text(files["csv"], result.to_csv())
    atomic_write_text(files["json"], result.to_json())
    titles = {f"{name} backbone (test features)": value for name, value in embeddings.items()}
    files["tsne"] = plot_tsne(titles, out_dir / "tsne.png", class_names)
    return AlignmentResult(result.rows, files)
