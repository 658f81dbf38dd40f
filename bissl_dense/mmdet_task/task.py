"""Faster R-CNN R50-C4 on mmdet as BiSSL's upper model (SPEC §5).

In the C4 detector the pretext backbone is split in two: res2–res4 are mmdet's ``ResNet``
backbone (``num_stages=3``) and res5 is the RoI box head's ``ResLayer``
(``roi_head.shared_head.layer4``), applied to each RoI before global pooling. The correspondence
is therefore ``layer4.*`` ↔ ``roi_head.shared_head.layer4.*`` and everything else ↔
``backbone.*`` (paper App. B.7: the implicit gradient only needs this one-to-one map). Both parts
are initialised from the pretext backbone here — never from mmdet's caffe weights, which the
shipped base config would load through ``init_cfg``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

from bissl_dense.core import BackboneCorrespondence, prefix_correspondence
from bissl_dense.core.correspondence import CorrespondenceError
from bissl_dense.errors import ConfigError
from bissl_dense.segmentation.task import (
    load_head_from_checkpoint,
    mm_upper_loss,
    run_default_init,
    start_from_pretext_backbone,
)
from bissl_dense.stage import DownstreamTask
from bissl_dense.stage.tasks import register_task

__all__ = ["C4_PREFIXES", "build_detector", "detection_c4_task"]

C4_PREFIXES = {"layer4.": "roi_head.shared_head.layer4.", "": "backbone."}


def build_detector(cfg: Mapping[str, Any]) -> nn.Module:
    """Build an mmdet model through mmdet's registry, in the mmdet scope."""
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules
    from mmengine.config import ConfigDict
    from mmengine.registry import DefaultScope

    register_all_modules(init_default_scope=False)
    with DefaultScope.overwrite_default_scope("mmdet"):
        # ConfigDict: mmdet reads nested settings as attributes (train_cfg.rpn)
        return MODELS.build(ConfigDict(dict(cfg)))


@register_task("DetectionC4Task")
def detection_c4_task(
    lower_backbone: nn.Module,
    detector: Mapping[str, Any],
    head_checkpoint: str | None = None,
) -> DownstreamTask:
    """mmdet ``FasterRCNN`` with a C4 RoI head as the upper model.

    Args:
        lower_backbone: the pretext backbone (torchvision ResNet-50).
        detector: the mmdet model config (``configs/mmdet/_base_/models``); nothing frozen, and
            no ``init_cfg`` on the backbone or the shared head.
        head_checkpoint: the head warm-up's checkpoint (``rpn_head.*``, ``roi_head.bbox_head.*``).
    """
    shared_head = detector.get("roi_head", {}).get("shared_head", {})
    for where, part in (("backbone", detector.get("backbone", {})), ("shared_head", shared_head)):
        if part.get("init_cfg"):
            raise ConfigError(
                f"model.task.detector (its {where}) init_cfg={part['init_cfg']!r}: the BiSSL stage "
                "initialises res2-res5 from the pretext backbone; set init_cfg=None"
            )
    model = build_detector(detector)
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
    if frozen:
        raise ConfigError(
            f"model.task.detector has frozen parameters ({frozen[:3]} ...): BiSSL trains the "
            "whole backbone; set frozen_stages=-1, norm_eval=False and trainable norms"
        )
    correspondence = prefix_correspondence(lower_backbone, C4_PREFIXES)
    try:
        BackboneCorrespondence(lower_backbone, model, correspondence)
    except CorrespondenceError as error:
        raise ConfigError(
            f"the C4 detector does not match the pretext backbone: {error}"
        ) from error
    # mmdet's initialisation first (RPN and box head ~ N(0, 0.01) ...), then the files on top
    run_default_init(model)
    start_from_pretext_backbone(lower_backbone, model, correspondence)
    if head_checkpoint:
        load_head_from_checkpoint(model, head_checkpoint, ("rpn_head.", "roi_head.bbox_head."))
    return DownstreamTask(
        model=model, upper_loss=mm_upper_loss(model), correspondence=correspondence
    )
