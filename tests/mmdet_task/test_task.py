"""mmdet's Faster R-CNN R50-C4 as BiSSL's upper model (SPEC §5): res5 lives in the RoI head.

The correspondence maps ``layer4.*`` onto ``roi_head.shared_head.layer4.*`` one to one; the
detector starts from the pretext backbone (never caffe weights); and the upper gradient of every
parameter, on a batch of the generated VOC data drawn through mmdet's dataset and pipeline, equals
SPEC §2's ∇L_D(θ_L) + ∇L_D(θ_U) computed independently when (I + H/(λ+δ))⁻¹ ≈ I.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from mmengine.config import Config

from bissl_dense.datasets.synthetic import write_voc
from bissl_dense.errors import ConfigError
from bissl_dense.mmdet_task.task import detection_c4_task
from bissl_dense.pretext.methods import SimCLR
from tests.segmentation.test_task import check_upper_gradient

ROOT = Path(__file__).resolve().parents[2]


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


def r18_detector_cfg() -> dict:
    """:func:`detector_cfg` on a ResNet-18 (same C4 layout: res5 in the RoI head), for speed."""
    model = detector_cfg()
    model["backbone"]["depth"] = 18
    model["roi_head"]["shared_head"]["depth"] = 18
    model["rpn_head"].update(in_channels=256, feat_channels=256)
    model["roi_head"]["bbox_roi_extractor"]["out_channels"] = 256
    model["roi_head"]["bbox_head"]["in_channels"] = 512
    return model


def test_upper_gradient_against_an_independent_computation(voc_batch: dict) -> None:
    """SPEC §2's upper gradient of every parameter, backbone (res2-res4 and res5 in the RoI
    head) and heads (RPN, box head), against two deep copies of the detector differentiated with
    plain autograd (see tests/segmentation/test_task.py for the construction)."""
    torch.manual_seed(0)
    pretext = SimCLR(backbone=dict(arch="resnet18"))
    task = detection_c4_task(pretext.backbone, detector=r18_detector_cfg())
    assert any(n.startswith("roi_head.shared_head.layer4.") for n in task.correspondence.values())
    errors = check_upper_gradient(task, pretext, voc_batch)
    print(f"mmdet C4 upper gradient, max relative error per tensor: {errors}")
