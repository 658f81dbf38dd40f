"""SimCLR (Chen et al., 2020) as configured in BiSSL (SPEC §4).

ResNet backbone → 3-layer projector (256-256-256) → NT-Xent with temperature 0.5, negatives
gathered across processes (the union batch of all ranks, as with one large batch).
"""

from __future__ import annotations

from typing import Any

from mmengine.registry import MODELS
from torch import Tensor

from bissl_dense.pretext.losses import nt_xent_loss
from bissl_dense.pretext.methods.base import PretextMethod


@MODELS.register_module()
class SimCLR(PretextMethod):
    """SimCLR on two views; see :class:`PretextMethod` for the shared arguments.

    Args:
        temperature: NT-Xent temperature (0.5 in the paper).
        gather_distributed: draw negatives from every process's batch.
    """

    task_name = "simclr"

    def __init__(
        self,
        temperature: float = 0.5,
        gather_distributed: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if not temperature > 0:
            raise ValueError(f"SimCLR: temperature must be > 0, got {temperature}")
        self.temperature = float(temperature)
        self.gather_distributed = bool(gather_distributed)
        self.load_head_checkpoint()

    def project(self, images: Tensor) -> Tensor:
        return self.projector(self.embed(images))

    def pretext_loss(self, view1: Tensor, view2: Tensor) -> Tensor:
        # One backbone pass per view: BatchNorm statistics are those of a single view's batch.
        return nt_xent_loss(
            self.project(view1),
            self.project(view2),
            temperature=self.temperature,
            gather_distributed=self.gather_distributed,
        )
