"""The downstream classifier: a ResNet backbone with torchvision names and a linear head.

One model serves every classification stage (SPEC §1, §4): the head warm-up (frozen backbone,
BatchNorm in eval mode), BiSSL's upper level, fine-tuning, linear probing and evaluation. Its
parameter names are ``backbone.<torchvision name>`` and ``head.{weight,bias}``, so the lower↔upper
correspondence of BiSSL is the prefix ``backbone.``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from mmengine.model import BaseModel
from mmengine.registry import MODELS
from torch import Tensor, nn

from bissl_dense.errors import WeightsError
from bissl_dense.fileio import atomic_torch_save
from bissl_dense.pretext.backbones import build_backbone, canonical_arch
from bissl_dense.pretext.weights import load_backbone_into

__all__ = ["ImageClassifier", "load_head_checkpoint"]


def load_head_checkpoint(head: nn.Linear, path: str | Path) -> None:
    """Load a linear head saved by :meth:`ImageClassifier.save_head` (``weight``, ``bias``).

    Also accepts a full classifier checkpoint (mmengine's, with ``state_dict``), from which the
    ``head.*`` entries are taken. Read with ``weights_only=True``.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"head checkpoint '{path}' does not exist")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    if isinstance(state, dict) and any(k.startswith("head.") for k in state):
        state = {k[len("head.") :]: v for k, v in state.items() if k.startswith("head.")}
    expected = {k: tuple(v.shape) for k, v in head.state_dict().items()}
    found = {k: tuple(v.shape) for k, v in state.items()} if isinstance(state, dict) else {}
    if found != expected:
        raise WeightsError(
            f"head checkpoint '{path}' holds {found or type(state).__name__}, but this model's "
            f"head needs {expected} (feature dimension, number of classes); was it warmed up "
            "for this dataset and architecture?"
        )
    head.load_state_dict(state)


@MODELS.register_module()
class ImageClassifier(BaseModel):
    """ResNet backbone (torchvision names) → linear head; single- or multi-label.

    Args:
        num_classes: number of outputs of the head.
        backbone: keyword arguments of :func:`bissl_dense.pretext.backbones.build_backbone`.
        backbone_checkpoint: backbone weights (our exports, published files, torchvision/timm
            checkpoints), read with ``weights_only=True``; a file of another architecture fails
            with the mismatching keys named.
        head_checkpoint: a warmed-up head (:meth:`save_head`).
        freeze_backbone: train only the head, the backbone in eval mode (head warm-up, linear
            probing; SPEC §1 step 2).
        zero_init_head: start the head at zero (baseline of SPEC §6).
        multilabel: binary cross-entropy per class (VOC2007) instead of softmax cross-entropy.
    """

    def __init__(
        self,
        num_classes: int,
        backbone: dict[str, Any] | None = None,
        backbone_checkpoint: str | None = None,
        head_checkpoint: str | None = None,
        freeze_backbone: bool = False,
        zero_init_head: bool = False,
        multilabel: bool = False,
        data_preprocessor: dict[str, Any] | None = None,
        init_cfg: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(data_preprocessor=data_preprocessor, init_cfg=init_cfg)
        if int(num_classes) < 2:
            raise ValueError(f"ImageClassifier: num_classes must be >= 2, got {num_classes}")
        backbone = dict(backbone or {})
        self.arch = canonical_arch(backbone.get("arch", "resnet50"))
        self.backbone, self.feature_dim = build_backbone(**backbone)
        if backbone_checkpoint:
            try:
                load_backbone_into(self.backbone, backbone_checkpoint)
            except (ValueError, OSError) as error:
                raise WeightsError(str(error)) from error
        self.head = nn.Linear(self.feature_dim, int(num_classes))
        if zero_init_head:
            nn.init.zeros_(self.head.weight)
            nn.init.zeros_(self.head.bias)
        if head_checkpoint:
            load_head_checkpoint(self.head, head_checkpoint)
        self.num_classes = int(num_classes)
        self.multilabel = bool(multilabel)
        self.freeze_backbone = bool(freeze_backbone)
        if self.freeze_backbone:
            self.backbone.requires_grad_(False)
            self.backbone.eval()

    def train(self, mode: bool = True) -> ImageClassifier:
        super().train(mode)
        if self.freeze_backbone:  # warm-up / probing keep the backbone's BatchNorm statistics
            self.backbone.eval()
        return self

    def logits(self, images: Tensor) -> Tensor:
        if self.freeze_backbone:
            with torch.no_grad():
                features = self.backbone(images)
        else:
            features = self.backbone(images)
        return self.head(features)

    def loss_of(self, logits: Tensor, targets: Tensor) -> Tensor:
        if self.multilabel:
            return F.binary_cross_entropy_with_logits(logits, targets.to(logits.dtype))
        return F.cross_entropy(logits, targets.long())

    def forward(self, inputs: Tensor, targets: Tensor | None = None, mode: str = "tensor") -> Any:
        """mmengine entry point: ``loss`` → ``{"loss"}``; ``predict`` → per-sample dicts
        (``logits``, ``target``) for :class:`~classification.metrics.ClassificationMetric`;
        ``tensor`` → logits."""
        logits = self.logits(inputs)
        if mode == "tensor":
            return logits
        if targets is None:
            raise ValueError(f"ImageClassifier.forward(mode={mode!r}) needs targets")
        if mode == "loss":
            return {"loss": self.loss_of(logits, targets)}
        if mode == "predict":
            return [
                {"logits": row.detach(), "target": target}
                for row, target in zip(logits, targets, strict=True)
            ]
        raise ValueError(f"mode must be 'loss', 'predict' or 'tensor', got {mode!r}")

    def save_head(self, path: str | Path) -> None:
        """Write the head's state dict atomically (read back by ``head_checkpoint``)."""
        atomic_torch_save({k: v.detach().cpu() for k, v in self.head.state_dict().items()}, path)
