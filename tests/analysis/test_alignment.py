"""Alignment analyses against hand-computed values; BN re-estimation changes only running stats."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
import torchvision
from sklearn.neighbors import KNeighborsClassifier
from torch import nn

from bissl_dense.analysis.alignment import (
    extract_features,
    feature_cosine_similarity,
    parameter_cosine_similarity,
    reestimate_batchnorm,
    tsne_embedding,
)


def test_parameter_cosine_similarity_hand_computed() -> None:
    a = {"w": torch.tensor([[1.0, 2.0]]), "b": torch.tensor([2.0]), "count": torch.tensor(7)}
    b = {"w": torch.tensor([[2.0, 0.0]]), "b": torch.tensor([1.0]), "count": torch.tensor(3)}
    # dot = 1·2 + 2·0 + 2·1 = 4; |a| = √(1 + 4 + 4) = 3; |b| = √(4 + 0 + 1) = √5
    # (integer tensors such as num_batches_tracked are not parameters and are ignored)
    assert parameter_cosine_similarity(a, b) == pytest.approx(4 / (3 * math.sqrt(5)), abs=1e-15)
    assert parameter_cosine_similarity(a, a) == pytest.approx(1.0, abs=1e-15)
    negated = {k: -v for k, v in a.items() if k != "count"}
    assert parameter_cosine_similarity(a, negated) == pytest.approx(-1.0, abs=1e-15)


def test_parameter_cosine_similarity_of_resnets_matches_torch() -> None:
    pretext = torchvision.models.resnet18()
    finetuned = copy.deepcopy(pretext)
    with torch.no_grad():
        for p in finetuned.parameters():
            p.add_(0.02 * torch.randn_like(p))
        finetuned.bn1.running_mean.add_(100.0)  # buffers do not count for modules
    expected = nn.functional.cosine_similarity(
        nn.utils.parameters_to_vector(pretext.parameters()).detach().double(),
        nn.utils.parameters_to_vector(finetuned.parameters()).detach().double(),
        dim=0,
    )
    assert parameter_cosine_similarity(pretext, finetuned) == pytest.approx(float(expected), 1e-12)


def test_parameter_cosine_similarity_names_mismatched_keys() -> None:
    a = {"layer1.w": torch.ones(2), "fc.w": torch.ones(2)}
    b = {"backbone.layer1.w": torch.ones(2), "fc.w": torch.ones(2)}
    with pytest.raises(
        ValueError,
        match=r"only in the first: \[layer1.w\]; only in the second: "
        r"\[backbone.layer1.w\]",
    ):
        parameter_cosine_similarity(a, b)
    with pytest.raises(
        ValueError, match="'fc.w' has shape \\(2,\\) in the first backbone and \\(3,\\)"
    ):
        parameter_cosine_similarity({"fc.w": torch.ones(2)}, {"fc.w": torch.ones(3)})


def test_feature_cosine_similarity_hand_computed() -> None:
    a = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    b = torch.tensor([[1.0, 1.0], [0.0, 2.0]])
    # per sample: cos = 1/√2 and 1, averaged (the paper's eq. 13)
    assert feature_cosine_similarity(a, b) == pytest.approx((1 / math.sqrt(2) + 1) / 2, abs=1e-15)
    # flattened: dot = 1 + 2 = 3, |a| = √2, |b| = √6
    assert feature_cosine_similarity(a, b, "flatten") == pytest.approx(3 / math.sqrt(12), abs=1e-15)
    # (n, C, H, W) feature maps are flattened per sample
    maps = torch.randn(3, 2, 2, 2)
    assert feature_cosine_similarity(maps, 2 * maps) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="differ in shape"):
        feature_cosine_similarity(a, b[:1])
    with pytest.raises(ValueError, match="reduction"):
        feature_cosine_similarity(a, b, "sum")


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin1 = nn.Linear(3, 4)
        self.bn1 = nn.BatchNorm1d(4)
        self.drop = nn.Dropout(0.5)
        self.lin2 = nn.Linear(4, 2)
        self.bn2 = nn.BatchNorm1d(2, momentum=0.3)
        self.register_buffer("other", torch.arange(3.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn2(self.lin2(self.drop(torch.relu(self.bn1(self.lin1(x))))))


def _expected_stats(net: _Net, batches: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    """Hand-computed: per-batch statistics (BN normalises with batch stats, dropout off),
    averaged with equal weight per batch; the running variance uses the unbiased batch variance."""
    means1, vars1, means2, vars2 = [], [], [], []
    with torch.no_grad():
        for x in batches:
            h = net.lin1(x)
            mu, var = h.mean(0), h.var(0, unbiased=False)
            means1.append(mu)
            vars1.append(h.var(0, unbiased=True))
            h = (h - mu) / torch.sqrt(var + net.bn1.eps) * net.bn1.weight + net.bn1.bias
            g = net.lin2(torch.relu(h))
            means2.append(g.mean(0))
            vars2.append(g.var(0, unbiased=True))
    return {
        "bn1.running_mean": torch.stack(means1).mean(0),
        "bn1.running_var": torch.stack(vars1).mean(0),
        "bn2.running_mean": torch.stack(means2).mean(0),
        "bn2.running_var": torch.stack(vars2).mean(0),
    }


@pytest.mark.parametrize("train_mode", [False, True])
def test_reestimate_batchnorm_changes_running_stats_and_nothing_else(train_mode: bool) -> None:
    net = _Net()
    with torch.no_grad():  # stale statistics from "pretraining"
        net.bn1.running_mean.fill_(5.0)
        net.bn1.running_var.fill_(9.0)
        net.bn1.num_batches_tracked.fill_(1000)
        net.bn1.weight.uniform_(0.5, 1.5)
    net.train(train_mode)
    before = copy.deepcopy(net.state_dict())
    batches = [torch.randn(n, 3) * 2 + 1 for n in (5, 7, 6)]
    used = reestimate_batchnorm(net, [(x, torch.zeros(len(x))) for x in batches] * 2, num_batches=3)
    assert used == 3
    after = net.state_dict()
    expected = _expected_stats(net, batches)
    for key, value in after.items():
        if key in expected:
            torch.testing.assert_close(value, expected[key], rtol=1e-5, atol=1e-6)
            assert not torch.allclose(value, before[key])
        elif key.endswith("num_batches_tracked"):
            assert int(value) == 3
        else:  # parameters and other buffers are untouched
            assert torch.equal(value, before[key]), key
    assert net.bn1.momentum == 0.1 and net.bn2.momentum == 0.3
    assert all(m.training is train_mode for m in net.modules())


def test_reestimate_batchnorm_restores_stats_when_forward_fails() -> None:
    net = _Net().eval()
    before = copy.deepcopy(net.state_dict())

    def forward(model: nn.Module, batch: torch.Tensor) -> torch.Tensor:
        if batch.shape[0] == 4:
            raise RuntimeError("broken batch")
        return model(batch)

    with pytest.raises(RuntimeError, match="broken batch"):
        reestimate_batchnorm(net, [torch.randn(5, 3), torch.randn(4, 3)], forward=forward)
    for key, value in net.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert not net.training and net.bn1.momentum == 0.1
    with pytest.raises(ValueError, match="no batches"):
        reestimate_batchnorm(net, [])
    with pytest.raises(ValueError, match="no BatchNorm"):
        reestimate_batchnorm(nn.Linear(2, 2), [torch.randn(2, 2)])


def test_extract_features_and_tsne_separate_classes() -> None:
    torch.manual_seed(0)
    centers = torch.randn(3, 16) * 6
    labels = torch.arange(3).repeat_interleave(30)
    inputs = centers[labels] + torch.randn(90, 16)
    backbone = nn.Sequential(nn.Linear(16, 32), nn.Dropout(0.9)).train()
    batches = [(inputs[i : i + 32], labels[i : i + 32]) for i in range(0, 90, 32)]
    features, got_labels = extract_features(backbone, batches)
    assert features.shape == (90, 32) and torch.equal(got_labels, labels)
    assert backbone.training  # restored; and dropout was off meanwhile:
    torch.testing.assert_close(features, backbone[0](inputs).detach())
    embedding = tsne_embedding(features, seed=0, max_iter=300)
    assert embedding.shape == (90, 2)
    np.testing.assert_array_equal(embedding, tsne_embedding(features, seed=0, max_iter=300))
    # well-separated classes stay separated: leave-one-out 1-NN in 2-D is perfect
    knn = KNeighborsClassifier(n_neighbors=2).fit(embedding, labels.numpy())
    _, neighbours = knn.kneighbors(embedding)
    assert (labels.numpy()[neighbours[:, 1]] == labels.numpy()).all()
