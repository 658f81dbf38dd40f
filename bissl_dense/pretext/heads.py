"""Pretext heads: the SimCLR/BYOL projector and the BYOL predictor (SPEC §4).

The heads are ``nn.Sequential`` so that their state-dict keys (``0.weight``, ``1.running_mean``,
..., ``6.weight`` for three layers) follow the layout of the published pretext head files, where
the projector is stored under the prefix ``projector.`` and BYOL's predictor under
``predictor.`` (see :func:`bissl_dense.pretext.weights.split_head_state`).
"""

from __future__ import annotations

from torch import nn

__all__ = ["PredictionHead", "ProjectionHead"]


class ProjectionHead(nn.Sequential):
    """MLP ``(Linear, BatchNorm1d, ReLU) x (num_layers - 1)`` followed by a final ``Linear``.

    ``num_layers`` counts the Linear layers: the default 3 gives SPEC §4's 256-256-256 projector.
    The final Linear has no bias by default, as in the published heads (a bias right before the
    L2 normalisation of the losses is redundant); set ``last_bias=True`` to add one.
    """

    def __init__(
        self,
        in_dim: int,
        hidden_dim: int = 256,
        out_dim: int = 256,
        num_layers: int = 3,
        last_bias: bool = False,
    ) -> None:
        for name, value in (("in_dim", in_dim), ("hidden_dim", hidden_dim), ("out_dim", out_dim)):
            if int(value) != value or value < 1:
                raise ValueError(
                    f"{type(self).__name__}: {name} must be a positive int, got {value}."
                )
        if int(num_layers) != num_layers or num_layers < 1:
            raise ValueError(
                f"{type(self).__name__}: num_layers counts the Linear layers and must be >= 1, "
                f"got {num_layers}."
            )
        layers: list[nn.Module] = []
        dim = in_dim
        for _ in range(num_layers - 1):
            layers += [nn.Linear(dim, hidden_dim), nn.BatchNorm1d(hidden_dim), nn.ReLU()]
            dim = hidden_dim
        layers.append(nn.Linear(dim, out_dim, bias=last_bias))
        super().__init__(*layers)
        self.in_dim = in_dim
        self.hidden_dim = hidden_dim
        self.out_dim = out_dim
        self.num_layers = num_layers


class PredictionHead(ProjectionHead):
    """BYOL's predictor: by default the projector's shape on 256-d projections (SPEC §4)."""

    def __init__(
        self,
        in_dim: int = 256,
        hidden_dim: int = 256,
        out_dim: int = 256,
        num_layers: int = 3,
        last_bias: bool = False,
    ) -> None:
        super().__init__(in_dim, hidden_dim, out_dim, num_layers, last_bias)
