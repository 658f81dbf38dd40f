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
``ColorJitter(0.4, 0.4, 0.2, 0.1)`` with its random order of the four adjustments, blur sigma
drawn uniformly from [0.1, 2.0] with torchvision's 13-tap kernel (2*ceil(3*2.0)+1) and reflect
padding, and solarisation at threshold 128 (of 255).

Speed (issue 13). The torchvision pipeline (``v2.Compose`` of the transforms above on PIL images,
then ``ToImage → ToDtype → Normalize``), timed op by op on one core here: view 1 ~7.5 ms, of it
the blur 3.4 ms (PIL → tensor → 13×13 convolution → PIL; view 1 always blurs), the colour
jitter 1.7 ms (0.9 ms of it PIL's HSV round trip for the hue), the crop 1.2 ms, the tensor
conversion 0.8 ms; view 2 ~4.7 ms. :class:`PretextView` computes the same thing in one pass per
view:

* crop and resize in one PIL ``resize(box=...)`` call (PIL's bicubic filter, antialiased);
* everything after the crop on one float32 CHW array: the jitter adjustments as torchvision's
  float formulas (brightness, contrast and saturation are blends clamped to [0, 1]; the hue is
  rotated by the closed form of HSV → RGB, ``c = V − C·clip(min(k, 4 − k), 0, 1)`` with
  ``k = (n + 6h) mod 6``, exact and with no HSV image), grayscale, the Gaussian blur as two
  matrix products ``M x Mᵀ`` (M = the 13-tap kernel with reflect padding folded in: the
  same filter as torchvision's, separable), solarisation, and normalisation fused with the flip
  and the final copy.

Random draws are torchvision's, in torchvision's order, from torch's global generator (so
:func:`~bissl_dense.seeding.seeded_rng` reproduces them and the same seed gives the same crop,
flip, jitter, grayscale, sigma and solarisation as the torchvision pipeline). Outputs differ from
it by rounding (the torchvision pipeline quantises to 8 bits after every PIL step) and on the
crop's 2-3 px border (``resize(box=)`` reads the real pixels outside the box where crop-then-resize
replicates the box's edge).
tests/pretext/test_transforms.py checks the steps against torchvision's functional ops and the
distribution of outputs against the old pipeline (two-sample KS tests);
``python -m bissl_dense.benchmarks.pretext`` measures the throughput.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torchvision.transforms import InterpolationMode, v2

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "PretextAugmentation",
    "PretextView",
    "ViewParams",
    "adjust_hue",
    "eval_transform",
    "gaussian_blur_matrix",
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
# ITU-R 601-2 luma, torchvision's rgb_to_grayscale weights (used by contrast and saturation too)
_LUMA: tuple[float, float, float] = (0.2989, 0.587, 0.114)
_PIL_RESAMPLE = {
    InterpolationMode.NEAREST: Image.Resampling.NEAREST,
    InterpolationMode.BILINEAR: Image.Resampling.BILINEAR,
    InterpolationMode.BICUBIC: Image.Resampling.BICUBIC,
    InterpolationMode.LANCZOS: Image.Resampling.LANCZOS,
    InterpolationMode.BOX: Image.Resampling.BOX,
    InterpolationMode.HAMMING: Image.Resampling.HAMMING,
}


@functools.lru_cache(maxsize=8)
def _reflect_taps(n: int, kernel_size: int) -> np.ndarray:
    """Flat indices ``i·n + reflect(i + t − r)`` of the matrix entry that tap t of output i
    adds to, tap-major (``kernel_size·n`` of them).

    Reflection without repeating the edge (``torch.nn.functional.pad(mode="reflect")``), repeated
    for images smaller than the kernel's radius; several taps may read the same input.
    """
    radius = kernel_size // 2
    period = max(2 * (n - 1), 1)
    rows = np.arange(n)
    flat = []
    for t in range(kernel_size):
        src = np.mod(rows + t - radius, period)
        src = np.where(src > n - 1, period - src, src)
        flat.append(rows * n + src)
    return np.concatenate(flat)


@functools.lru_cache(maxsize=1)
def _tap_offsets(kernel_size: int) -> np.ndarray:
    radius = kernel_size // 2
    return np.linspace(-radius, radius, kernel_size, dtype=np.float64)


def gaussian_blur_matrix(n: int, sigma: float, kernel_size: int = _BLUR_KERNEL) -> Tensor:
    """The ``(n, n)`` matrix M of torchvision's 1-D Gaussian blur along one axis of length n.

    Kernel as ``torchvision.transforms.v2.functional.gaussian_blur`` builds it (``kernel_size``
    taps of exp(−x²/2σ²), normalised to sum 1) with reflect padding folded in, so that the 2-D
    blur of a square CHW image x is ``M @ x @ M.T`` (the kernel is separable). Built by one
    ``bincount`` of the taps into their (cached) entries; the dense ``(kernel, n, n)``
    contraction it replaces took 0.16 ms per blurred view at 96 px (measured), about 6% of the
    two-view budget of one core.
    """
    kernel = np.exp(-0.5 * (_tap_offsets(kernel_size) / sigma) ** 2)
    kernel /= kernel.sum()
    weights = np.repeat(kernel, n)
    matrix = np.bincount(_reflect_taps(n, kernel_size), weights=weights, minlength=n * n)
    return torch.from_numpy(matrix.reshape(n, n).astype(np.float32))


def _luma(x: np.ndarray) -> np.ndarray:
    """Grayscale ``(H, W)`` of a float CHW RGB image, torchvision's weights."""
    gray = x[0] * _LUMA[0]
    gray += x[1] * _LUMA[1]
    gray += x[2] * _LUMA[2]
    return gray


def _blend(x: np.ndarray, other: np.ndarray | float, ratio: float) -> np.ndarray:
    """``clamp(ratio·x + (1 − ratio)·other, 0, 1)`` in place: torchvision's ``_blend``."""
    x *= ratio
    x += (1.0 - ratio) * other
    np.clip(x, 0.0, 1.0, out=x)
    return x


def adjust_hue(x: np.ndarray, hue_factor: float) -> np.ndarray:
    """Rotate the hue of a float CHW RGB image in [0, 1] by ``hue_factor`` turns (new array).

    Same result as torchvision's ``adjust_hue`` on float tensors (RGB → HSV, shift H, HSV → RGB)
    by the closed form of HSV → RGB: with V = max, C = max − min (both unchanged by the shift)
    and the shifted hue h in sixths, channel n ∈ {5, 3, 1} (R, G, B) is
    ``V − C·clip(min(k, 4 − k), 0, 1)`` with ``k = (n + h) mod 6``. No HSV image is formed.
    """
    r, g, b = x
    maxc = np.maximum(np.maximum(r, g), b)
    chroma = maxc - np.minimum(np.minimum(r, g), b)
    # The hue sector of the largest channel, ties resolved R, G, B as torchvision does.
    is_r = maxc == r
    is_g = (maxc == g) & ~is_r
    is_b = ~(is_r | is_g)
    numerator = (g - b) * is_r
    numerator += (b - r) * is_g
    numerator += (r - g) * is_b
    sixths = numerator / np.maximum(chroma, np.float32(1e-12))  # grey pixels: 0 / tiny = 0
    sixths += is_g * np.float32(2.0)
    sixths += is_b * np.float32(4.0)
    sixths += np.float32(6.0 * hue_factor + 6.0)  # the shift, + 6 to keep it positive: [0, 12)
    out = np.empty_like(x)
    for channel, n in enumerate((5.0, 3.0, 1.0)):
        k = sixths + np.float32(n)
        k -= np.float32(6.0) * np.floor(k * np.float32(1.0 / 6.0))  # mod 6 (np.mod is slow)
        ramp = np.minimum(k, np.float32(4.0) - k)
        np.clip(ramp, np.float32(0.0), np.float32(1.0), out=ramp)
        ramp *= chroma
        np.subtract(maxc, ramp, out=out[channel])
    return out


@dataclass(frozen=True)
class ViewParams:
    """Every random choice of one view (drawn by :meth:`PretextView.sample`).

    ``jitter_order`` lists the adjustments in the order applied (0 brightness, 1 contrast,
    2 saturation, 3 hue); ``jitter`` holds their factors; both are ``None`` when the colour
    jitter is skipped. ``blur_sigma`` is ``None`` when the view is not blurred.
    """

    top: int
    left: int
    height: int
    width: int
    flip: bool
    jitter_order: tuple[int, ...] | None
    jitter: tuple[float, float, float, float] | None
    grayscale: bool
    blur_sigma: float | None
    solarize: bool


class PretextView:
    """One view's pipeline (crop, flip, colour jitter, grayscale, blur, solarise, normalise)
    computed in one pass; see the module docstring for how and why.

    The probabilities and ranges are attributes, as in torchvision's transforms: ``crop`` (the
    ``RandomResizedCrop`` whose sampler draws the crop), ``flip_p``, ``jitter`` (the
    ``ColorJitter`` whose sampler draws order and factors), ``jitter_p``, ``grayscale_p``,
    ``blur_p``, ``blur_sigma``, ``solarize_p``.
    """

    def __init__(
        self,
        image_size: int = 96,
        min_scale: float = 0.5,
        blur_p: float = 1.0,
        solarize_p: float = 0.0,
        crop_mode: CropMode = "scale",
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        interpolation: InterpolationMode = InterpolationMode.BICUBIC,
    ) -> None:
        if crop_mode not in _CROP_MODES:
            raise ValueError(f"crop_mode must be one of {_CROP_MODES}, got {crop_mode!r}.")
        if not 0.0 < min_scale <= 1.0:
            raise ValueError(f"min_scale must be in (0, 1], got {min_scale}.")
        if int(image_size) != image_size or image_size < 1:
            raise ValueError(f"image_size must be a positive int, got {image_size}.")
        for name, p in (("blur_p", blur_p), ("solarize_p", solarize_p)):
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"{name} must be a probability in [0, 1], got {p}.")
        if interpolation not in _PIL_RESAMPLE:
            raise ValueError(f"interpolation {interpolation} has no PIL filter.")
        self.image_size = int(image_size)
        self.crop = _random_resized_crop(self.image_size, min_scale, crop_mode, interpolation)
        self.flip_p = 0.5
        self.jitter = v2.ColorJitter(brightness=0.4, contrast=0.4, saturation=0.2, hue=0.1)
        self.jitter_p = 0.8
        self.grayscale_p = 0.2
        self.blur_p = blur_p
        self.blur_sigma = _BLUR_SIGMA
        self.blur_kernel_size = _BLUR_KERNEL
        self.solarize_p = solarize_p
        self.solarize_threshold = _SOLARIZE_THRESHOLD
        self.mean = np.asarray(mean, dtype=np.float32).reshape(3, 1, 1)
        self.std = np.asarray(std, dtype=np.float32).reshape(3, 1, 1)
        self._resample = _PIL_RESAMPLE[interpolation]

    def sample(self, img: Image.Image) -> ViewParams:
        """Draw the view's random choices from torch's global generator, in the order and with
        the samplers of the torchvision pipeline (same seed, same choices)."""
        crop = self.crop.make_params([img])
        flip = bool(torch.rand(1) < self.flip_p)
        order: tuple[int, ...] | None = None
        factors: tuple[float, float, float, float] | None = None
        if torch.rand(1) < self.jitter_p:  # RandomApply draws first, then ColorJitter's order
            drawn = self.jitter.make_params([img])
            order = tuple(int(i) for i in drawn["fn_idx"])
            factors = (
                drawn["brightness_factor"],
                drawn["contrast_factor"],
                drawn["saturation_factor"],
                drawn["hue_factor"],
            )
        grayscale = bool(torch.rand(1) < self.grayscale_p)
        sigma = None
        if torch.rand(1) < self.blur_p:
            sigma = float(torch.empty(1).uniform_(*self.blur_sigma).item())
        solarize = bool(torch.rand(1) < self.solarize_p)
        return ViewParams(
            top=crop["top"],
            left=crop["left"],
            height=crop["height"],
            width=crop["width"],
            flip=flip,
            jitter_order=order,
            jitter=factors,
            grayscale=grayscale,
            blur_sigma=sigma,
            solarize=solarize,
        )

    def apply(self, img: Image.Image, params: ViewParams) -> Tensor:
        """The view of ``img`` for the given choices: a float32 ``(3, S, S)`` normalised tensor."""
        if img.mode != "RGB":
            img = img.convert("RGB")
        size = self.image_size
        box = (params.left, params.top, params.left + params.width, params.top + params.height)
        pixels = np.asarray(img.resize((size, size), self._resample, box=box))
        x = np.empty((3, size, size), dtype=np.float32)
        np.multiply(pixels.transpose(2, 0, 1), np.float32(1.0 / 255.0), out=x)
        if params.jitter_order is not None and params.jitter is not None:
            brightness, contrast, saturation, hue = params.jitter
            for op in params.jitter_order:
                if op == 0:
                    x *= np.float32(brightness)
                    np.clip(x, 0.0, 1.0, out=x)
                elif op == 1:
                    _blend(x, np.float32(_luma(x).mean()), contrast)
                elif op == 2:
                    _blend(x, _luma(x), saturation)
                else:
                    x = adjust_hue(x, hue)
        if params.grayscale:
            x[:] = _luma(x)
        if params.blur_sigma is not None:
            matrix = gaussian_blur_matrix(size, params.blur_sigma, self.blur_kernel_size)
            blurred = torch.matmul(torch.matmul(matrix, torch.from_numpy(x)), matrix.T)
            x = blurred.numpy()
        if params.solarize:  # uint8 v >= 128 is inverted; the float equivalent is v >= 127.5
            bright = x >= np.float32((self.solarize_threshold - 0.5) / 255.0)
            x = np.where(bright, np.float32(1.0) - x, x)
        source = x[:, :, ::-1] if params.flip else x
        out = np.empty((3, size, size), dtype=np.float32)
        np.subtract(source, self.mean, out=out)
        out /= self.std
        return torch.from_numpy(out)

    def __call__(self, img: Image.Image) -> Tensor:
        return self.apply(img, self.sample(img))

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(image_size={self.image_size}, crop={self.crop}, "
            f"blur_p={self.blur_p}, solarize_p={self.solarize_p})"
        )


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


#: One view's pipeline; the name the transform had before it became :class:`PretextView`.
pretext_view_transform = PretextView


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
        self.view_transforms: tuple[PretextView, PretextView] = (
            PretextView(blur_p=1.0, solarize_p=0.0, **common),  # type: ignore[arg-type]
            PretextView(blur_p=0.1, solarize_p=0.2, **common),  # type: ignore[arg-type]
        )

    @property
    def crops(self) -> tuple[v2.RandomResizedCrop, v2.RandomResizedCrop]:
        """The ``RandomResizedCrop`` of each view (for inspection and tests)."""
        return self.view_transforms[0].crop, self.view_transforms[1].crop

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
