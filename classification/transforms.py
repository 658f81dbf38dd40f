"""Downstream image transforms for classification (SPEC §4, "fine-tuning (classification)").

Training: ``RandomResizedCrop(96, scale=(0.5, 1))`` and a horizontal flip; evaluation: resize
the short side to 96/0.875 px and take the centre 96 px crop. Both end with ImageNet
normalisation, the statistics the pretext backbone was trained with.
"""

from __future__ import annotations

import torch
from torchvision.transforms import InterpolationMode, v2

from bissl_dense.pretext.transforms import IMAGENET_MEAN, IMAGENET_STD, eval_transform

__all__ = ["build_transform", "eval_transform", "train_transform"]


def train_transform(image_size: int = 96, min_scale: float = 0.5) -> v2.Compose:
    """Random resized crop (area scale in ``[min_scale, 1]``) and horizontal flip."""
    if not 0.0 < min_scale <= 1.0:
        raise ValueError(f"min_scale must be in (0, 1], got {min_scale}")
    return v2.Compose(
        [
            v2.RandomResizedCrop(
                image_size,
                scale=(min_scale, 1.0),
                interpolation=InterpolationMode.BICUBIC,
                antialias=True,
            ),
            v2.RandomHorizontalFlip(0.5),
            v2.ToImage(),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(mean=list(IMAGENET_MEAN), std=list(IMAGENET_STD)),
        ]
    )


def build_transform(kind: str, image_size: int = 96, min_scale: float = 0.5) -> v2.Compose:
    """``"train"`` (augmented) or ``"eval"`` (deterministic resize + centre crop)."""
    if kind == "train":
        return train_transform(image_size, min_scale)
    if kind == "eval":
        return eval_transform(image_size)
    raise ValueError(f"transform must be 'train' or 'eval', got {kind!r}")
