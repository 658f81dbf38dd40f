"""``bissl data check``: read a dataset as a run would and report what was found, before a long run.

    bissl data check --dataset pets --root /data [--split-dir splits/] [--seed 0] [--download]

Prints the dataset folder, the classes (count and the first few), the size of every split, the
split rule, the split convention found (official lists; splits drawn here, kept in
``<split-dir>/<name>_seed<seed>.json``; or the BiSSL authors' index files
``<split-dir>/<name>_{train,val[,test]}_split.txt``) and the split file(s); checks that every
image file of every split exists and that the first image of each split decodes. A missing or
broken dataset gets one message (the path looked at and the layout expected) and exit status 2.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from bissl_dense.errors import UserError
from classification.datasets.base import SPLITS, DatasetLayoutError
from classification.datasets.build import (
    AUTHOR_BASE_ORDER,
    DATASETS,
    build_splits,
    verify_files,
)

__all__ = ["DatasetReport", "check_dataset", "format_report", "main_check"]

SHOWN_CLASSES = 5


@dataclass(frozen=True)
class DatasetReport:
    name: str
    title: str
    root: Path
    classes: list[str]
    sizes: dict[str, int]
    split_rule: str
    split_file: Path | None
    split_file_reused: bool
    multilabel: bool
    convention: str = "official"  # classification.datasets.splits.CONVENTIONS
    split_files: tuple[Path, ...] = ()
    unused: int = 0  # authors' convention: images of the indexed set in none of the files


def check_dataset(
    name: str,
    root: str | Path,
    seed: int = 0,
    split_dir: str | Path | None = None,
    download: bool = False,
) -> DatasetReport:
    """Build every split, check every image file exists and one image per split decodes."""
    root = Path(root).expanduser()
    spec = DATASETS[name] if name in DATASETS else None
    reused = False
    if spec is not None and split_dir is not None:
        reused = (Path(split_dir).expanduser() / f"{name}_seed{seed}.json").exists()
    splits = build_splits(name, root, seed=seed, split_dir=split_dir, download=download)
    assert spec is not None  # build_splits refused an unknown name
    for dataset in splits.values():
        verify_files(dataset, root)
        if len(dataset) == 0:
            raise DatasetLayoutError(
                f"{spec.title} under {root}: the {dataset.split} split is empty"
            )
        try:
            dataset[0]
        except OSError as error:  # PIL.UnidentifiedImageError is an OSError
            raise DatasetLayoutError(
                f"{spec.title} under {root}: the first {dataset.split} image cannot be read "
                f"({error})"
            ) from error
    first = splits["train"]
    rule, unused = spec.split_rule, 0
    if first.split_convention == "authors-index":
        named = "train / val / test" if spec.scheme == "caltech" else "train / val"
        rule = (
            f"{named} = the authors' index files (positions in the {AUTHOR_BASE_ORDER[name]}); "
            + ("" if spec.scheme == "caltech" else "test = the official test set; ")
            + "trainval = train + val; the seed is not used"
        )
        indexed = len(first._pools[0])  # the set the indices count in
        unused = (
            indexed
            - len(splits["trainval"])
            - (len(splits["test"]) if spec.scheme == "caltech" else 0)
        )
    return DatasetReport(
        name=name,
        title=spec.title,
        root=root,
        classes=first.classes,
        sizes={split: len(splits[split]) for split in SPLITS},
        split_rule=rule,
        split_file=first.split_file,
        split_file_reused=reused and first.split_file is not None,
        multilabel=first.multilabel,
        convention=first.split_convention,
        split_files=first.split_files,
        unused=unused,
    )


def format_report(report: DatasetReport) -> str:
    shown = ", ".join(report.classes[:SHOWN_CLASSES])
    more = ", ..." if len(report.classes) > SHOWN_CLASSES else ""
    convention = {
        "official": "official lists",
        "generated": "drawn here (no --split-dir: not kept)",
        "bissl-json": "drawn here, kept in a bissl split file",
        "authors-index": "the BiSSL authors' index files",
    }[report.convention]
    if report.convention == "authors-index":
        split_file = ", ".join(str(path) for path in report.split_files)
        if report.unused:
            split_file += f" ({report.unused} indexed images in none of them)"
    elif report.split_file is None:
        split_file = "none needed (official splits)" if report.convention == "official" else "none"
    else:
        action = "reused" if report.split_file_reused else "written"
        split_file = f"{report.split_file} ({action})"
    kind = "  [multi-label]" if report.multilabel else ""
    lines = [
        f"dataset:    {report.name} ({report.title}){kind}",
        f"root:       {report.root}",
        f"classes:    {len(report.classes)}: {shown}{more}",
        "splits:     " + "  ".join(f"{split} {report.sizes[split]}" for split in SPLITS),
        f"split rule: {report.split_rule}",
        f"convention: {convention}",
        f"split file: {split_file}",
        "OK: every image file of every split is present",
    ]
    return "\n".join(lines)


def main_check(args: argparse.Namespace, out: TextIO | None = None) -> int:
    """The ``bissl data check`` command: 0 when the dataset is usable, 2 (one message) if not."""
    out = out or sys.stdout
    try:
        report = check_dataset(
            args.dataset,
            args.root,
            seed=args.seed,
            split_dir=args.split_dir,
            download=args.download,
        )
    except UserError as error:
        print(f"bissl data check: error: {error}", file=sys.stderr)
        return 2
    print(format_report(report), file=out)
    return 0
