"""mmdet's Faster R-CNN R50-C4 as BiSSL's upper model (SPEC §5): res5 lives in the RoI head.

The correspondence maps ``layer4.*`` onto ``roi_head.shared_head.layer4.*`` one to one; the
detector starts from the pretext backbone (never caffe weights); and the upper gradient of a res5
weight, on a batch of the generated VOC data drawn through mmdet's dataset and pipeline, carries
the implicit term, equal to ∇θ L_D(θ_L) computed directly when (I + H/(λ+δ))⁻¹ ≈ I.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from mmengine.config import Config

from bissl_dense.core import BiSSLConfig
from bissl_dense.datasets.synthetic import write_voc
from bissl_dense.errors import ConfigError
from bissl_dense.mmdet_task.task import detection_c4_task
from bissl_dense.pretext.methods import SimCLR
from bissl_dense.segmentation.task import mm_upper_loss
from bissl_dense.stage import build_bilevel_step

ROOT = Path(__file__).resolve().parents[2]
RES5 = "roi_head.shared_head.layer4.1.conv2.weight"


def detector_cfg() -> dict:
    """The config file's model with BatchNorm (one CPU process), few proposals and no random
    sampling of anchors or RoIs (so that the two passes of an upper step see the same RoIs)."""
    cfg = Config.fromfile(str(ROOT / "configs/mmdet/_base_/models/faster_rcnn_r50_c4.py"))
    model = cfg.model.to_dict()
    bn = dict(type="BN", requires_grad=True)
    model["backbone"]["norm_cfg"] = bn
    model["roi_head"]["shared_head"]["norm_cfg"] = bn
    model["train_cfg"]["rpn"]["sampler"] = dict(type="PseudoSampler")
    model["train_cfg"]["rcnn"]["sampler"] = dict(type="PseudoSampler")
    model["train_cfg"]["rpn_proposal"].update(nms_pre=200, max_per_img=8)
    return model


@pytest.fixture(scope="module")
def voc_batch(tmp_path_factory: pytest.TempPathFactory) -> dict:
    from mmdet.registry import DATASETS
    from mmdet.utils import register_all_modules
    from mmengine.dataset import pseudo_collate
    from mmengine.registry import DefaultScope

    root = tmp_path_factory.mktemp("voc")
    write_voc(root, 8, seed=5, size=96, num_classes=4)
    register_all_modules(init_default_scope=False)
    pipeline = [
        dict(type="LoadImageFromFile"),
        dict(type="LoadAnnotations", with_bbox=True),
        dict(type="Resize", scale=(1000, 96), keep_ratio=True),
        dict(type="PackDetInputs"),
    ]
    with DefaultScope.overwrite_default_scope("mmdet"):
        dataset = DATASETS.build(
            dict(
                type="VOCDataset",
                data_root=f"{root}/VOCdevkit/",
                ann_file="VOC2007/ImageSets/Main/trainval.txt",
                data_prefix=dict(sub_data_root="VOC2007/"),
                pipeline=pipeline,
            )  # fmt: skip
        )
        return pseudo_collate([dataset[0], dataset[1]])


def test_correspondence_and_initialisation_from_the_pretext_backbone() -> None:
    torch.manual_seed(0)
    pretext = SimCLR(backbone=dict(arch="resnet50"))
    task = detection_c4_task(pretext.backbone, detector=detector_cfg())
    assert (
        task.correspondence["layer4.0.conv1.weight"] == "roi_head.shared_head.layer4.0.conv1.weight"
    )
    assert task.correspondence["layer3.5.bn3.bias"] == "backbone.layer3.5.bn3.bias"
    upper = task.model.state_dict()
    for name, value in pretext.backbone.state_dict().items():
        target = ("roi_head.shared_head." if name.startswith("layer4.") else "backbone.") + name
        assert torch.equal(upper[target], value), name
    caffe = detector_cfg()
    caffe["roi_head"]["shared_head"]["init_cfg"] = dict(type="Pretrained", checkpoint="caffe")
    with pytest.raises(ConfigError, match="init_cfg"):
        detection_c4_task(pretext.backbone, detector=caffe)


def upper_gradient(
    discard: bool, pretext: SimCLR, batch: dict
) -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(1)
    pretext = copy.deepcopy(pretext)
    task = detection_c4_task(pretext.backbone, detector=detector_cfg())
    # δ huge so that (I + H/(λ+δ))⁻¹ ≈ I: after one LARS step of the random network the pretext
    # Hessian along this res5 gradient is ~1e8 (δ = 1e9 still left a 10 % difference)
    config = BiSSLConfig(
        alternations=1, lower_steps=1, upper_steps=1, cg_iters=2, damping=1e12,
        grad_clip_norm=None, discard_implicit_jacobian=discard,
    )  # fmt: skip
    step = build_bilevel_step(task, pretext, config, upper_lr=0.01, upper_weight_decay=0.0)
    generator = torch.Generator().manual_seed(0)
    views = [torch.randn(4, 3, 32, 32, generator=generator) for _ in range(2)]
    step.lower_step({"inputs": views})
    reference = copy.deepcopy(task.model).train()
    lower = pretext.backbone.state_dict()
    reference.backbone.load_state_dict(
        {k: v for k, v in lower.items() if not k.startswith("layer4.")}, strict=False
    )
    reference.roi_head.shared_head.load_state_dict(
        {k: v for k, v in lower.items() if k.startswith("layer4.")}
    )
    at_lower = torch.autograd.grad(
        mm_upper_loss(reference)(batch, None), dict(reference.named_parameters())[RES5]
    )[0]
    step.upper_step(batch, {"inputs": views})
    return dict(task.model.named_parameters())[RES5].grad.detach().clone(), at_lower


def test_upper_gradient_of_a_res5_weight_in_the_roi_head(voc_batch: dict) -> None:
    torch.manual_seed(0)
    pretext = SimCLR(backbone=dict(arch="resnet50"))
    with_ij, at_lower = upper_gradient(False, pretext, voc_batch)
    without, _ = upper_gradient(True, pretext, voc_batch)
    assert with_ij.norm() > 0 and without.norm() > 0 and at_lower.norm() > 0
    assert not torch.allclose(with_ij, without)
    error = (with_ij - without - at_lower).norm() / at_lower.norm()
    assert error < 2e-3, float(error)
