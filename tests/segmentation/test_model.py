"""FCN-16 on mmseg (SPEC §5): stride 16, dilated res5, the one-to-one correspondence with the
pretext ResNet-50, and the config file equal to the builder."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from mmengine.config import Config

from bissl_dense.pretext.backbones import build_backbone
from bissl_dense.segmentation.model import backbone_mismatches, build_segmentor, fcn_d6_r50_d16
from bissl_dense.segmentation.task import segmentation_task

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def segmentor() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_segmentor(fcn_d6_r50_d16(5, dropout_ratio=0.0)).eval()


def test_logits_at_stride_16_and_res5_dilated(segmentor: torch.nn.Module) -> None:
    images = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        (features,) = segmentor.extract_feat(images)
        logits = segmentor(images, mode="tensor")
    assert features.shape == (1, 2048, 4, 6)  # 64/16 x 96/16
    assert logits.shape == (1, 5, 4, 6)
    res5 = segmentor.backbone.layer4
    # torchvision's replace_stride_with_dilation layout: block 0 dilation 1, stride 1; the rest 2
    assert res5[0].conv2.stride == (1, 1) and res5[0].downsample[0].stride == (1, 1)
    assert all(block.conv2.dilation == (2, 2) for block in list(res5)[1:])
    assert segmentor.backbone.layer3[0].conv2.stride == (2, 2)  # res4 keeps its stride
    head = segmentor.decode_head
    assert [c.conv.dilation for c in head.convs] == [(6, 6), (6, 6)]
    assert [c.conv.out_channels for c in head.convs] == [256, 256]
    assert head.conv_seg.kernel_size == (1, 1)


def test_backbone_names_and_shapes_match_torchvision_one_to_one(
    segmentor: torch.nn.Module,
) -> None:
    lower, _ = build_backbone("resnet50")
    assert backbone_mismatches(lower, segmentor) == []
    upper = {k: v.shape for k, v in segmentor.named_parameters() if k.startswith("backbone.")}
    assert {f"backbone.{k}": v.shape for k, v in lower.named_parameters()} == upper
    # the check does catch a mismatch: ResNetV1c's deep stem has other names
    v1c_backbone = {k: v for k, v in fcn_d6_r50_d16(5)["backbone"].items() if k != "deep_stem"}
    v1c = build_segmentor(dict(fcn_d6_r50_d16(5), backbone=dict(v1c_backbone, type="ResNetV1c")))
    problems = backbone_mismatches(lower, v1c)
    assert "conv1.weight: only in the pretext backbone" in problems
    assert "backbone.stem.0.weight: only in the segmenter" in problems


def test_task_starts_from_the_pretext_backbone_which_keeps_its_strides() -> None:
    torch.manual_seed(0)
    lower, _ = build_backbone("resnet50")
    with torch.no_grad():
        for buffer in lower.buffers():
            if buffer.dtype.is_floating_point:
                buffer.uniform_(0.5, 1.5)
    task = segmentation_task(lower, segmentor=fcn_d6_r50_d16(3, dropout_ratio=0.0))
    upper = task.model.state_dict()
    for name, value in lower.state_dict().items():
        assert torch.equal(upper[f"backbone.{name}"], value), name
    assert dict(task.correspondence) == {n: f"backbone.{n}" for n, _ in lower.named_parameters()}
    assert lower.layer4[0].conv2.stride == (2, 2) and lower.layer4[1].conv2.dilation == (1, 1)


def test_task_refuses_a_frozen_or_mismatched_backbone() -> None:
    from bissl_dense.errors import ConfigError

    lower, _ = build_backbone("resnet50")
    with pytest.raises(ConfigError, match="frozen_stages=-1"):
        segmentation_task(lower, segmentor=fcn_d6_r50_d16(3, frozen_stages=4, norm_eval=True))
    small, _ = build_backbone("resnet18")
    with pytest.raises(ConfigError, match="plain ResNet-50"):
        segmentation_task(small, segmentor=fcn_d6_r50_d16(3))


def test_model_config_file_equals_the_builder() -> None:
    cfg = Config.fromfile(str(ROOT / "configs/segmentation/_base_/models/fcn_d6_r50_d16.py"))
    expected = fcn_d6_r50_d16(21, norm_type="SyncBN")
    expected["decode_head"]["num_classes"] = None  # set by each data set's config
    assert cfg.model.to_dict() == expected
