"""Pretext augmentations (SPEC §4) and the evaluation transform used by probes.

The two views follow the asymmetric VICReg-style recipe the paper uses: identical crop, flip,
colour jitter and grayscale, then Gaussian blur with probability 1.0 / 0.1 and solarisation with
probability 0.0 / 0.2 for the first / second view.

Crop modes (SPEC §8):

* ``"scale"`` (default, what the paper describes): ``RandomResizedCrop(scale=(min_scale, 1))``
  with torchvision's default aspect-ratio range (3/4, 4/3).
* ``"reference_aspect_ratio"``: what the authors' published code does. It passes its
  "min ratio" as ``ratio=(min_scale, 1.0)`` and leaves ``scale`` at torchvision's default
  ``(0.08, 1.0)``: crops cover 8-100 % of the image and are never wider than tall (aspect
  ratio w/h within [min_scale, 1]). Use it only to reproduce the published weights' training.

Other facts of the reference kept here: bicubic interpolation with antialiasing for the crop,
blur sigma drawn uniformly from [0.1, 2.0] and applied with PIL's ``GaussianBlur(radius=sigma)``
(PIL's radius is the standard deviation), and solarisation at threshold 128.

Speed: the first view always blurs. torchvision's ``GaussianBlur`` on a PIL image converts it to
a tensor, convolves with a 13 px kernel (2*ceil(3*2.0)+1, +-3 sigma at the largest sigma) and
converts back, ~4.8 ms per 96 px image on one core here; PIL's own blur (three box-filter passes
matched to the Gaussian's variance) takes ~0.2 ms. :class:`PILGaussianBlur` keeps torchvision's
transform and its sigma draw (same random stream, so the same sigma under the same seed) and blurs
PIL images with PIL; tests/pretext/test_transforms.py checks that the outputs' distribution is
unchanged, ``python -m bissl_dense.benchmarks.pretext`` measures the throughput.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image, ImageFilter
from torch import Tensor
from torchvision.transforms import InterpolationMode, v2

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "PILGaussianBlur",
    "PretextAugmentation",
    "eval_transform",
    "pretext_view_transform",
]

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

CropMode = Literal["scale", "reference_aspect_ratio"]
_CROP_MODES: tuple[str, ...] = ("scale", "reference_aspect_ratio")
_BLUR_SIGMA: tuple[float, float] = (0.1, 2.0)
_BLUR_KERNEL = 2 * math.ceil(3 * _BLUR_SIGMA[1]) + 1
_SOLARIZE_THRESHOLD = 128  # PIL's ImageOps.solarize default, on uint8 images
# Crop area scale torchvision uses when only `ratio` is given, as in the reference code.
_TORCHVISION_DEFAULT_SCALE: tuple[float, float] = (0.08, 1.0)
_TORCHVISION_DEFAULT_RATIO: tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0)


class PILGaussianBlur(v2.GaussianBlur):
    """torchvision's ``GaussianBlur`` (same sigma draw) that blurs PIL images with PIL's filter.

    ``ImageFilter.GaussianBlur(radius=sigma)`` approximates the Gaussian of standard deviation
    sigma by three box blurs of matched variance, ~20x faster than torchvision's PIL path here.
    Tensors are blurred by torchvision as before.
    """

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if isinstance(inpt, Image.Image):
            return inpt.filter(ImageFilter.GaussianBlur(radius=float(params["sigma"][0])))
        return super().transform(inpt, params)


class _ToNormalizedTensor(v2.Transform):
    """PIL image → float32 CHW tensor normalised by ``mean``/``std``, in one pass.

    The same values as ``ToImage → ToDtype(float32, scale=True) → Normalize`` (to float rounding,
    ~1e-7), as one subtraction and one division on the uint8 data instead of three full-image
    transforms: ~1 ms less per view on one core here.
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.mean, self.std = list(mean), list(std)
        self._shift = torch.tensor([255.0 * m for m in mean]).view(-1, 1, 1)
        self._scale = torch.tensor([255.0 * s for s in std]).view(-1, 1, 1)

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if isinstance(inpt, Image.Image):
            array = np.asarray(inpt.convert("RGB") if inpt.mode != "RGB" else inpt)
            image = torch.from_numpy(array.copy()).permute(2, 0, 1)
            return image.to(torch.float32).sub_(self._shift).div_(self._scale)
        return inpt


def _to_normalized_tensor(mean: Sequence[float], std: Sequence[float]) -> list[v2.Transform]:
    return [_ToNormalizedTensor(mean, std)]


