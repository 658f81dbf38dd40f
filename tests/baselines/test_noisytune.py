"""NoisyTune's noise has the stated distribution per tensor; the zero-initialised head is zero."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torchvision
from scipy import stats
from torch import nn

from bissl_dense.baselines.noisytune import noisytune_, zero_init_head_


def _pretrained_like_resnet() -> nn.Module:
    model = torchvision.models.resnet18(num_classes=10)
    with torch.no_grad():  # BatchNorm affine parameters that vary, as after pretraining
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.weight.uniform_(0.5, 1.5)
                module.bias.normal_(0.0, 0.1)
                module.running_mean.normal_()
    return model


@pytest.mark.parametrize("scale", [0.15, 0.6])
def test_noise_is_uniform_with_the_stated_scale_per_tensor(scale: float) -> None:
    model = _pretrained_like_resnet()
    before = copy.deepcopy(model)
    stds = noisytune_(model, scale=scale, generator=torch.Generator().manual_seed(0))
    old = dict(before.named_parameters())
    assert set(stds) == set(old)  # every tensor of a ResNet has >= 2 elements
    pooled = []
    for name, parameter in model.named_parameters():
        reference_std = old[name].detach().double().std().item()  # ddof=1, before the noise
        assert stds[name] == pytest.approx(reference_std, rel=1e-5)
        # noise in units of scale·std: must be U(-1/2, 1/2)
        u = ((parameter - old[name]).detach().double() / (scale * reference_std)).flatten().numpy()
        assert np.abs(u).max() <= 0.5 + 1e-4, name
        if u.size >= 2000:  # per tensor, where the sample is large enough to test
            sample = u[:20_000]  # keeps the KS test fast on the large convolutions
            assert stats.kstest(sample, stats.uniform(loc=-0.5, scale=1.0).cdf).pvalue > 1e-3, name
            assert u.var() == pytest.approx(1 / 12, rel=0.1), name
            assert abs(u.mean()) < 5 * np.sqrt(1 / 12 / u.size), name
        pooled.append(u)
    pooled = np.concatenate([u[:2000] for u in pooled])  # every tensor, equally weighted
    assert stats.kstest(pooled, stats.uniform(loc=-0.5, scale=1.0).cdf).pvalue > 1e-3
    # buffers (BatchNorm running statistics) are not perturbed
    for (name, buffer), (_, old_buffer) in zip(model.named_buffers(), before.named_buffers()):
        assert torch.equal(buffer, old_buffer), name


def test_noise_is_reproducible_and_skips_single_elements() -> None:
    model = nn.Sequential(nn.Linear(8, 1), nn.Linear(1, 4))  # bias of the first has 1 element
    copy_a, copy_b = copy.deepcopy(model), copy.deepcopy(model)
    stds_a = noisytune_(copy_a, generator=torch.Generator().manual_seed(1))
    noisytune_(copy_b, generator=torch.Generator().manual_seed(1))
    assert "0.bias" not in stds_a and "1.weight" in stds_a
    assert torch.equal(copy_a[0].bias, model[0].bias)
    assert not torch.equal(copy_a[0].weight, model[0].weight)
    for p, q in zip(copy_a.parameters(), copy_b.parameters()):
        assert torch.equal(p, q)
    with pytest.raises(ValueError, match="scale must be >= 0"):
        noisytune_(model, scale=-1.0)


def test_zero_initialised_head_is_zero_and_learns() -> None:
    backbone = nn.Sequential(nn.Linear(6, 5), nn.ReLU())
    head = zero_init_head_(nn.Linear(5, 3))
    assert torch.count_nonzero(head.weight) == 0 and torch.count_nonzero(head.bias) == 0
    logits = head(backbone(torch.randn(8, 6)))
    torch.testing.assert_close(logits, torch.zeros(8, 3))
    nn.functional.cross_entropy(logits, torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])).backward()
    assert head.weight.grad.abs().sum() > 0
    assert backbone[0].weight.grad.abs().sum() == 0  # no signal through a zero head at first
    with pytest.raises(ValueError, match="no parameters"):
        zero_init_head_(nn.ReLU())
