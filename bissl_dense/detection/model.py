"""The Faster R-CNN R50-C4 detector of SPEC §5 on detectron2, initialised explicitly.

* ``Res5ROIHeadsExtraNorm``: detectron2's ``Res5ROIHeads`` with one more norm layer after res5,
  as in the standard SSL transfer recipe (MoCo's VOC C4 config names this head). The extra norm
  belongs to the downstream head φ_D (it has no torchvision counterpart).
* :func:`build_detector` builds the model from the config and loads ``MODEL.WEIGHTS`` with our
  own reader: a ``.pkl`` through the restricted unpickler, a ``.pth`` with
  ``torch.load(weights_only=True)``. ``MODEL.WEIGHTS: random`` keeps detectron2's random
  initialisation (it must be written out; an empty value is refused by the config check).
"""

from __future__ import annotations

import logging

from detectron2.config import CfgNode
from detectron2.layers import get_norm
from detectron2.modeling import build_model
from detectron2.modeling.roi_heads import ROI_HEADS_REGISTRY, Res5ROIHeads
from torch import nn

from bissl_dense.detection.correspondence import torchvision_name
from bissl_dense.detection.weights import load_c4_weights

__all__ = [
    "Res5ROIHeadsExtraNorm",
    "build_detector",
    "freeze_backbone_and_res5",
    "frozen_modules",
]

logger = logging.getLogger(__name__)


if "Res5ROIHeadsExtraNorm" not in ROI_HEADS_REGISTRY:

    @ROI_HEADS_REGISTRY.register()
    class Res5ROIHeadsExtraNorm(Res5ROIHeads):
        """``Res5ROIHeads`` with a norm layer (``MODEL.RESNETS.NORM``) after res5."""

        @classmethod
        def _build_res5_block(cls, cfg: CfgNode) -> tuple[nn.Sequential, int]:
            blocks, out_channels = super()._build_res5_block(cfg)
            blocks.add_module("norm", get_norm(cfg.MODEL.RESNETS.NORM, out_channels))
            return blocks, out_channels

else:  # a second import of this module (e.g. importlib test collection): reuse the class
    Res5ROIHeadsExtraNorm = ROI_HEADS_REGISTRY.get("Res5ROIHeadsExtraNorm")


def frozen_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The modules the head warm-up freezes: the backbone (res2-res4) and res5's blocks.

    Exactly the modules whose parameters are the pretext backbone's (θ, torchvision ``conv1`` ...
    ``layer4``). The extra norm after res5 (``roi_heads.res5.norm`` of
    :class:`Res5ROIHeadsExtraNorm`) has no torchvision counterpart: it is part of the downstream
    head φ_D, which BiSSL and fine-tuning train in train mode, so the warm-up trains it too
    (SPEC §1 step 2: the downstream head is fitted on the frozen backbone). Frozen, it would stay
    the identity in eval mode during the warm-up, and the box predictor would be warmed up on
    un-normalised features and then see standardised ones from the first BiSSL step.
    """
    out: list[tuple[str, nn.Module]] = [("backbone", model.backbone)]
    for name, child in model.roi_heads.res5.named_children():
        full = f"roi_heads.res5.{name}"
        names = [f"{full}.{p}" for p, _ in child.named_parameters()]
        if names and all(torchvision_name(n) is not None for n in names):
            out.append((full, child))
    return out


def freeze_backbone_and_res5(model: nn.Module) -> None:
    """The head warm-up (SPEC §1 step 2): backbone and res5 fixed, their BatchNorm statistics
    too; the RPN, the box predictor and the extra norm after res5 are trained
    (:func:`frozen_modules`)."""
    for _, module in frozen_modules(model):
        module.requires_grad_(False)
        module.eval()
        # keep them in eval mode whatever model.train() does later
        module.train = lambda mode=True, _m=module: _m  # type: ignore[method-assign]


def build_detector(cfg: CfgNode, load_weights: bool = True) -> nn.Module:
    """The detector of ``cfg`` with ``MODEL.WEIGHTS`` loaded (see the module docstring)."""
    model = build_model(cfg)
    if load_weights and cfg.MODEL.WEIGHTS and cfg.MODEL.WEIGHTS != "random":
        report = load_c4_weights(model, cfg.MODEL.WEIGHTS)
        logger.info(
            "loaded %d tensors from %s; kept the initialisation of %d (%s...)",
            len(report["loaded"]),
            cfg.MODEL.WEIGHTS,
            len(report["not_in_file"]),
            ", ".join(report["not_in_file"][:4]),
        )
    if cfg.MODEL.ROI_HEADS.FREEZE_RES5:
        freeze_backbone_and_res5(model)
    return model
