"""Pretext augmentation: crop statistics of both crop modes, view asymmetry, normalisation."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import stats
from torchvision.transforms import v2

from bissl_dense.benchmarks.pretext import previous_augmentation
from bissl_dense.pretext.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    PILGaussianBlur,
    PretextAugmentation,
    eval_transform,
    pretext_view_transform,
)

WIDTH, HEIGHT = 200, 160


def _image(width: int = WIDTH, height: int = HEIGHT, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def _crop_stats(crop: v2.RandomResizedCrop, samples: int) -> tuple[np.ndarray, np.ndarray]:
    """Area fraction and aspect ratio (w/h) of crops drawn by the transform's own sampler."""
    img = _image()
    areas, ratios = [], []
    for _ in range(samples):
        params = crop.make_params([img])
        areas.append(params["height"] * params["width"] / (WIDTH * HEIGHT))
        ratios.append(params["width"] / params["height"])
    return np.array(areas), np.array(ratios)


def test_scale_mode_crops_cover_min_scale_to_whole_image() -> None:
    aug = PretextAugmentation(image_size=96, min_scale=0.5)
    for crop in aug.crops:
        areas, ratios = _crop_stats(crop, 4000)
        # Integer rounding of the crop side lengths moves the area by at most ~(w + h) pixels.
        tolerance = (WIDTH + HEIGHT) / (WIDTH * HEIGHT)
        assert areas.min() >= 0.5 - tolerance and areas.max() <= 1.0
        assert areas.min() < 0.52  # the lower end of the range is reached
        assert np.mean(areas < 0.75) > 0.3  # and the range is used, not only full crops
        assert ratios.min() >= 3 / 4 - 0.02 and ratios.max() <= 4 / 3 + 0.02


def test_reference_aspect_ratio_mode_reproduces_the_authors_crop() -> None:
    aug = PretextAugmentation(image_size=96, min_scale=0.5, crop_mode="reference_aspect_ratio")
    for crop in aug.crops:
        assert crop.scale == (0.08, 1.0) and crop.ratio == (0.5, 1.0)
        areas, ratios = _crop_stats(crop, 4000)
        # The min ratio bounds the aspect ratio instead of the area: small crops are common ...
        assert np.mean(areas < 0.5) > 0.3
        assert areas.min() < 0.15
        # ... and crops are never wider than tall.
        assert ratios.max() <= 1.0 + 0.02 and ratios.min() >= 0.5 - 0.02


def test_pipeline_draws_its_crops_from_the_configured_range(monkeypatch: Any) -> None:
    aug = PretextAugmentation(image_size=48, min_scale=0.6)
    recorded: list[list[float]] = [[], []]
    for view, crop in enumerate(aug.crops):
        original = crop.make_params

        def recording(flat_inputs: list[Any], _orig: Any = original, _v: int = view) -> Any:
            params = _orig(flat_inputs)
            recorded[_v].append(params["height"] * params["width"] / (WIDTH * HEIGHT))
            return params

        monkeypatch.setattr(crop, "make_params", recording)
    img = _image()
    for _ in range(60):
        x1, x2 = aug(img)
        assert x1.shape == x2.shape == (3, 48, 48)
        assert x1.dtype == x2.dtype == torch.float32
    tolerance = (WIDTH + HEIGHT) / (WIDTH * HEIGHT)
    for areas in recorded:
        assert len(areas) == 60
        assert min(areas) >= 0.6 - tolerance and max(areas) <= 1.0


def _probability(transforms: list[Any], kind: type) -> float:
    """Probability with which `kind` is applied in a view's pipeline."""
    for t in transforms:
        if isinstance(t, v2.RandomApply) and any(isinstance(s, kind) for s in t.transforms):
            return t.p
        if isinstance(t, kind):
            return t.p
    raise AssertionError(f"{kind.__name__} not in the pipeline")


def test_views_are_asymmetric_as_in_spec() -> None:
    first, second = (list(v.transforms) for v in PretextAugmentation().view_transforms)
    assert _probability(first, v2.GaussianBlur) == 1.0
    assert _probability(second, v2.GaussianBlur) == 0.1
    assert _probability(first, v2.RandomSolarize) == 0.0
    assert _probability(second, v2.RandomSolarize) == 0.2
    for view in (first, second):
        assert _probability(view, v2.RandomHorizontalFlip) == 0.5
        assert _probability(view, v2.ColorJitter) == 0.8
        assert _probability(view, v2.RandomGrayscale) == 0.2
        jitter = next(s for t in view if isinstance(t, v2.RandomApply) for s in t.transforms)
        assert jitter.brightness == (0.6, 1.4) and jitter.contrast == (0.6, 1.4)
        assert jitter.saturation == (0.8, 1.2) and jitter.hue == (-0.1, 0.1)


