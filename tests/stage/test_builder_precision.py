"""Channels-last in the BiSSL stage's wiring (issue 13): NHWC backbones get NHWC inputs from the
losses the builder makes, and compute the update of the contiguous stage.

The stage comparison runs in float64. In float32 on CPU the NHWC ResNet-18 gradient is less
accurate than the NCHW one (measured against float64 on a random-init ResNet-18 at 16 px:
1.4e-3 vs 1.1e-5 relative; a single BasicBlock's BatchNorm weight gradient 5.7e-6 vs 1.3e-6,
CPU NHWC BatchNorm backward reductions), so a float32 comparison would measure PyTorch's CPU
kernels, not the wiring; in float64 both layouts agree to rounding (3e-14 on the same model).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from bissl_dense.core import BiSSLConfig
from bissl_dense.pretext.backbones import build_backbone
from bissl_dense.pretext.methods import SimCLR
from bissl_dense.stage import build_bilevel_step
from bissl_dense.stage.builder import images_to_channels_last, is_channels_last
from classification.task import image_classification_task
from tests.stage._small import BACKBONE, SMALL_HEAD


def test_is_channels_last_tells_the_formats_apart() -> None:
    nhwc, _ = build_backbone("resnet18", channels_last=True)
    nchw, _ = build_backbone("resnet18")
    assert is_channels_last(nhwc.parameters())
    assert not is_channels_last(nchw.parameters())
    # a 1×1 kernel is contiguous in both formats: it decides nothing
    assert not is_channels_last([torch.zeros(8, 4, 1, 1).to(memory_format=torch.channels_last)])


def test_images_to_channels_last_converts_images_only() -> None:
    images = torch.randn(2, 3, 5, 5)
    raw = torch.zeros(3, 5, 5, dtype=torch.uint8)  # an mmseg input before its preprocessor
    labels = torch.tensor([0, 1])
    out = images_to_channels_last({"inputs": [images, raw], "x": (images, labels), "meta": "m"})
    converted = [out["inputs"][0], out["x"][0]]
    for t in converted:
        assert t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous()
        assert torch.equal(t, images)
    assert out["inputs"][1] is raw and out["x"][1] is labels and out["meta"] == "m"
    assert isinstance(out["inputs"], list) and isinstance(out["x"], tuple)


def _stage(channels_last: bool):
    torch.manual_seed(0)
    backbone = {**BACKBONE, "channels_last": channels_last}
    pretext = SimCLR(backbone=backbone, projector=SMALL_HEAD).double()
    task = image_classification_task(pretext.backbone, num_classes=3, backbone=backbone)
    task.model.double()
    step = build_bilevel_step(
        task,
        pretext,
        BiSSLConfig(alternations=1, lower_steps=1, upper_steps=1, cg_iters=1),
        upper_lr=0.05,
        upper_weight_decay=1e-4,
        lower_lr=1.0,
    )
    return pretext, task, step


def _record_input_format(module: nn.Module, seen: list[bool]) -> None:
    def hook(_: nn.Module, inputs: tuple[Tensor, ...]) -> None:
        seen.append(inputs[0].is_contiguous(memory_format=torch.channels_last))

    module.register_forward_pre_hook(hook)


def test_channels_last_stage_feeds_nhwc_and_gives_the_contiguous_update() -> None:
    g = torch.Generator().manual_seed(0)  # 4 images of 8 px: layer4 still sees 1×1 × 4 samples
    labelled_batch = (torch.randn(4, 3, 8, 8, generator=g).double(), torch.tensor([0, 1, 2, 0]))
    hessian_batch = {"inputs": [torch.randn(4, 3, 8, 8, generator=g).double() for _ in range(2)]}
    updates = {}
    for channels_last in (False, True):
        pretext, task, step = _stage(channels_last)
        lower_seen: list[bool] = []
        upper_seen: list[bool] = []
        _record_input_format(pretext.backbone.conv1, lower_seen)
        _record_input_format(task.model.backbone.conv1, upper_seen)
        assert is_channels_last(pretext.backbone.parameters()) is channels_last
        assert is_channels_last(task.model.backbone.parameters()) is channels_last
        before = [p.detach().clone() for p in task.model.parameters()]
        pretext.train()
        task.model.train()
        step.upper_step(labelled_batch, hessian_batch)
        # the Hessian batch's 2 views (the lower loss); upper: the θ_U and the θ_L pass
        assert lower_seen == [channels_last] * 2
        assert upper_seen == [channels_last] * 2
        updates[channels_last] = torch.cat(
            [(p.detach() - b).flatten() for p, b in zip(task.model.parameters(), before)]
        )
    # NHWC kernels sum in another order: float64 rounding only (a misplaced axis is O(1) off)
    error = (updates[True] - updates[False]).norm() / updates[False].norm()
    assert error < 1e-10, error
