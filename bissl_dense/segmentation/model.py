"""FCN-16 on a dilated ResNet-50 in mmseg's layout (SPEC §5; paper App. B.7).

The segmenter is mmseg's own ``EncoderDecoder`` with mmseg's *plain* ``ResNet`` and an
``FCNHead``, i.e. mmseg's ``fcn-d6_r50-d16`` layout:

* backbone: ``ResNet(depth=50, style="pytorch")`` whose parameter names are torchvision's
  (``conv1``, ``bn1``, ``layer1.0.conv1`` ...), strides (1, 2, 2, 1) and dilations (1, 1, 1, 2):
  res5 keeps stride 1 and runs with dilation 2, so the output stride is 16. ``contract_dilation``
  gives res5's first block dilation 1, as torchvision's ``replace_stride_with_dilation`` does.
  ``ResNetV1c`` is not used: its deep stem (``stem.0`` ...) has other names, and the pretext
  backbone is a torchvision ResNet-50;
* head: two 3×3 convolutions with dilation 6 and 256 channels, each followed by BatchNorm and
  ReLU, then a 1×1 classifier (``concat_input=False``: the head sees only res5's output).

The pretext (lower) backbone of BiSSL is the undilated torchvision network; only the *parameters*
correspond one to one (``backbone.<name>`` ↔ ``<name>``), which :func:`backbone_mismatches`
checks.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "backbone_mismatches",
    "build_segmentor",
    "fcn_d6_r50_d16",
    "register_mmseg",
]

# RGB ImageNet statistics in 0..255 (the pretext backbone was trained on RGB, ImageNet-normalised)
IMAGENET_MEAN = [123.675, 116.28, 103.53]
IMAGENET_STD = [58.395, 57.12, 57.375]


def register_mmseg() -> None:
    """Register mmseg's modules (idempotent) without changing the default scope."""
    from mmseg.utils import register_all_modules

    register_all_modules(init_default_scope=False)


def fcn_d6_r50_d16(
    num_classes: int,
    *,
    norm_type: str = "BN",
    dropout_ratio: float = 0.1,
    frozen_stages: int = -1,
    norm_eval: bool = False,
    pretrained: str | None = None,
    depth: int = 50,
) -> dict[str, Any]:
    """The ``EncoderDecoder`` config of FCN-16 (dilated ResNet-50 + FCN head), as a plain dict.

    Args:
        num_classes: classes of the 1×1 classifier (21 for VOC, 19 for Cityscapes).
        norm_type: ``"BN"`` (one process, CPU) or ``"SyncBN"`` (the standard transfer recipe).
        dropout_ratio: dropout before the classifier (mmseg's default 0.1).
        frozen_stages: 4 with ``norm_eval=True`` freezes the whole backbone (head warm-up).
        pretrained: a backbone file with torchvision names (our pretext / BiSSL exports).
        depth: 50 (the paper's); 18 only to keep CPU tests fast (its res5 has 512 channels).
    """
    norm_cfg = dict(type=norm_type, requires_grad=True)
    backbone: dict[str, Any] = dict(
        type="ResNet",
        depth=int(depth),
        num_stages=4,
        out_indices=(3,),
        strides=(1, 2, 2, 1),
        dilations=(1, 1, 1, 2),
        style="pytorch",
        contract_dilation=True,
        deep_stem=False,
        norm_cfg=norm_cfg,
        norm_eval=norm_eval,
        frozen_stages=frozen_stages,
    )
    if pretrained:
        backbone["init_cfg"] = dict(type="Pretrained", checkpoint=pretrained)
    return dict(
        type="EncoderDecoder",
        data_preprocessor=dict(
            type="SegDataPreProcessor",
            mean=IMAGENET_MEAN,
            std=IMAGENET_STD,
            bgr_to_rgb=True,
            pad_val=0,
            seg_pad_val=255,
            # images of one batch differ in size after the short-side resize: pad to a multiple
            # of 32 (the standard recipe's fixed crops set size=crop_size instead)
            size_divisor=32,
        ),
        backbone=backbone,
        decode_head=dict(
            type="FCNHead",
            in_channels=2048 if int(depth) >= 50 else 512,
            in_index=0,
            channels=256,
            num_convs=2,
            kernel_size=3,
            dilation=6,
            concat_input=False,
            dropout_ratio=dropout_ratio,
            num_classes=int(num_classes),
            norm_cfg=norm_cfg,
            align_corners=False,
            loss_decode=dict(
                type="CrossEntropyLoss", use_sigmoid=False, loss_weight=1.0, avg_non_ignore=True
            ),
        ),
        train_cfg=dict(),
        test_cfg=dict(mode="whole"),
    )


def build_segmentor(cfg: Mapping[str, Any]) -> nn.Module:
    """Build an mmseg model from its config through mmseg's registry.

    The default scope is mmseg while building: mmengine's ``BaseModel`` builds its data
    preprocessor from the *current* scope's registry.
    """
    from mmengine.config import ConfigDict
    from mmengine.registry import DefaultScope
    from mmseg.registry import MODELS

    register_mmseg()
    with DefaultScope.overwrite_default_scope("mmseg"):
        # ConfigDict: mmdet reads nested settings as attributes (train_cfg.rpn)
        return MODELS.build(ConfigDict(dict(cfg)))


def backbone_mismatches(
    lower_backbone: nn.Module, upper_model: nn.Module, prefix: str = "backbone."
) -> list[str]:
    """Entries (parameters and buffers) where ``upper_model``'s ``prefix`` sub-tree and the
    pretext backbone differ in name or shape; empty when they correspond one to one."""
    lower = {k: tuple(v.shape) for k, v in lower_backbone.state_dict().items()}
    upper = {
        k[len(prefix) :]: tuple(v.shape)
        for k, v in upper_model.state_dict().items()
        if k.startswith(prefix)
    }
    problems = [f"{k}: only in the pretext backbone" for k in sorted(set(lower) - set(upper))]
    problems += [f"{prefix}{k}: only in the segmenter" for k in sorted(set(upper) - set(lower))]
    problems += [
        f"{k}: {lower[k]} vs {prefix}{k}: {upper[k]}"
        for k in sorted(set(lower) & set(upper))
        if lower[k] != upper[k]
    ]
    return problems
