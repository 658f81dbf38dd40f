"""``bissl export``: a backbone in the weight format of a downstream framework (and back).

    bissl export BACKBONE --to detectron2 --out FILE.pkl    # torchvision names -> detectron2 C4
    bissl export FILE.pkl --to torchvision --out FILE.pth   # detectron2 C4 -> torchvision names

Converters live in a registry (:data:`CONVERTERS`, :func:`register_converter`) so that other
targets (``--to mmseg``...) plug in without touching the command. Every converter checks the
converted keys against the target layout of a ResNet-50 and fails naming the missing and
unexpected keys; input files are read without unpickling arbitrary objects (``.pth`` with
``torch.load(weights_only=True)``, ``.pkl`` with a restricted unpickler); output is atomic.
"""

from __future__ import annotations

import argparse
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from bissl_dense.errors import WeightsError

__all__ = ["CONVERTERS", "add_export_parser", "export_backbone", "register_converter"]

Converter = Callable[[Path, Path, str], Path]
"""``(input file, output file, arch) -> written file``."""

CONVERTERS: dict[str, Converter] = {}


def register_converter(target: str) -> Callable[[Converter], Converter]:
    """Register ``fn`` as the converter for ``bissl export --to target``."""

    def decorate(fn: Converter) -> Converter:
        if target in CONVERTERS:
            raise ValueError(f"a converter for {target!r} is already registered")
        CONVERTERS[target] = fn
        return fn

    return decorate


def _listed(keys: Iterable[str], limit: int = 12) -> str:
    keys = sorted(keys)
    more = f" ... ({len(keys) - limit} more)" if len(keys) > limit else ""
    return f"{keys[:limit]}{more}"


def check_keys(state: Mapping[str, Any], expected: Iterable[str], source: str, layout: str) -> None:
    """Fail naming the missing and unexpected keys of ``state`` against ``expected``."""
    expected = set(expected)
    # timm's files omit BatchNorm's num_batches_tracked counters; loading keeps the model's
    missing = {k for k in expected - set(state) if not k.endswith("num_batches_tracked")}
    unexpected = set(state) - expected
    if missing or unexpected:
        lines = [f"{source} does not match the {layout} layout:"]
        for what, keys in (("missing", missing), ("unexpected", unexpected)):
            if keys:
                by_module = Counter(k.split(".")[0] for k in keys)
                modules = ", ".join(f"{m}.* ({n})" for m, n in sorted(by_module.items()))
                lines.append(f"  {what} keys ({len(keys)}; {modules}): {_listed(keys)}")
        raise WeightsError("\n".join(lines))


def _torchvision_keys(arch: str) -> list[str]:
    from bissl_dense.pretext.backbones import build_backbone

    backbone, _ = build_backbone(arch=arch)
    return list(backbone.state_dict())


@register_converter("detectron2")
def to_detectron2(source: Path, out: Path, arch: str = "resnet50") -> Path:
    """torchvision-named backbone → detectron2 ``.pkl`` with the C4 detector's full names
    (``backbone.*``, ``roi_heads.res5.*``), ``matching_heuristics: False``."""
    from bissl_dense.detection.correspondence import convert_state
    from bissl_dense.detection.weights import save_detectron2_pkl
    from bissl_dense.pretext.weights import load_backbone_state

    if out.suffix != ".pkl":
        raise WeightsError(f"--out {str(out)!r}: detectron2 reads this format from a .pkl file")
    try:
        state = load_backbone_state(source)
    except ValueError as err:
        raise WeightsError(str(err)) from err
    check_keys(state, _torchvision_keys(arch), repr(str(source)), f"torchvision {arch}")
    converted = convert_state(state, "detectron2", source=repr(str(source)))
    return save_detectron2_pkl(converted, out, author="bissl export")


@register_converter("torchvision")
def to_torchvision(source: Path, out: Path, arch: str = "resnet50") -> Path:
    """detectron2 C4 names (our ``.pkl``, or a detector checkpoint ``.pth``) → torchvision."""
    import numpy as np
    import torch

    from bissl_dense.detection.correspondence import convert_state
    from bissl_dense.detection.weights import read_detectron2_state
    from bissl_dense.fileio import atomic_torch_save

    raw = read_detectron2_state(source)
    converted = convert_state(raw, "torchvision", source=repr(str(source)))
    check_keys(converted, _torchvision_keys(arch), repr(str(source)), f"torchvision {arch}")
    tensors = {
        k: (
            v.detach().cpu().clone()
            if isinstance(v, torch.Tensor)
            else torch.from_numpy(np.array(v))
        )
        for k, v in converted.items()
    }
    atomic_torch_save(tensors, out)
    return out


def export_backbone(source: str | Path, to: str, out: str | Path, arch: str = "resnet50") -> Path:
    """Convert ``source`` with the converter registered for ``to``."""
    if to not in CONVERTERS:
        raise WeightsError(f"--to {to!r}: no converter; available: {sorted(CONVERTERS)}")
    source = Path(source)
    if not source.is_file():
        raise WeightsError(f"weight file {str(source)!r} does not exist")
    return CONVERTERS[to](source, Path(out), arch)


def _run(args: argparse.Namespace) -> int:
    import sys

    try:
        path = export_backbone(args.backbone, args.to, args.out, args.arch)
    except WeightsError as error:
        print(f"bissl export: error: {error}", file=sys.stderr)
        return 2
    print(f"bissl export: wrote {path}")
    return 0


def add_export_parser(commands: Any) -> argparse.ArgumentParser:
    """Add ``export`` to ``bissl``'s sub-commands (from :func:`bissl_dense.cli.build_parser`)."""
    parser = commands.add_parser(
        "export",
        help="convert a backbone to a downstream framework's weight format (and back)",
        description="Write a backbone in the format a downstream framework reads: "
        "--to detectron2 (a .pkl detectron2's checkpointer loads into the R50-C4 detector, "
        "res5 included), --to torchvision (the reverse), --to mmseg (a checkpoint with "
        "backbone.* keys for mmseg's ResNet) or --to mmdet (the same, for the C4 backbone and "
        "shared head). A file that does not fit names the missing and unexpected keys.",
    )
    parser.add_argument("backbone", help="input weight file (.pth/.safetensors/.pkl)")
    parser.add_argument("--to", required=True, choices=sorted(CONVERTERS), help="target format")
    parser.add_argument("--out", required=True, help="output file (.pkl for detectron2)")
    parser.add_argument("--arch", default="resnet50", help="ResNet architecture (default resnet50)")
    parser.set_defaults(func=_run)
    return parser


# Converters of the OpenMMLab task packages register themselves (``--to mmseg``, ``--to mmdet``).
import bissl_dense.segmentation.export  # noqa: E402,F401
