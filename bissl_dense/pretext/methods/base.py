"""Base class of the pretext methods (SimCLR, BYOL): a backbone, a projector and a loss.

The one thing every stage needs from a method is :meth:`PretextMethod.pretext_loss`, a pure
function of two batches of views. Pretext pretraining (mmengine) reaches it through
:meth:`forward`; the BiSSL lower level (SPEC §2-3) calls it directly, possibly with the backbone's
parameters substituted (``torch.func.functional_call``), and differentiates it twice.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Sequence
from typing import Any

import torch
from mmengine.model import BaseModel
from torch import Tensor

from bissl_dense.pretext.backbones import build_backbone, canonical_arch
from bissl_dense.pretext.heads import ProjectionHead
from bissl_dense.pretext.weights import load_backbone_into, split_head_state


def split_views(inputs: Sequence[Tensor] | Tensor) -> tuple[Tensor, Tensor]:
    """``inputs`` as ``(view1, view2)``: a pair of ``(B, C, H, W)`` batches or a ``(2, B, ...)``."""
    if isinstance(inputs, Tensor):
        if inputs.dim() != 5 or inputs.shape[0] != 2:
            raise ValueError(
                "pretext inputs must be two views: a list [view1, view2] of (B, C, H, W) "
                f"tensors or one (2, B, C, H, W) tensor, got a tensor of shape "
                f"{tuple(inputs.shape)}"
            )
        return inputs[0], inputs[1]
    if len(inputs) != 2:
        raise ValueError(f"pretext inputs must be two views, got {len(inputs)}")
    return inputs[0], inputs[1]


class PretextMethod(BaseModel):
    """A self-supervised method on a ResNet backbone (one subclass per method).

    Args:
        backbone: keyword arguments of :func:`bissl_dense.pretext.backbones.build_backbone`
            (``arch``, ``zero_init_residual``, ``cifar_stem``).
        projector: keyword arguments of :class:`ProjectionHead` other than ``in_dim``.
        freeze_backbone: train the heads only, on a fixed backbone in eval mode (BatchNorm
            statistics frozen): fitting a replacement head on an off-the-shelf backbone
            (paper App. C.6, ``bissl fit-head``).
        backbone_checkpoint: backbone weights to start from (published file, torchvision/timm
            state dict, ``.safetensors``); read with ``weights_only=True``.
        head_checkpoint: pretext head weights to start from (a published ``..._head_...`` file
            or our export: ``projector.*``, and ``predictor.*`` for BYOL); read with
            ``weights_only=True`` once the method has built all its heads.
        data_preprocessor: mmengine data preprocessor config (default: move to device only).
        init_cfg: mmengine initialisation config.
    """

    task_name: str = ""
    """The ``<task>`` part of the published file names (``simclr``, ``byol``)."""
    head_module_names: tuple[str, ...] = ("projector",)
    """Submodules that form the exported pretext head."""

    def __init__(
        self,
        backbone: dict[str, Any] | None = None,
        projector: dict[str, Any] | None = None,
        freeze_backbone: bool = False,
        backbone_checkpoint: str | None = None,
        head_checkpoint: str | None = None,
        data_preprocessor: dict[str, Any] | None = None,
        init_cfg: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(data_preprocessor=data_preprocessor, init_cfg=init_cfg)
        self.head_checkpoint = head_checkpoint
        backbone = dict(backbone or {})
        self.arch = canonical_arch(backbone.get("arch", "resnet50"))
        self.backbone, self.feature_dim = build_backbone(**backbone)
        if backbone_checkpoint:
            load_backbone_into(self.backbone, backbone_checkpoint)
        self.projector = ProjectionHead(self.feature_dim, **(projector or {}))
        self.freeze_backbone = bool(freeze_backbone)
        if self.freeze_backbone:
            self.backbone.requires_grad_(False)
            self.backbone.eval()

    def train(self, mode: bool = True) -> PretextMethod:
        super().train(mode)
        if self.freeze_backbone:  # a frozen backbone keeps its BatchNorm statistics
            self.backbone.eval()
        return self

    def embed(self, images: Tensor) -> Tensor:
        """Pooled backbone features ``(B, feature_dim)``."""
        if self.freeze_backbone:
            with torch.no_grad():
                return self.backbone(images)
        return self.backbone(images)

    @abstractmethod
    def pretext_loss(self, view1: Tensor, view2: Tensor) -> Tensor:
        """The scalar pretext loss of a batch given as its two augmented views."""

    def forward(
        self,
        inputs: Sequence[Tensor] | Tensor,
        data_samples: Any = None,
        mode: str = "loss",
    ) -> dict[str, Tensor] | Tensor:
        """mmengine entry point: ``mode="loss"`` → ``{"loss": ...}``; ``"tensor"`` → features.

        For ``"tensor"``, ``inputs`` is one batch of images or a pair of views (features of the
        first view are returned).
        """
        if mode == "loss":
            view1, view2 = split_views(inputs)
            return {"loss": self.pretext_loss(view1, view2)}
        if mode == "tensor":
            images = inputs if isinstance(inputs, Tensor) and inputs.dim() == 4 else None
            if images is None:
                images = split_views(inputs)[0]
            return self.embed(images)
        raise ValueError(
            f"{type(self).__name__}.forward: mode must be 'loss' or 'tensor', got {mode!r}"
        )

    def head_state_dict(self) -> dict[str, Tensor]:
        """The pretext head for export: ``projector.*`` (+ ``predictor.*`` for BYOL)."""
        return {
            f"{name}.{key}": value
            for name in self.head_module_names
            for key, value in getattr(self, name).state_dict().items()
        }

    def load_head_checkpoint(self) -> None:
        """Load ``head_checkpoint`` if one was given; subclasses call this once all heads exist."""
        if self.head_checkpoint:
            from bissl_dense.pretext.weights import load_pretext_head

            self.load_head_state_dict(load_pretext_head(self.head_checkpoint))

    def reset_target(self) -> None:
        """Make any target network equal to the online one (no-op for methods without one)."""

    def load_head_state_dict(self, state: dict[str, Tensor]) -> None:
        """Load a head saved by :meth:`head_state_dict` (or a published ``..._head_...`` file)."""
        groups = split_head_state(state)
        for name in self.head_module_names:
            if name not in groups:
                raise KeyError(
                    f"head state has no '{name}.*' entries (found prefixes {sorted(groups)}); "
                    f"a {type(self).__name__} head needs {list(self.head_module_names)}"
                )
            getattr(self, name).load_state_dict(groups[name])
        self.reset_target()

    def after_optimizer_step(self, step: int, max_steps: int) -> None:
        """Per-step update after optimizer step ``step`` (0-based) of ``max_steps``."""
