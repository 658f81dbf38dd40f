"""Smoke tests of the installed stack: the compiled ops of torchvision and mmcv agree with
hand computations and with each other, and mmdet's Faster R-CNN R50-C4 and mmseg's FCN-16
(the two dense models BiSSL uses, SPEC section 5) build, give finite losses and backpropagate.

They catch a broken install early (a CPU torch under a CUDA torchvision, an mmcv built
without ops, an mmengine that cannot import) with a failure that names the broken piece.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torchvision

# ---------------------------------------------------------------------------------------------
# references written out by hand
# ---------------------------------------------------------------------------------------------


def bilinear(feature: np.ndarray, y: float, x: float) -> np.ndarray:
    """Bilinear interpolation of a (C, H, W) map at a point inside [0, H-1] x [0, W-1],
    pixel centres at integer coordinates."""
    y0 = min(math.floor(y), feature.shape[1] - 2)
    x0 = min(math.floor(x), feature.shape[2] - 2)
    dy, dx = y - y0, x - x0
    return (
        feature[:, y0, x0] * (1 - dy) * (1 - dx)
        + feature[:, y0, x0 + 1] * (1 - dy) * dx
        + feature[:, y0 + 1, x0] * dy * (1 - dx)
        + feature[:, y0 + 1, x0 + 1] * dy * dx
    )


def roi_align_reference(
    feature: np.ndarray, box: tuple[float, float, float, float], out: int, grid: int, aligned: bool
) -> np.ndarray:
    """RoIAlign (He et al. 2017) for one box on one (C, H, W) map, spatial scale 1, by loops:
    each output bin averages grid x grid bilinear samples at the sub-bin centres."""
    offset = 0.5 if aligned else 0.0
    x1, y1, x2, y2 = (v - offset for v in box)
    bin_w, bin_h = (x2 - x1) / out, (y2 - y1) / out
    result = np.zeros((feature.shape[0], out, out))
    for ph in range(out):
        for pw in range(out):
            samples = [
                bilinear(
                    feature,
                    y1 + ph * bin_h + (iy + 0.5) * bin_h / grid,
                    x1 + pw * bin_w + (ix + 0.5) * bin_w / grid,
                )
                for iy in range(grid)
                for ix in range(grid)
            ]
            result[:, ph, pw] = np.mean(samples, axis=0)
    return result


# Boxes and scores whose suppression order is worked out by hand (x1, y1, x2, y2):
#   0: [0, 0, 10, 10]  s=0.90     IoU(0, 1) = 81 / 119 = 0.681   IoU(0, 3) = 50 / 100 = 0.5
#   1: [1, 1, 11, 11]  s=0.80     IoU(1, 3) = 36 / 114 = 0.316   box 2 overlaps nothing
#   2: [20, 20, 30, 30] s=0.70
#   3: [0, 0, 10, 5]   s=0.95     score order: 3, 0, 1, 2
NMS_BOXES = torch.tensor(
    [[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30], [0, 0, 10, 5]], dtype=torch.float32
)
NMS_SCORES = torch.tensor([0.9, 0.8, 0.7, 0.95])
NMS_EXPECTED = {
    0.3: [3, 2],  # 0 (0.5 > 0.3 with 3) and 1 (0.316 > 0.3 with 3) go
    0.4: [3, 1, 2],  # 0 goes (0.5 with 3); 1 only overlaps 3 by 0.316
    0.6: [3, 0, 2],  # 1 goes (0.681 with 0)
    0.7: [3, 0, 1, 2],
}


# ---------------------------------------------------------------------------------------------
# torchvision
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("threshold", sorted(NMS_EXPECTED))
def test_torchvision_nms_by_hand(threshold: float) -> None:
    keep = torchvision.ops.nms(NMS_BOXES, NMS_SCORES, threshold)
    assert keep.tolist() == NMS_EXPECTED[threshold]


def test_torchvision_box_iou_by_hand() -> None:
    iou = torchvision.ops.box_iou(NMS_BOXES, NMS_BOXES)
    assert iou[0, 1].item() == pytest.approx(81 / 119)
    assert iou[0, 3].item() == pytest.approx(0.5)
    assert iou[1, 3].item() == pytest.approx(36 / 114)
    assert iou[2, :2].abs().sum().item() == 0.0


def test_torchvision_roi_align_linear_map_closed_form() -> None:
    # Bilinear interpolation reproduces a linear function exactly, so each bin's average is the
    # function at the bin centre: f(y, x) = a x + b y + c at x = x1 - 1/2 + (j + 1/2) w / P.
    # (The kernel rounds sample coordinates to float32 even for float64 maps: 1e-6.)
    height, width, out = 16, 20, 3
    a, b, c = 0.7, -1.3, 2.0
    ys, xs = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    feature = (a * xs + b * ys + c).to(torch.float64)[None, None]
    box = (3.0, 2.0, 15.0, 11.0)
    rois = torch.tensor([[0.0, *box]], dtype=torch.float64)
    pooled = torchvision.ops.roi_align(feature, rois, out, 1.0, sampling_ratio=2, aligned=True)
    x1, y1, x2, y2 = box
    for i in range(out):
        for j in range(out):
            cx = x1 - 0.5 + (j + 0.5) * (x2 - x1) / out
            cy = y1 - 0.5 + (i + 0.5) * (y2 - y1) / out
            assert pooled[0, 0, i, j].item() == pytest.approx(a * cx + b * cy + c, abs=1e-6)


@pytest.mark.parametrize("aligned", [True, False])
def test_torchvision_roi_align_matches_loops(aligned: bool) -> None:
    generator = torch.Generator().manual_seed(1)
    feature = torch.randn(1, 3, 12, 14, generator=generator, dtype=torch.float64)
    boxes = [(2.0, 1.5, 9.0, 8.0), (4.2, 3.3, 12.1, 10.4)]
    rois = torch.tensor([[0.0, *box] for box in boxes], dtype=torch.float64)
    pooled = torchvision.ops.roi_align(feature, rois, 2, 1.0, sampling_ratio=2, aligned=aligned)
    for k, box in enumerate(boxes):
        expected = roi_align_reference(feature[0].numpy(), box, 2, 2, aligned)
        np.testing.assert_allclose(pooled[k].numpy(), expected, rtol=0, atol=1e-12)


# ---------------------------------------------------------------------------------------------
# mmcv compiled ops
# ---------------------------------------------------------------------------------------------


def random_boxes(generator: torch.Generator, count: int, size: float = 100.0) -> torch.Tensor:
    corners = torch.rand(count, 2, generator=generator) * size
    extent = torch.rand(count, 2, generator=generator) * size / 3 + 2
    return torch.cat([corners, corners + extent], dim=1)


@pytest.mark.parametrize("threshold", [0.4, 0.6, 0.7])
def test_mmcv_nms_by_hand_and_against_torchvision(threshold: float) -> None:
    from mmcv.ops import batched_nms, nms

    dets, keep = nms(NMS_BOXES, NMS_SCORES, threshold)
    assert keep.tolist() == NMS_EXPECTED[threshold]
    torch.testing.assert_close(dets[:, :4], NMS_BOXES[keep])
    torch.testing.assert_close(dets[:, 4], NMS_SCORES[keep])

    generator = torch.Generator().manual_seed(2)
    boxes = random_boxes(generator, 300)
    scores = torch.rand(300, generator=generator)
    _, keep = nms(boxes, scores, threshold)
    assert keep.tolist() == torchvision.ops.nms(boxes, scores, threshold).tolist()
    classes = torch.randint(0, 4, (300,), generator=generator)
    _, keep = batched_nms(boxes, scores, classes, dict(type="nms", iou_threshold=threshold))
    expected = torchvision.ops.batched_nms(boxes, scores, classes, threshold)
    assert keep.tolist() == expected.tolist()


def test_mmcv_roi_align_agrees_with_torchvision_forward_and_backward() -> None:
    from mmcv.ops import RoIAlign

    generator = torch.Generator().manual_seed(3)
    feature = torch.randn(2, 4, 20, 24, generator=generator, requires_grad=True)
    boxes = random_boxes(generator, 6, size=18.0)
    rois = torch.cat([torch.tensor([0, 1, 0, 1, 1, 0.0])[:, None], boxes], dim=1)
    for sampling_ratio in (0, 2):
        mm = RoIAlign(7, spatial_scale=0.5, sampling_ratio=sampling_ratio, aligned=True)(
            feature, rois
        )
        tv = torchvision.ops.roi_align(feature, rois, 7, 0.5, sampling_ratio, aligned=True)
        torch.testing.assert_close(mm, tv, rtol=1e-5, atol=1e-5)
        weights = torch.randn(mm.shape, generator=generator)
        (grad_mm,) = torch.autograd.grad((mm * weights).sum(), feature)
        (grad_tv,) = torch.autograd.grad((tv * weights).sum(), feature)
        torch.testing.assert_close(grad_mm, grad_tv, rtol=1e-5, atol=1e-5)


def test_mmcv_point_sample_matches_bilinear_by_hand() -> None:
    from mmcv.ops import point_sample

    generator = torch.Generator().manual_seed(4)
    height, width = 9, 13
    feature = torch.randn(1, 3, height, width, generator=generator, dtype=torch.float64)
    # normalised (x, y) in [0, 1]; with align_corners=False pixel j has its centre at
    # (j + 0.5) / width; keep the points between the outermost centres
    uniform = torch.rand(1, 7, 2, generator=generator, dtype=torch.float64)
    points = torch.stack(
        [
            0.5 / width + uniform[..., 0] * (1 - 1 / width),
            0.5 / height + uniform[..., 1] * (1 - 1 / height),
        ],
        dim=-1,
    )
    sampled = point_sample(feature, points, align_corners=False)
    assert sampled.shape == (1, 3, 7)
    for p in range(7):
        x, y = points[0, p].tolist()
        expected = bilinear(feature[0].numpy(), y * height - 0.5, x * width - 0.5)
        np.testing.assert_allclose(sampled[0, :, p].numpy(), expected, rtol=0, atol=1e-12)


# ---------------------------------------------------------------------------------------------
# mmdet Faster R-CNN R50-C4 and mmseg FCN-16, the dense models of SPEC section 5
# ---------------------------------------------------------------------------------------------

FROZEN_BN = dict(type="BN", requires_grad=False)


def faster_rcnn_r50_c4(num_classes: int = 20) -> dict:
    """mmdet's ``configs/_base_/models/faster-rcnn_r50-caffe-c4.py`` written out, with the
    caffe-weight ``init_cfg``s set to None (no download) and a smaller RoI sampler / proposal
    count so that res5 runs on few RoIs on a CPU."""
    return dict(
        type="FasterRCNN",
        data_preprocessor=dict(
            type="DetDataPreprocessor",
            mean=[103.530, 116.280, 123.675],
            std=[1.0, 1.0, 1.0],
            bgr_to_rgb=False,
            pad_size_divisor=32,
        ),
        backbone=dict(
            type="ResNet",
            depth=50,
            num_stages=3,
            strides=(1, 2, 2),
            dilations=(1, 1, 1),
            out_indices=(2,),
            frozen_stages=1,
            norm_cfg=FROZEN_BN,
            norm_eval=True,
            style="caffe",
            init_cfg=None,
        ),
        rpn_head=dict(
            type="RPNHead",
            in_channels=1024,
            feat_channels=1024,
            anchor_generator=dict(
                type="AnchorGenerator",
                scales=[2, 4, 8, 16, 32],
                ratios=[0.5, 1.0, 2.0],
                strides=[16],
            ),
            bbox_coder=dict(
                type="DeltaXYWHBBoxCoder", target_means=[0.0] * 4, target_stds=[1.0] * 4
            ),
            loss_cls=dict(type="CrossEntropyLoss", use_sigmoid=True, loss_weight=1.0),
            loss_bbox=dict(type="L1Loss", loss_weight=1.0),
        ),
        roi_head=dict(
            type="StandardRoIHead",
            shared_head=dict(
                type="ResLayer",
                depth=50,
                stage=3,
                stride=2,
                dilation=1,
                style="caffe",
                norm_cfg=FROZEN_BN,
                norm_eval=True,
                init_cfg=None,
            ),
            bbox_roi_extractor=dict(
                type="SingleRoIExtractor",
                roi_layer=dict(type="RoIAlign", output_size=14, sampling_ratio=0),
                out_channels=1024,
                featmap_strides=[16],
            ),
            bbox_head=dict(
                type="BBoxHead",
                with_avg_pool=True,
                roi_feat_size=7,
                in_channels=2048,
                num_classes=num_classes,
                bbox_coder=dict(
                    type="DeltaXYWHBBoxCoder",
                    target_means=[0.0] * 4,
                    target_stds=[0.1, 0.1, 0.2, 0.2],
                ),
                reg_class_agnostic=False,
                loss_cls=dict(type="CrossEntropyLoss", use_sigmoid=False, loss_weight=1.0),
                loss_bbox=dict(type="L1Loss", loss_weight=1.0),
            ),
        ),
        train_cfg=dict(
            rpn=dict(
                assigner=dict(
                    type="MaxIoUAssigner",
                    pos_iou_thr=0.7,
                    neg_iou_thr=0.3,
                    min_pos_iou=0.3,
                    match_low_quality=True,
                    ignore_iof_thr=-1,
                ),
                sampler=dict(
                    type="RandomSampler",
                    num=256,
                    pos_fraction=0.5,
                    neg_pos_ub=-1,
                    add_gt_as_proposals=False,
                ),
                allowed_border=-1,
                pos_weight=-1,
                debug=False,
            ),
            rpn_proposal=dict(
                nms_pre=12000,
                max_per_img=2000,
                nms=dict(type="nms", iou_threshold=0.7),
                min_bbox_size=0,
            ),
            rcnn=dict(
                assigner=dict(
                    type="MaxIoUAssigner",
                    pos_iou_thr=0.5,
                    neg_iou_thr=0.5,
                    min_pos_iou=0.5,
                    match_low_quality=False,
                    ignore_iof_thr=-1,
                ),
                # 512 in the base config: res5 on 512 RoIs is what makes C4 slow on a CPU
                sampler=dict(
                    type="RandomSampler",
                    num=16,
                    pos_fraction=0.25,
                    neg_pos_ub=-1,
                    add_gt_as_proposals=True,
                ),
                pos_weight=-1,
                debug=False,
            ),
        ),
        test_cfg=dict(
            rpn=dict(
                nms_pre=6000,
                max_per_img=4,
                nms=dict(type="nms", iou_threshold=0.7),
                min_bbox_size=0,
            ),
            rcnn=dict(score_thr=0.0, nms=dict(type="nms", iou_threshold=0.5), max_per_img=100),
        ),
    )


def test_mmdet_faster_rcnn_r50_c4_loss_backward_predict() -> None:
    from mmdet.registry import MODELS
    from mmdet.structures import DetDataSample
    from mmdet.utils import register_all_modules
    from mmengine.config import ConfigDict
    from mmengine.registry import init_default_scope
    from mmengine.structures import InstanceData

    register_all_modules(init_default_scope=False)
    init_default_scope("mmdet")
    model = MODELS.build(ConfigDict(faster_rcnn_r50_c4(num_classes=20)))
    names = dict(model.named_parameters())
    # res5 lives in the RoI head (C4); the backbone stops at res4 (SPEC section 5)
    assert "roi_head.shared_head.layer4.0.conv1.weight" in names
    assert not any(name.startswith("backbone.layer4") for name in names)

    height, width = 128, 160
    image = torch.randint(0, 256, (3, height, width), dtype=torch.uint8)
    sample = DetDataSample(
        metainfo=dict(img_shape=(height, width), ori_shape=(height, width), scale_factor=(1.0, 1.0))
    )
    sample.gt_instances = InstanceData(
        bboxes=torch.tensor([[10.0, 20.0, 70.0, 90.0], [80.0, 30.0, 150.0, 120.0]]),
        labels=torch.tensor([3, 14]),
    )
    model.train()
    data = model.data_preprocessor({"inputs": [image], "data_samples": [sample]}, training=True)
    features = model.extract_feat(data["inputs"])
    assert len(features) == 1 and features[0].shape == (1, 1024, height // 16, width // 16)
    losses = model(**data, mode="loss")
    for key in ("loss_rpn_cls", "loss_rpn_bbox", "loss_cls", "loss_bbox"):
        assert key in losses
    total, log_vars = model.parse_losses(losses)
    assert torch.isfinite(total) and total.item() > 0
    total.backward()
    for name in (
        "backbone.layer3.0.conv1.weight",
        "roi_head.shared_head.layer4.2.conv3.weight",
        "rpn_head.rpn_conv.weight",
        "roi_head.bbox_head.fc_cls.weight",
    ):
        grad = names[name].grad
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0, name
    # frozen_stages=1: the stem and res2 take no gradient
    assert not names["backbone.conv1.weight"].requires_grad
    assert not names["backbone.layer1.0.conv1.weight"].requires_grad

    model.eval()
    with torch.no_grad():
        data = model.data_preprocessor({"inputs": [image], "data_samples": [sample]})
        (prediction,) = model(**data, mode="predict")
    boxes = prediction.pred_instances.bboxes
    scores = prediction.pred_instances.scores
    assert boxes.shape[1] == 4 and len(boxes) == len(scores) > 0
    assert (boxes[:, 0] >= 0).all() and (boxes[:, 2] <= width).all()
    assert (boxes[:, 1] >= 0).all() and (boxes[:, 3] <= height).all()
    assert ((scores >= 0) & (scores <= 1)).all()


def fcn16_r50(crop_size: tuple[int, int], num_classes: int = 21) -> dict:
    """FCN on a ResNet-50 whose res5 has stride 1 and dilation 2 (total stride 16), head of two
    3x3 convs, 256 channels, dilation 6 (SPEC section 5); ``init_cfg`` None, BN for one CPU."""
    norm = dict(type="BN", requires_grad=True)
    return dict(
        type="EncoderDecoder",
        data_preprocessor=dict(
            type="SegDataPreProcessor",
            mean=[123.675, 116.28, 103.53],
            std=[58.395, 57.12, 57.375],
            bgr_to_rgb=True,
            pad_val=0,
            seg_pad_val=255,
            size=crop_size,
        ),
        backbone=dict(
            type="ResNet",
            depth=50,
            num_stages=4,
            out_indices=(0, 1, 2, 3),
            strides=(1, 2, 2, 1),
            dilations=(1, 1, 1, 2),
            norm_cfg=norm,
            norm_eval=False,
            style="pytorch",
            init_cfg=None,
        ),
        decode_head=dict(
            type="FCNHead",
            in_channels=2048,
            in_index=3,
            channels=256,
            num_convs=2,
            dilation=6,
            concat_input=False,
            dropout_ratio=0.1,
            num_classes=num_classes,
            norm_cfg=norm,
            align_corners=False,
            loss_decode=dict(type="CrossEntropyLoss", use_sigmoid=False, loss_weight=1.0),
        ),
        train_cfg=dict(),
        test_cfg=dict(mode="whole"),
    )


def test_mmseg_fcn16_r50_stride_loss_backward_predict() -> None:
    from mmengine.config import ConfigDict
    from mmengine.registry import init_default_scope
    from mmengine.structures import PixelData
    from mmseg.registry import MODELS
    from mmseg.structures import SegDataSample
    from mmseg.utils import register_all_modules

    register_all_modules(init_default_scope=False)
    init_default_scope("mmseg")
    height, width = 64, 96
    # a ConfigDict as a config file gives: the models read their test_cfg by attribute
    model = MODELS.build(ConfigDict(fcn16_r50(crop_size=(height, width))))
    image = torch.randint(0, 256, (3, height, width), dtype=torch.uint8)
    labels = torch.randint(0, 21, (1, height, width))
    labels[:, :4] = 255  # an ignored band
    sample = SegDataSample(metainfo=dict(img_shape=(height, width), ori_shape=(height, width)))
    sample.gt_sem_seg = PixelData(data=labels)
    model.train()
    data = model.data_preprocessor({"inputs": [image], "data_samples": [sample]}, training=True)
    features = model.extract_feat(data["inputs"])
    strides = [height // f.shape[-2] for f in features] + [width // f.shape[-1] for f in features]
    assert strides == [4, 8, 16, 16] * 2  # res5 keeps res4's stride: FCN-16
    logits = model.decode_head(features)
    assert logits.shape == (1, 21, height // 16, width // 16)
    losses = model(**data, mode="loss")
    total, _ = model.parse_losses(losses)
    assert "decode.loss_ce" in losses and torch.isfinite(total) and total.item() > 0
    total.backward()
    params = dict(model.named_parameters())
    for name in (
        "backbone.conv1.weight",
        "backbone.layer4.2.conv2.weight",
        "decode_head.convs.1.conv.weight",
        "decode_head.conv_seg.weight",
    ):
        grad = params[name].grad
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0, name
    assert params["decode_head.convs.0.conv.weight"].shape == (256, 2048, 3, 3)
    assert model.decode_head.convs[0].conv.dilation == (6, 6)

    model.eval()
    with torch.no_grad():
        data = model.data_preprocessor({"inputs": [image], "data_samples": [sample]})
        (prediction,) = model(**data, mode="predict")
    assert prediction.pred_sem_seg.data.shape == (1, height, width)
    assert prediction.seg_logits.data.shape == (21, height, width)
