"""The segmentation task's upper gradient (SPEC §2) against an independent computation.

A batch of the generated VOC aug data, drawn through mmseg's own dataset and ``pseudo_collate``
as the BiSSL loop draws it, feeds one lower step (θ_L moves away from θ_U) and one upper step of
the core (``build_bilevel_step``: the task's ``upper_loss``, the correspondence, the implicit
solver). With the damping δ so large that (I + H/(λ+δ))⁻¹ is the identity to far below the
tolerance, SPEC §2's upper gradient is

    backbone:  ∇θ L_D(θ_L, φ_D) + ∇θ L_D(θ_U, φ_D)      head:  ∇φ L_D(θ_L, φ_D) + ∇φ L_D(θ_U, φ_D)

which :func:`check_upper_gradient` computes independently: two deep copies of the segmenter, one
holding θ_L in its backbone, each run in train mode through mmseg's own data preprocessor and
``mode="loss"``, their losses summed by mmengine's ``parse_losses`` and differentiated with plain
``torch.autograd.grad``. BatchNorm: both upper passes normalise with batch statistics; the θ_U pass
moves the running statistics once, as the copy holding θ_U does, and the θ_L pass must leave them
alone, so the model's buffers after the step must equal that copy's. The same check runs for
mmdet's C4 detector (tests/mmdet_task/test_task.py).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor, nn

from bissl_dense.core import BiSSLConfig
from bissl_dense.errors import ConfigError
from bissl_dense.pretext.methods import PretextMethod, SimCLR
from bissl_dense.segmentation.model import fcn_d6_r50_d16, register_mmseg
from bissl_dense.segmentation.task import segmentation_task
from bissl_dense.stage import DownstreamTask, build_bilevel_step

# (I + H/(λ+δ))⁻¹ = I − H/(λ+δ) + ...: the random networks' pretext Hessian reaches ‖Hg‖/‖g‖ ≈ 1e8
# along the upper gradient (mmdet's res5; 1e5 for the segmenter), so δ = 1e15 leaves the identity
# off by ≲ 1e-7, far below the 1e-4 tolerance; the solver's one iteration then returns v times a
# scalar equal to 1 to float32 precision.
DAMPING = 1e15
TOLERANCE = 1e-4


def voc_batch(voc2012: Path, indices: list[int]) -> dict:
    from mmengine.dataset import pseudo_collate
    from mmengine.registry import DefaultScope
    from mmseg.registry import DATASETS

    register_mmseg()
    pipeline = [
        dict(type="LoadImageFromFile"),
        dict(type="LoadAnnotations"),
        dict(type="Resize", scale=(100000, 64), keep_ratio=True),
        dict(type="PackSegInputs"),
    ]
    with DefaultScope.overwrite_default_scope("mmseg"):
        dataset = DATASETS.build(
            dict(
                type="PascalVOCDataset",
                data_root=str(voc2012),
                data_prefix=dict(img_path="JPEGImages", seg_map_path="SegmentationClassAug"),
                ann_file="ImageSets/Segmentation/aug.txt",
                pipeline=pipeline,
            )  # fmt: skip
        )
        return pseudo_collate([dataset[i] for i in indices])


def plain_gradients(model: nn.Module, batch: Mapping[str, Any]) -> dict[str, Tensor]:
    """∇ of the model's training loss w.r.t. all its parameters, by mmengine's own route (data
    preprocessor, ``mode="loss"``, ``parse_losses``) and one ``torch.autograd.grad``."""
    data = model.data_preprocessor(dict(batch), training=True)
    loss, _ = model.parse_losses(model(data["inputs"], data["data_samples"], mode="loss"))
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    grads = torch.autograd.grad(loss, [p for _, p in named], allow_unused=True)
    return {n: torch.zeros_like(p) if g is None else g for (n, p), g in zip(named, grads)}


def relative_error(actual: Tensor, expected: Tensor) -> float:
    scale = float(expected.norm())
    difference = float((actual - expected).norm())
    return difference / scale if scale > 0 else (0.0 if difference == 0 else float("inf"))


def check_upper_gradient(
    task: DownstreamTask, pretext: PretextMethod, batch: Mapping[str, Any]
) -> dict[str, float]:
    """One lower and one upper step of the core against the independent gradient above.

    Returns the largest per-tensor relative error of the backbone's and the head's gradients
    (asserting they are <= TOLERANCE), and how far apart the two passes' backbone gradients are.
    """
    task.model.train()
    pretext.train()
    config = BiSSLConfig(
        alternations=1, lower_steps=1, upper_steps=1, cg_iters=1, damping=DAMPING,
        grad_clip_norm=None,
    )  # fmt: skip
    # lower lr 20: LARS moves each tensor by ~lr·0.001 of its norm, so θ_L is 2 % from θ_U and the
    # two passes' gradients differ clearly (a test with θ_L = θ_U could not tell them apart)
    step = build_bilevel_step(
        task, pretext, config, upper_lr=0.01, upper_weight_decay=0.0, lower_lr=20.0
    )
    generator = torch.Generator().manual_seed(0)
    views = {"inputs": [torch.randn(4, 3, 16, 16, generator=generator) for _ in range(2)]}
    step.lower_step(views)

    # the independent computation, on copies taken before the upper step
    at_upper = copy.deepcopy(task.model).train()
    at_lower = copy.deepcopy(task.model).train()
    lower_params = dict(pretext.backbone.named_parameters())
    with torch.no_grad():
        for lower_name, upper_name in task.correspondence.items():
            at_lower.get_parameter(upper_name).copy_(lower_params[lower_name])
    buffers_before = {n: b.clone() for n, b in task.model.named_buffers()}
    grad_u = plain_gradients(at_upper, batch)
    grad_l = plain_gradients(at_lower, batch)

    step.upper_step(batch, views)

    backbone = set(task.correspondence.values())
    errors = {"backbone": 0.0, "head": 0.0}
    for name, param in task.model.named_parameters():
        group = "backbone" if name in backbone else "head"
        expected = grad_u[name] + grad_l[name]
        errors[group] = max(errors[group], relative_error(param.grad, expected))
    assert errors["backbone"] <= TOLERANCE and errors["head"] <= TOLERANCE, errors
    # θ_L ≠ θ_U made a difference the check could see
    names = sorted(backbone)
    u = torch.cat([grad_u[n].flatten() for n in names])
    lo = torch.cat([grad_l[n].flatten() for n in names])
    errors["passes_apart"] = relative_error(lo, u)
    assert errors["passes_apart"] > 100 * TOLERANCE, errors

    # BatchNorm: the θ_U pass moved the running statistics exactly as the copy's one pass did;
    # the θ_L pass left them alone
    moved = dict(at_upper.named_buffers())
    for name, value in task.model.named_buffers():
        assert torch.equal(value, moved[name]), name
    assert any(not torch.equal(buffers_before[n], b) for n, b in task.model.named_buffers()), (
        "the buffers did not move: the check above could not fail"
    )
    return errors


def test_upper_gradient_against_an_independent_computation(seg_data: dict[str, Path]) -> None:
    torch.manual_seed(0)
    pretext = SimCLR(backbone=dict(arch="resnet18"))
    segmentor = fcn_d6_r50_d16(21, dropout_ratio=0.0, depth=18)
    task = segmentation_task(pretext.backbone, segmentor=segmentor)
    errors = check_upper_gradient(task, pretext, voc_batch(seg_data["voc2012"], [0, 1]))
    print(f"segmentation upper gradient, max relative error per tensor: {errors}")


def test_a_pretrained_backbone_init_is_refused() -> None:
    pretext = SimCLR(backbone=dict(arch="resnet18"))
    segmentor = fcn_d6_r50_d16(21, depth=18, pretrained="some_backbone.pth")
    with pytest.raises(ConfigError, match="init_cfg"):
        segmentation_task(pretext.backbone, segmentor=segmentor)
