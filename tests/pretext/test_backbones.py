"""ResNet backbones keep torchvision's (and timm's) parameter names."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torchvision import models

from bissl_dense.pretext.backbones import build_backbone, canonical_arch


def _without_fc(state: dict[str, torch.Tensor]) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in state.items() if not k.startswith("fc.")}


@pytest.mark.parametrize(
    ("arch", "reference", "feature_dim"),
    [("resnet18", models.resnet18, 512), ("resnet50", models.resnet50, 2048)],
)
def test_names_and_shapes_equal_torchvision(arch: str, reference, feature_dim: int) -> None:
    backbone, dim = build_backbone(arch)
    assert dim == feature_dim
    assert isinstance(backbone.fc, nn.Identity)
    ours = {k: tuple(v.shape) for k, v in backbone.state_dict().items()}
    assert ours == _without_fc(reference(weights=None).state_dict())
    backbone.eval()
    assert backbone(torch.randn(2, 3, 64, 64)).shape == (2, feature_dim)


def test_resnet50_contains_the_published_key_names() -> None:
    keys = set(build_backbone("resnet50")[0].state_dict())
    for key in (
        "conv1.weight",
        "bn1.running_var",
        "layer1.0.downsample.0.weight",
        "layer4.2.bn3.weight",
        "layer4.2.conv3.weight",
    ):
        assert key in keys


def test_timm_resnet_uses_the_same_names_and_computes_the_same_features() -> None:
    import timm

    ours, _ = build_backbone("resnet18")
    timm_model = timm.create_model("resnet18", pretrained=False)
    timm_state = timm_model.state_dict()
    assert {k: tuple(v.shape) for k, v in ours.state_dict().items()} == _without_fc(timm_state)
    # Same weights, same function: timm's pooled pre-logits equal our backbone's output.
    for module in timm_model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.5, 1.5)
    ours.load_state_dict(_strip_fc(timm_model.state_dict()), strict=True)
    ours.eval()
    timm_model.eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = timm_model.forward_head(timm_model.forward_features(x), pre_logits=True)
        torch.testing.assert_close(ours(x), expected)


def _strip_fc(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in state.items() if not k.startswith("fc.")}


def test_aliases_and_unsupported_names() -> None:
    assert canonical_arch("timm/resnet50") == "resnet50"
    assert canonical_arch("resnet50.a1_in1k") == "resnet50"
    assert canonical_arch("TV_ResNet34") == "resnet34"
    assert canonical_arch("resnet101") == "resnet101"
    with pytest.raises(ValueError, match="resnet50d"):
        canonical_arch("resnet50d")
    with pytest.raises(ValueError, match="choose one of"):
        build_backbone("vit_small")


def test_cifar_stem_and_zero_init_residual() -> None:
    backbone, dim = build_backbone("resnet18", cifar_stem=True, zero_init_residual=True)
    assert dim == 512
    assert backbone.conv1.weight.shape == (64, 3, 3, 3) and backbone.conv1.stride == (1, 1)
    assert isinstance(backbone.maxpool, nn.Identity)
    # Same parameter names as the standard stem: only conv1's shape differs.
    standard = build_backbone("resnet18")[0].state_dict()
    assert set(backbone.state_dict()) == set(standard)
    assert all(
        torch.count_nonzero(b.bn2.weight) == 0
        for layer in (backbone.layer1, backbone.layer4)
        for b in layer
    )
    backbone.eval()
    features = backbone.layer1(
        backbone.maxpool(backbone.relu(backbone.bn1(backbone.conv1(torch.randn(1, 3, 32, 32)))))
    )
    assert features.shape[-1] == 32  # no down-sampling in the stem
    assert backbone(torch.randn(2, 3, 32, 32)).shape == (2, 512)
