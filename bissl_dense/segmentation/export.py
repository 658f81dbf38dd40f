"""``bissl export BACKBONE --to mmseg|mmdet``: a backbone as an OpenMMLab initialisation checkpoint.

The file is ``{"state_dict": {"backbone.<torchvision name>": tensor}, "meta": {...}}``, written
atomically, and loads through ``init_cfg=dict(type="Pretrained", checkpoint=FILE,
prefix="backbone.")`` (mmengine strips the prefix):

* mmseg: on the FCN's plain ``ResNet`` backbone, every tensor matched;
* mmdet R50-C4: on the backbone (res2–res4) *and* on ``roi_head.shared_head`` (its ``layer4`` is
  res5, SPEC §5), each taking its own entries, so res5 comes from our backbone, never from caffe
  weights.

mmseg and mmdet name the plain ResNet as torchvision does, so the conversion is a prefix; the
keys are checked against a torchvision ResNet-50 first.
"""

from __future__ import annotations

from pathlib import Path

from bissl_dense.errors import WeightsError
from bissl_dense.export import _torchvision_keys, check_keys, register_converter

__all__ = ["PREFIX", "to_openmmlab"]

PREFIX = "backbone."


def to_openmmlab(source: Path, out: Path, arch: str = "resnet50", target: str = "mmseg") -> Path:
    """torchvision-named backbone → ``{"state_dict": {"backbone.*": ...}, "meta": ...}``."""
    from bissl_dense.fileio import atomic_torch_save
    from bissl_dense.pretext.weights import load_backbone_state

    if out.suffix != ".pth":
        raise WeightsError(f"--out {str(out)!r}: {target} reads this format from a .pth file")
    try:
        state = load_backbone_state(source)
    except ValueError as err:
        raise WeightsError(str(err)) from err
    check_keys(state, _torchvision_keys(arch), repr(str(source)), f"torchvision {arch}")
    converted = {PREFIX + k: v.detach().cpu().contiguous() for k, v in state.items()}
    meta = {
        "source": str(source),
        "arch": arch,
        "target": target,
        "init_cfg": f"dict(type='Pretrained', checkpoint=..., prefix='{PREFIX}')",
    }
    atomic_torch_save({"state_dict": converted, "meta": meta}, out)
    return out


@register_converter("mmseg")
def to_mmseg(source: Path, out: Path, arch: str = "resnet50") -> Path:
    """For mmseg's ``ResNet`` backbone (``init_cfg`` with ``prefix="backbone."``)."""
    return to_openmmlab(source, out, arch, "mmseg")


@register_converter("mmdet")
def to_mmdet(source: Path, out: Path, arch: str = "resnet50") -> Path:
    """For mmdet's R50-C4: the same file, loaded by the backbone and the shared head."""
    return to_openmmlab(source, out, arch, "mmdet")
