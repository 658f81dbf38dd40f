"""torchvision ResNet-50 ↔ detectron2 C4 names: the rules of the issue, both directions, and the
start-up check against a real C4 detector (names of anything missing)."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torchvision.models import resnet50

from bissl_dense.core import CorrespondenceError
from bissl_dense.detection.correspondence import (
    c4_correspondence,
    convert_state,
    detectron2_name,
    torchvision_name,
)
from bissl_dense.errors import WeightsError


@pytest.mark.parametrize(
    ("tv", "d2"),
    [
        ("conv1.weight", "backbone.stem.conv1.weight"),
        ("bn1.running_var", "backbone.stem.conv1.norm.running_var"),
        ("layer1.0.conv1.weight", "backbone.res2.0.conv1.weight"),
        ("layer1.0.bn2.bias", "backbone.res2.0.conv2.norm.bias"),
        ("layer2.3.bn3.weight", "backbone.res3.3.conv3.norm.weight"),
        ("layer3.5.conv3.weight", "backbone.res4.5.conv3.weight"),
        ("layer3.0.downsample.0.weight", "backbone.res4.0.shortcut.weight"),
        ("layer3.0.downsample.1.running_mean", "backbone.res4.0.shortcut.norm.running_mean"),
        ("layer4.0.downsample.1.weight", "roi_heads.res5.0.shortcut.norm.weight"),
        ("layer4.2.bn1.num_batches_tracked", "roi_heads.res5.2.conv1.norm.num_batches_tracked"),
    ],
)
def test_name_rules_both_ways(tv: str, d2: str) -> None:
    assert detectron2_name(tv) == d2
    assert torchvision_name(d2) == tv


def test_heads_have_no_resnet_name() -> None:
    assert detectron2_name("fc.weight") is None
    for name in (
        "proposal_generator.rpn_head.conv.weight",
        "roi_heads.box_predictor.cls_score.weight",
        "roi_heads.res5.norm.weight",  # the extra norm of Res5ROIHeadsExtraNorm: head, not ResNet
        "pixel_mean",
    ):
        assert torchvision_name(name) is None


def test_full_resnet50_state_round_trips_exactly() -> None:
    state = resnet50().state_dict()
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    d2 = convert_state(state, "detectron2")
    assert len(d2) == len(state) == 318  # 159 parameters + 3 buffers x 53 BatchNorms
    assert sum(k.startswith("roi_heads.res5.") for k in d2) == sum(
        k.startswith("layer4.") for k in state
    )
    back = convert_state(d2, "torchvision")
    assert list(back) == list(state)
    assert all(back[k] is state[k] for k in state)  # values untouched: the round trip is exact


def test_converting_a_foreign_state_names_its_keys() -> None:
    with pytest.raises(WeightsError, match=r"encoder\.0\.weight"):
        convert_state({"encoder.0.weight": torch.zeros(1)}, "detectron2")
    with pytest.raises(WeightsError, match="none of its 1 keys"):
        convert_state({"rpn.weight": torch.zeros(1)}, "torchvision")


def test_c4_detector_correspondence_and_missing_stage_names(tmp_path) -> None:  # noqa: ANN001
    from tests.detection._d2 import require_detectron2

    require_detectron2()
    from detectron2.modeling import build_model

    from bissl_dense.detection.config import load_config
    from tests.detection._d2 import TINY_CONFIG

    cfg = load_config(str(TINY_CONFIG), ["MODEL.WEIGHTS", "random"])
    detector = build_model(cfg)
    lower = resnet50()
    lower.fc = nn.Identity()
    mapping = c4_correspondence(lower, detector)
    assert len(mapping) == 159
    assert mapping["layer4.2.conv3.weight"] == "roi_heads.res5.2.conv3.weight"

    # a detector whose RoI head lost res5's last block: the check names what is missing
    detector.roi_heads.res5 = nn.Sequential(*list(detector.roi_heads.res5.children())[:2])
    with pytest.raises(CorrespondenceError) as info:
        c4_correspondence(lower, detector)
    message = str(info.value)
    assert "roi_heads.res5.2.conv1.weight" in message
    assert "roi_heads.res5.2.conv3.norm.bias" in message
    assert "roi_heads.res5.1.conv1.weight" not in message

    # a lower backbone without layer4: the detector's res5 parameters are named as unreached
    lower.layer4 = nn.Identity()
    detector = build_model(cfg)
    with pytest.raises(CorrespondenceError, match=r"roi_heads\.res5\.0\.conv1\.weight"):
        c4_correspondence(lower, detector)