def _random_resized_crop(
    image_size: int,
    min_scale: float,
    crop_mode: CropMode,
    interpolation: InterpolationMode,
) -> v2.RandomResizedCrop:
    if crop_mode == "scale":
        scale, ratio = (min_scale, 1.0), _TORCHVISION_DEFAULT_RATIO
    else:  # "reference_aspect_ratio": the authors' bug, SPEC §8
        scale, ratio = _TORCHVISION_DEFAULT_SCALE, (min_scale, 1.0)
    return v2.RandomResizedCrop(
        image_size, scale=scale, ratio=ratio, interpolation=interpolation, antialias=True
    )


def pretext_view_transform(
    image_size: int = 96,
    min_scale: float = 0.5,
    blur_p: float = 1.0,
    solarize_p: float = 0.0,
    crop_mode: CropMode = "scale",
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    interpolation: InterpolationMode = InterpolationMode.BICUBIC,
) -> v2.Compose:
    """One view's pipeline; its first transform is the ``RandomResizedCrop``."""
    if crop_mode not in _CROP_MODES:
        raise ValueError(f"crop_mode must be one of {_CROP_MODES}, got {crop_mode!r}.")
    if not 0.0 < min_scale <= 1.0:
        raise ValueError(f"min_scale must be in (0, 1], got {min_scale}.")
    if int(image_size) != image_size or image_size < 1:
        raise ValueError(f"image_size must be a positive int, got {image_size}.")
    for name, p in (("blur_p", blur_p), ("solarize_p", solarize_p)):
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"{name} must be a probability in [0, 1], got {p}.")
    return v2.Compose(
        [
            _random_resized_crop(image_size, min_scale, crop_mode, interpolation),
            v2.RandomHorizontalFlip(p=0.5),
            v2.RandomApply(
                [v2.ColorJitter(brightness=0.4, contrast=0.4, saturation=0.2, hue=0.1)], p=0.8
            ),
            v2.RandomGrayscale(p=0.2),
            v2.RandomApply([PILGaussianBlur(_BLUR_KERNEL, sigma=_BLUR_SIGMA)], p=blur_p),
            v2.RandomSolarize(threshold=_SOLARIZE_THRESHOLD, p=solarize_p),
            *_to_normalized_tensor(mean, std),
        ]
    )


class PretextAugmentation:
    """Two asymmetric views of a PIL image for SimCLR/BYOL (SPEC §4; crop modes in the module doc).

    ``view_transforms[0]`` blurs always and never solarises; ``view_transforms[1]`` blurs with
    probability 0.1 and solarises with probability 0.2.
    """

    def __init__(
        self,
        image_size: int = 96,
        min_scale: float = 0.5,
        crop_mode: CropMode = "scale",
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        interpolation: InterpolationMode = InterpolationMode.BICUBIC,
    ) -> None:
        self.image_size = image_size
        self.min_scale = min_scale
        self.crop_mode = crop_mode
        common = dict(
            image_size=image_size,
            min_scale=min_scale,
            crop_mode=crop_mode,
            mean=mean,
            std=std,
            interpolation=interpolation,
        )
        self.view_transforms: tuple[v2.Compose, v2.Compose] = (
            pretext_view_transform(blur_p=1.0, solarize_p=0.0, **common),  # type: ignore[arg-type]
            pretext_view_transform(blur_p=0.1, solarize_p=0.2, **common),  # type: ignore[arg-type]
        )

    @property
    def crops(self) -> tuple[v2.RandomResizedCrop, v2.RandomResizedCrop]:
        """The ``RandomResizedCrop`` of each view (for inspection and tests)."""
        return self.view_transforms[0].transforms[0], self.view_transforms[1].transforms[0]

    def __call__(self, img: Image.Image) -> tuple[Tensor, Tensor]:
        if not isinstance(img, Image.Image):
            raise TypeError(
                f"PretextAugmentation expects a PIL image, got {type(img).__name__}; "
                "open files with PIL.Image.open(path).convert('RGB')."
            )
        if img.mode != "RGB":
            img = img.convert("RGB")
        return self.view_transforms[0](img), self.view_transforms[1](img)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(image_size={self.image_size}, min_scale={self.min_scale}, "
            f"crop_mode={self.crop_mode!r})"
        )


def eval_transform(
    image_size: int = 96,
    crop_fraction: float = 0.875,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> v2.Compose:
    """Resize the short side to ``int(image_size / crop_fraction)`` then centre-crop (SPEC §4).

    For 96 px that is a resize to 109 px (truncated, as in the reference) and a 96 px crop.
    """
    if not 0.0 < crop_fraction <= 1.0:
        raise ValueError(f"crop_fraction must be in (0, 1], got {crop_fraction}.")
    return v2.Compose(
        [
            v2.Resize(int(image_size / crop_fraction), antialias=True),
            v2.CenterCrop(image_size),
            *_to_normalized_tensor(mean, std),
        ]
    )
