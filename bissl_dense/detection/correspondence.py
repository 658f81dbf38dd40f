"""torchvision ResNet-50 ↔ detectron2 Faster R-CNN C4 parameter names (SPEC §5, issue 10 part 3).

BiSSL keeps the backbone twice: θ_L in the pretext model (torchvision names, the published files'
names) and θ_U in the detector. In detectron2's R50-C4 the first four ResNet stages are the
``backbone`` and the fifth lives in the RoI head (``Res5ROIHeads.res5``), so BiSSL's implicit
gradient must reach res5 there too. The rules, applied to every parameter and buffer name:

=========================  ======================================
torchvision                detectron2 (C4)
=========================  ======================================
``conv1.*``                ``backbone.stem.conv1.*``
``bn1.*``                  ``backbone.stem.conv1.norm.*``
``layerN.*`` (N = 1..3)    ``backbone.res{N+1}.*``
``layer4.*``               ``roi_heads.res5.*``
``…downsample.0.*``        ``…shortcut.*``
``…downsample.1.*``        ``…shortcut.norm.*``
``…bnK.*`` (in a block)    ``…convK.norm.*``
=========================  ======================================

The same function converts weights both ways (:func:`convert_state`), and
:func:`c4_correspondence` checks the mapping against the two models at start-up, naming every
parameter that has no counterpart. Nothing here imports detectron2.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Literal, TypeVar

from torch import nn

from bissl_dense.core import BackboneCorrespondence, CorrespondenceError
from bissl_dense.errors import WeightsError

__all__ = [
    "Direction",
    "c4_correspondence",
    "convert_state",
    "detectron2_name",
    "torchvision_name",
]

Direction = Literal["detectron2", "torchvision"]
V = TypeVar("V")

_BLOCK = re.compile(r"^layer([1-4])\.(\d+)\.(.+)$")
_D2_BLOCK = re.compile(r"^(?:backbone\.res([2-4])|roi_heads\.res(5))\.(\d+)\.(.+)$")
_STAGE_PREFIX = {
    "1": "backbone.res2",
    "2": "backbone.res3",
    "3": "backbone.res4",
    "4": "roi_heads.res5",
}


def _block_part_to_d2(rest: str) -> str | None:
    match = re.fullmatch(r"bn([1-3])\.(.+)", rest)
    if match:
        return f"conv{match[1]}.norm.{match[2]}"
    match = re.fullmatch(r"conv([1-3])\.(.+)", rest)
    if match:
        return rest
    match = re.fullmatch(r"downsample\.([01])\.(.+)", rest)
    if match:
        return ("shortcut." if match[1] == "0" else "shortcut.norm.") + match[2]
    return None


def _block_part_to_tv(rest: str) -> str | None:
    match = re.fullmatch(r"conv([1-3])\.norm\.(.+)", rest)
    if match:
        return f"bn{match[1]}.{match[2]}"
    match = re.fullmatch(r"shortcut\.norm\.(.+)", rest)
    if match:
        return f"downsample.1.{match[1]}"
    match = re.fullmatch(r"shortcut\.(.+)", rest)
    if match:
        return f"downsample.0.{match[1]}"
    match = re.fullmatch(r"conv([1-3])\.(.+)", rest)
    if match:
        return rest
    return None


def detectron2_name(name: str) -> str | None:
    """The detectron2 C4 name of a torchvision ResNet name (None if it has none, e.g. ``fc.*``)."""
    for tv, d2 in (("conv1.", "backbone.stem.conv1."), ("bn1.", "backbone.stem.conv1.norm.")):
        if name.startswith(tv):
            return d2 + name[len(tv) :]
    match = _BLOCK.match(name)
    if not match:
        return None
    part = _block_part_to_d2(match[3])
    return None if part is None else f"{_STAGE_PREFIX[match[1]]}.{match[2]}.{part}"


def torchvision_name(name: str) -> str | None:
    """The torchvision name of a detectron2 C4 backbone/res5 name (None for the heads)."""
    for d2, tv in (("backbone.stem.conv1.norm.", "bn1."), ("backbone.stem.conv1.", "conv1.")):
        if name.startswith(d2):
            return tv + name[len(d2) :]
    match = _D2_BLOCK.match(name)
    if not match:
        return None
    stage = int(match[1] or match[2]) - 1
    part = _block_part_to_tv(match[4])
    return None if part is None else f"layer{stage}.{match[3]}.{part}"


def convert_state(
    state: Mapping[str, V], to: Direction, *, source: str = "the state dict"
) -> dict[str, V]:
    """Rename a backbone state dict to detectron2 C4 names or back to torchvision names.

    Values are passed through untouched (tensors or numpy arrays), so the round trip is exact.
    When converting to torchvision names, detector entries outside the backbone and res5 (RPN,
    box predictor, ``pixel_mean``...) are dropped: they are not part of a ResNet.

    Raises:
        WeightsError: ``state`` has keys that belong to no ResNet stage (when converting to
            detectron2) or no key of the other format at all; the message lists them.
    """
    if to not in ("detectron2", "torchvision"):
        raise ValueError(f"convert_state: to must be 'detectron2' or 'torchvision', got {to!r}")
    rename = detectron2_name if to == "detectron2" else torchvision_name
    out: dict[str, V] = {}
    unknown: list[str] = []
    for key, value in state.items():
        new = rename(key)
        if new is None:
            if to == "detectron2" and not key.startswith("fc."):
                unknown.append(key)
            continue
        out[new] = value
    if unknown:
        raise WeightsError(
            f"{source}: {len(unknown)} keys are not torchvision ResNet names and have no "
            f"detectron2 C4 counterpart: {unknown[:12]}{' ...' if len(unknown) > 12 else ''}. "
            "Pass a torchvision-named ResNet-50 backbone (e.g. a Pretext_*_backbone file)."
        )
    if not out and state:
        raise WeightsError(
            f"{source}: none of its {len(state)} keys is a "
            f"{'torchvision ResNet' if to == 'detectron2' else 'detectron2 C4 backbone/res5'} "
            f"name (first keys: {list(state)[:5]}); is it already in {to} format?"
        )
    return out


def c4_correspondence(lower_backbone: nn.Module, detector: nn.Module) -> dict[str, str]:
    """The checked lower→upper parameter mapping for BiSSL on a detectron2 C4 detector.

    Every trainable parameter of the torchvision ``lower_backbone`` must have a counterpart in
    ``detector`` with the same shape, res5 included. The check runs at start-up and fails with
    the names of what is missing (e.g. a detector built without res5 in its RoI head, or a
    stage the mapping does not reach).

    Raises:
        CorrespondenceError: listing the unmapped lower parameters and the detector's backbone
            parameters that nothing maps to.
    """
    mapping: dict[str, str] = {}
    no_rule: list[str] = []
    for name, _ in lower_backbone.named_parameters():
        target = detectron2_name(name)
        if target is None:
            no_rule.append(name)
        else:
            mapping[name] = target
    upper = dict(detector.named_parameters())
    missing_in_detector = sorted(t for t in mapping.values() if t not in upper)
    targets = set(mapping.values())
    # Detector parameters with a ResNet name that nothing maps to (the extra norm after res5 of
    # Res5ROIHeadsExtraNorm has none: it is part of the downstream head).
    unreached = sorted(
        name for name in upper if torchvision_name(name) is not None and name not in targets
    )
    if no_rule or missing_in_detector or unreached:
        problems = []
        if no_rule:
            problems.append(f"lower backbone parameters with no C4 name rule: {no_rule}")
        if missing_in_detector:
            problems.append(
                f"C4 names the detector does not have ({len(missing_in_detector)}): "
                f"{missing_in_detector}"
            )
        if unreached:
            problems.append(
                f"detector backbone/res5 parameters no lower parameter maps to "
                f"({len(unreached)}): {unreached}"
            )
        raise CorrespondenceError(
            "torchvision ResNet ↔ detectron2 C4 correspondence is incomplete:\n  - "
            + "\n  - ".join(problems)
            + "\nThe detector must be a ResNet-50 C4 (res2–res4 in backbone, res5 in "
            "roi_heads, MODEL.RESNETS.NORM='BN'/'SyncBN', STRIDE_IN_1X1=False) and the lower "
            "backbone a torchvision ResNet-50."
        )
    BackboneCorrespondence(lower_backbone, detector, mapping)  # shapes and uniqueness
    return mapping
