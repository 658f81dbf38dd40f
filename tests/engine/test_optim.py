"""The precision option of the pretext optimizer wrapper, and the channels-last backbone option."""

from __future__ import annotations

import pytest
import torch
from mmengine.optim import AmpOptimWrapper, OptimWrapper, build_optim_wrapper
from torch import nn

from bissl_dense.engine.optim import PrecisionOptimWrapper
from bissl_dense.errors import ConfigError
from bissl_dense.pretext.backbones import build_backbone


def _cfg(dtype: str | None) -> dict:
    return dict(type="PrecisionOptimWrapper", dtype=dtype, optimizer=dict(type="LARS", lr=0.1))


def test_float32_by_default_and_amp_on_request() -> None:
    wrapper = build_optim_wrapper(nn.Linear(2, 2), _cfg(None))
    assert type(wrapper) is OptimWrapper
    if torch.cuda.is_available():  # AmpOptimWrapper needs a GPU
        amp = build_optim_wrapper(nn.Linear(2, 2).cuda(), _cfg("bfloat16"))
        assert isinstance(amp, AmpOptimWrapper) and amp.cast_dtype == torch.bfloat16
    else:
        with pytest.raises(AssertionError, match="AmpOptimizerWrapper|gpu|GPU"):
            build_optim_wrapper(nn.Linear(2, 2), _cfg("bfloat16"))
    with pytest.raises(ConfigError, match="optim_wrapper.dtype"):
        PrecisionOptimWrapper(
            dtype="int8", optimizer=torch.optim.SGD([nn.Parameter(torch.ones(1))], lr=1)
        )


def test_channels_last_backbone_computes_the_same_function() -> None:
    torch.manual_seed(0)
    plain, _ = build_backbone("resnet18")
    torch.manual_seed(0)
    nhwc, _ = build_backbone("resnet18", channels_last=True)
    assert nhwc.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    assert plain.state_dict().keys() == nhwc.state_dict().keys()
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(nhwc.eval()(x), plain.eval()(x), rtol=1e-4, atol=1e-5)
