"""The lower→upper backbone correspondence is checked, with the offending names listed."""

from __future__ import annotations

import pytest
from torch import nn

from bissl_dense.core import BackboneCorrespondence, CorrespondenceError, prefix_correspondence


def _backbone() -> nn.Module:
    return nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 5))


class _Detector(nn.Module):
    """Mimics a C4 detector: the last stage lives in the RoI head under another prefix."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Sequential(nn.Linear(3, 4))
        self.roi_head = nn.Module()
        self.roi_head.shared_head = nn.Sequential()
        self.roi_head.shared_head.add_module("2", nn.Linear(4, 5))
        self.cls = nn.Linear(5, 2)


def test_prefix_mapping_across_modules() -> None:
    mapping = prefix_correspondence(_backbone(), {"": "backbone.", "2.": "roi_head.shared_head.2."})
    assert mapping == {
        "0.weight": "backbone.0.weight",
        "0.bias": "backbone.0.bias",
        "2.weight": "roi_head.shared_head.2.weight",
        "2.bias": "roi_head.shared_head.2.bias",
    }
    checked = BackboneCorrespondence(_backbone(), _Detector(), mapping)
    assert len(checked) == 4 and checked.upper_names[-1] == "roi_head.shared_head.2.bias"


def test_every_fault_is_listed() -> None:
    mapping = {
        "0.weight": "backbone.0.weight",
        "0.bias": "cls.bias",  # shape (2,) vs (4,)
        "2.weight": "roi_head.shared_head.2.weight",
        "3.weight": "backbone.0.weight",  # not a lower parameter, and a repeated target
        # "2.bias" missing
    }
    with pytest.raises(CorrespondenceError) as info:
        BackboneCorrespondence(_backbone(), _Detector(), mapping)
    message = str(info.value)
    assert "no upper counterpart: ['2.bias']" in message
    assert "not lower backbone parameters: ['3.weight']" in message
    assert "more than once: ['backbone.0.weight']" in message
    assert "0.bias (4,) -> cls.bias (2,)" in message


def test_unknown_upper_target() -> None:
    mapping = prefix_correspondence(_backbone(), "backbone.")
    with pytest.raises(
        CorrespondenceError, match=r"not parameters of the upper model: \['backbone.2.bias'"
    ):
        BackboneCorrespondence(_backbone(), _Detector(), mapping)
