"""Projection and prediction heads: SPEC §4 layout, published key names, forward pass."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bissl_dense.pretext.heads import PredictionHead, ProjectionHead


def test_projection_head_layout_matches_spec() -> None:
    head = ProjectionHead(2048)
    kinds = [type(m) for m in head]
    assert kinds == [nn.Linear, nn.BatchNorm1d, nn.ReLU] * 2 + [nn.Linear]
    linears = [m for m in head if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [
        (2048, 256),
        (256, 256),
        (256, 256),
    ]
    assert linears[0].bias is not None and linears[1].bias is not None
    assert linears[2].bias is None  # as in the published heads
    # Key names of the published head files (after their 'projector.' prefix).
    keys = set(head.state_dict())
    assert {"0.weight", "0.bias", "1.running_mean", "1.num_batches_tracked", "6.weight"} <= keys
    assert "6.bias" not in keys


@pytest.mark.parametrize("num_layers", [1, 2, 4])
def test_projection_head_num_layers_counts_linears(num_layers: int) -> None:
    head = ProjectionHead(32, hidden_dim=16, out_dim=8, num_layers=num_layers, last_bias=True)
    linears = [m for m in head if isinstance(m, nn.Linear)]
    assert len(linears) == num_layers
    assert sum(isinstance(m, nn.BatchNorm1d) for m in head) == num_layers - 1
    assert linears[0].in_features == 32 and linears[-1].out_features == 8
    assert linears[-1].bias is not None
    assert head(torch.randn(5, 32)).shape == (5, 8)


def test_projection_head_forward_equals_functional_composition() -> None:
    head = ProjectionHead(6, hidden_dim=5, out_dim=4).double()
    x = torch.randn(7, 6, dtype=torch.float64)

    def bn_train(h: torch.Tensor, bn: nn.BatchNorm1d) -> torch.Tensor:
        mean, var = h.mean(0), h.var(0, unbiased=False)
        return (h - mean) / torch.sqrt(var + bn.eps) * bn.weight + bn.bias

    h = x
    for lin, bn in ((head[0], head[1]), (head[3], head[4])):
        h = torch.clamp(bn_train(h @ lin.weight.T + lin.bias, bn), min=0)
    expected = h @ head[6].weight.T
    torch.testing.assert_close(head(x), expected)
    head.eval()  # running statistics were updated by the train-mode pass
    assert head(x).shape == (7, 4)
    assert not torch.allclose(head[1].running_mean, torch.zeros(5, dtype=torch.float64))
    assert F.normalize(head(x), dim=1).shape == (7, 4)


def test_prediction_head_defaults_and_bad_arguments() -> None:
    predictor = PredictionHead()
    assert isinstance(predictor, ProjectionHead)
    assert (predictor.in_dim, predictor.hidden_dim, predictor.out_dim) == (256, 256, 256)
    assert predictor.num_layers == 3
    assert predictor(torch.randn(4, 256)).shape == (4, 256)
    with pytest.raises(ValueError, match="num_layers"):
        ProjectionHead(8, num_layers=0)
    with pytest.raises(ValueError, match="in_dim"):
        ProjectionHead(0)
