"""The detector's upper loss with θ_L substituted through ``functional_call``: equal to the loss
of a detector that holds θ_L, gradients reach the substituted res5 tensors, and the detector's
BatchNorm running statistics are left untouched by the substituted pass."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from tests.detection._d2 import require_detectron2, tiny_cfg, write_voc_data

require_detectron2()

from detectron2.data import DatasetCatalog, DatasetMapper  # noqa: E402
from detectron2.utils.events import EventStorage  # noqa: E402

from bissl_dense.detection.correspondence import torchvision_name  # noqa: E402
from bissl_dense.detection.model import build_detector  # noqa: E402
from bissl_dense.detection.task import DetectionUpperLoss  # noqa: E402


@pytest.fixture(scope="module")
def voc(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_voc_data(tmp_path_factory.mktemp("voc"), n=8, size=64)


def test_substituted_loss_matches_a_detector_holding_theta_l(voc: Path, tmp_path: Path) -> None:
    with EventStorage():  # detectron2's heads log their sampling statistics there
        _check_substituted_loss(voc, tmp_path)


def _check_substituted_loss(voc: Path, tmp_path: Path) -> None:
    cfg = tiny_cfg(voc, tmp_path)
    torch.manual_seed(0)
    detector = build_detector(cfg).train()
    mapper = DatasetMapper(cfg, is_train=True)
    batch = [mapper(d) for d in DatasetCatalog.get("voc_2007_trainval")[:2]]

    torch.manual_seed(1)
    shared = [n for n, _ in detector.named_parameters() if torchvision_name(n) is not None]
    theta_l = {
        n: (p.detach() + 0.01 * torch.randn_like(p)).requires_grad_()
        for n, p in detector.named_parameters()
        if n in shared
    }
    reference = copy.deepcopy(detector)
    with torch.no_grad():
        for name, value in theta_l.items():
            reference.get_parameter(name).copy_(value)

    buffers_before = {n: b.clone() for n, b in detector.named_buffers()}
    loss_fn = DetectionUpperLoss(detector)
    torch.manual_seed(5)  # the RoI sampling draws random numbers: same draws in both passes
    loss = loss_fn(batch, theta_l)
    torch.manual_seed(5)
    expected = DetectionUpperLoss(reference)(batch, None)
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)

    name = "roi_heads.res5.2.conv3.weight"
    (grad,) = torch.autograd.grad(loss, [theta_l[name]])
    expected.backward()
    assert grad.abs().sum() > 0
    torch.testing.assert_close(grad, reference.get_parameter(name).grad, rtol=1e-4, atol=1e-7)
    assert detector.get_parameter(name).grad is None  # θ_U itself got no gradient

    # the substituted pass left every buffer (BatchNorm statistics, counters) as it was ...
    for n, b in detector.named_buffers():
        assert torch.equal(b, buffers_before[n]), n
    # ... while a plain pass with θ_U moves them (so the check above can fail)
    loss_fn(batch, None)
    key = "roi_heads.res5.0.conv1.norm.running_mean"
    assert not torch.equal(dict(detector.named_buffers())[key], buffers_before[key])