def test_solarization_inverts_bright_pixels_of_the_second_view_only() -> None:
    # A uniform bright image: crop, flip, jitter-free grey levels; solarisation maps 230 -> 25.
    view = pretext_view_transform(image_size=16, blur_p=0.0, solarize_p=1.0)
    view.transforms[2].p = 0.0  # no colour jitter
    view.transforms[3].p = 0.0  # no grayscale
    out = view(Image.new("RGB", (40, 40), (230, 230, 230)))
    expected = (25 / 255 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    torch.testing.assert_close(out[:, 8, 8], expected.float(), atol=2e-2, rtol=0)


def test_eval_transform_resizes_then_centre_crops_and_normalises() -> None:
    img = _image(width=300, height=218, seed=1)
    out = eval_transform(96)(img)
    assert out.shape == (3, 96, 96)
    # Independent path with PIL: short side 218 -> int(96 / 0.875) = 109, i.e. 150 x 109.
    resized = img.resize((150, 109), Image.Resampling.BILINEAR)
    left, top = round((150 - 96) / 2), round((109 - 96) / 2)
    crop = np.asarray(resized.crop((left, top, left + 96, top + 96)), dtype=np.float32) / 255
    expected = torch.from_numpy(crop).permute(2, 0, 1) - torch.tensor(IMAGENET_MEAN)[:, None, None]
    expected = expected / torch.tensor(IMAGENET_STD)[:, None, None]
    torch.testing.assert_close(out, expected.float(), atol=1e-5, rtol=0)


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="crop_mode"):
        PretextAugmentation(crop_mode="ratio")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="min_scale"):
        PretextAugmentation(min_scale=0.0)
    with pytest.raises(TypeError, match="PIL"):
        PretextAugmentation()(torch.zeros(3, 8, 8))  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------
# the fast blur: same sigma draws, same blur probabilities, same distribution of outputs


def test_blur_sigma_and_probability_per_view(monkeypatch: Any) -> None:
    aug = PretextAugmentation(image_size=24)
    sigmas: list[float] = []
    original = PILGaussianBlur.transform

    def recording(self, inpt, params):  # noqa: ANN001
        sigmas.append(params["sigma"][0])
        return original(self, inpt, params)

    monkeypatch.setattr(PILGaussianBlur, "transform", recording)
    img = _image(16, 16)
    n = 600
    blurs = [  # the RandomApply(blur) step of each view's pipeline, applied alone (fast)
        next(t for t in view.transforms if isinstance(t, v2.RandomApply) and t.p in (1.0, 0.1))
        for view in aug.view_transforms
    ]
    assert [b.p for b in blurs] == [1.0, 0.1]
    torch.manual_seed(0)
    for _ in range(n):
        blurs[0](img)
    first = list(sigmas)
    sigmas.clear()
    for _ in range(n):
        blurs[1](img)
    assert len(first) == n  # view 1 always blurs
    assert min(first) >= 0.1 and max(first) <= 2.0
    assert stats.kstest(first, stats.uniform(loc=0.1, scale=1.9).cdf).pvalue > 0.01
    # view 2 blurs with probability 0.1
    assert stats.binomtest(len(sigmas), n, 0.1).pvalue > 0.01


def test_pil_blur_matches_torchvision_blur_at_equal_sigma() -> None:
    img = _image(96, 96, seed=3)
    for sigma in (0.1, 0.5, 1.0, 2.0):
        new = v2.functional.pil_to_tensor(PILGaussianBlur(13, sigma=sigma)(img)).float()
        old = v2.functional.pil_to_tensor(v2.GaussianBlur(13, sigma=sigma)(img)).float()
        inner = (slice(None), slice(8, -8), slice(8, -8))  # borders: padding modes differ
        difference = (new - old)[inner].abs().mean().item()
        print(f"sigma {sigma}: mean |PIL - torchvision| = {difference:.2f} / 255")
        assert difference < 2.0, sigma  # in 8-bit levels, on white noise (the hardest input)


def test_views_match_the_old_pipeline_in_distribution() -> None:
    """Same seeds: the new and old pipelines draw the same crops, jitter, sigma (the blur keeps
    torchvision's random stream); outputs differ only by the blur's implementation. Across
    seeds, a sharpness statistic of the outputs has the same distribution (two-sample KS)."""
    aug = PretextAugmentation(image_size=32)
    old_views = previous_augmentation(32).view_transforms
    img = _image(80, 64, seed=4)

    def sharpness(x: torch.Tensor) -> float:
        return (x[:, 1:, :] - x[:, :-1, :]).abs().mean().item()

    paired, stats_new, stats_old = [], [], []
    for seed in range(100):
        for view, (new_t, old_t) in enumerate(zip(aug.view_transforms, old_views)):
            torch.manual_seed(seed)
            new = new_t(img)
            torch.manual_seed(seed)
            old = old_t(img)
            paired.append((new - old).abs().mean().item())
            if view == 0:
                stats_new.append(sharpness(new))
                torch.manual_seed(10_000 + seed)  # an independent draw of the old pipeline
                stats_old.append(sharpness(old_t(img)))
    assert np.median(paired) < 0.05  # normalised units (~1/80 of the value range)
    assert stats.ks_2samp(stats_new, stats_old).pvalue > 0.01
