"""Pretext augmentation: crop statistics of both crop modes, view asymmetry, normalisation, and
the one-pass views against torchvision (steps, random draws, output distribution)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import stats
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from bissl_dense.benchmarks.pretext import previous_augmentation
from bissl_dense.pretext.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    PretextAugmentation,
    PretextView,
    ViewParams,
    adjust_hue,
    eval_transform,
    gaussian_blur_matrix,
    pretext_view_transform,
)
from bissl_dense.seeding import seeded_rng

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


def test_views_are_asymmetric_as_in_spec() -> None:
    first, second = PretextAugmentation().view_transforms
    assert (first.blur_p, second.blur_p) == (1.0, 0.1)
    assert (first.solarize_p, second.solarize_p) == (0.0, 0.2)
    for view in (first, second):
        assert view.flip_p == 0.5 and view.jitter_p == 0.8 and view.grayscale_p == 0.2
        jitter = view.jitter
        assert jitter.brightness == (0.6, 1.4) and jitter.contrast == (0.6, 1.4)
        assert jitter.saturation == (0.8, 1.2) and jitter.hue == (-0.1, 0.1)
        assert view.blur_sigma == (0.1, 2.0) and view.blur_kernel_size == 13
        assert view.solarize_threshold == 128


def test_solarization_inverts_bright_pixels_of_the_second_view_only() -> None:
    # A uniform bright image: crop, flip, jitter-free grey levels; solarisation maps 230 -> 25.
    view = pretext_view_transform(image_size=16, blur_p=0.0, solarize_p=1.0)
    view.jitter_p = 0.0  # no colour jitter
    view.grayscale_p = 0.0
    out = view(Image.new("RGB", (40, 40), (230, 230, 230)))
    expected = (25 / 255 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    torch.testing.assert_close(out[:, 8, 8], expected.float(), atol=1e-5, rtol=0)
    dark = view(Image.new("RGB", (40, 40), (127, 127, 127)))  # below the threshold: unchanged
    expected = (127 / 255 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    torch.testing.assert_close(dark[:, 8, 8], expected.float(), atol=1e-5, rtol=0)


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
# the one-pass view (issue 13): each step against torchvision's functional ops, the random draws
# against their probabilities and ranges, the outputs against the torchvision pipeline


def _reference_view(view: PretextView, img: Image.Image, params: ViewParams) -> torch.Tensor:
    """The view computed step by step with torchvision's functional ops on float tensors, in the
    torchvision pipeline's order (flip right after the crop). The crop is PIL's ``resize(box=)``
    as in the view; :func:`test_crop_equals_torchvision_resized_crop` checks it separately."""
    box = (params.left, params.top, params.left + params.width, params.top + params.height)
    size = view.image_size
    x = F.to_dtype(F.pil_to_tensor(img.resize((size, size), Image.Resampling.BICUBIC, box=box)),
                   torch.float32, scale=True)  # fmt: skip
    if params.flip:
        x = F.horizontal_flip(x)
    if params.jitter_order is not None:
        assert params.jitter is not None
        b, c, s, h = params.jitter
        for op in params.jitter_order:
            x = [
                lambda t: F.adjust_brightness(t, b),
                lambda t: F.adjust_contrast(t, c),
                lambda t: F.adjust_saturation(t, s),
                lambda t: F.adjust_hue(t, h),
            ][op](x)
    if params.grayscale:
        x = F.rgb_to_grayscale(x, num_output_channels=3)
    if params.blur_sigma is not None:
        x = F.gaussian_blur(x, [13, 13], [params.blur_sigma, params.blur_sigma])
    if params.solarize:
        x = F.solarize(x, threshold=127.5 / 255)
    return F.normalize(x, mean=list(IMAGENET_MEAN), std=list(IMAGENET_STD))


def test_view_equals_torchvision_functional_ops_step_by_step() -> None:
    view = pretext_view_transform(image_size=24, blur_p=0.5, solarize_p=0.5)
    img = _image(40, 32, seed=5)
    seen: set[tuple[bool, ...]] = set()
    torch.manual_seed(0)
    for _ in range(60):
        params = view.sample(img)
        seen.add((params.flip, params.jitter is not None, params.grayscale,
                  params.blur_sigma is not None, params.solarize))  # fmt: skip
        torch.testing.assert_close(
            view.apply(img, params), _reference_view(view, img, params), atol=2e-5, rtol=0
        )
    # every step was both taken and skipped at least once
    assert all({key[i] for key in seen} == {True, False} for i in range(5)), seen


def test_crop_equals_torchvision_resized_crop() -> None:
    """PIL's ``resize(box=)`` is torchvision's crop-then-resize, except that the filter reads
    the real pixels just outside the box instead of replicating its edge: identical inside a
    3-pixel margin (bicubic support), close on the border."""
    view = pretext_view_transform(image_size=32, blur_p=0.0)
    view.jitter_p = view.grayscale_p = view.flip_p = 0.0
    img = _image(seed=6)
    torch.manual_seed(1)
    for _ in range(10):
        params = view.sample(img)
        ours = view.apply(img, params)
        crop = F.resized_crop(img, params.top, params.left, params.height, params.width,
                              [32, 32], interpolation=v2.InterpolationMode.BICUBIC)  # fmt: skip
        theirs = F.normalize(F.to_dtype(F.pil_to_tensor(crop), torch.float32, scale=True),
                             mean=list(IMAGENET_MEAN), std=list(IMAGENET_STD))  # fmt: skip
        inner = (slice(None), slice(3, -3), slice(3, -3))
        torch.testing.assert_close(ours[inner], theirs[inner], atol=1e-5, rtol=0)
        assert (ours - theirs).abs().mean() < 0.05


def test_adjust_hue_equals_torchvision_on_fixed_inputs() -> None:
    rng = np.random.default_rng(7)
    x = rng.random((3, 20, 30), dtype=np.float32)
    x[:, :4, :4] = 0.4  # grey: hue undefined, unchanged
    x[0, 4:6] = x[1, 4:6]  # ties between the largest channels
    x[2, 6:8] = x[1, 6:8]
    x[:, 8:10] = 0.0  # black
    x[:, 10, :3] = np.array([1.0, 0.0, 0.0])[:, None]  # pure primaries
    x[:, 11, :3] = np.array([0.0, 1.0, 0.0])[:, None]
    for factor in (-0.5, -0.1, -0.013, 0.0, 0.05, 0.1, 0.37, 0.5):
        expected = F.adjust_hue(torch.from_numpy(x), factor).numpy()
        np.testing.assert_allclose(adjust_hue(x, factor), expected, atol=2e-6, rtol=0)


@pytest.mark.parametrize("size", [5, 7, 16, 48])
def test_blur_matrix_equals_torchvision_gaussian_blur(size: int) -> None:
    x = torch.rand(3, size, size, generator=torch.Generator().manual_seed(size))
    for sigma in (0.1, 0.7, 2.0):
        matrix = gaussian_blur_matrix(size, sigma)
        assert torch.allclose(matrix.sum(dim=1), torch.ones(size))  # a weighted average
        ours = matrix @ x @ matrix.T
        if size > 6:  # torch's reflect padding needs more pixels than the kernel radius (6)
            theirs = F.gaussian_blur(x, [13, 13], [sigma, sigma])
            torch.testing.assert_close(ours, theirs, atol=1e-6, rtol=0)
        else:  # repeated reflection, as numpy's pad does
            padded = np.pad(x.numpy(), ((0, 0), (6, 6), (6, 6)), mode="reflect")
            kernel = np.exp(-0.5 * (np.arange(-6, 7) / sigma) ** 2)
            kernel /= kernel.sum()
            rows = sum(k * padded[:, i : i + size, :] for i, k in enumerate(kernel))
            both = sum(k * rows[:, :, i : i + size] for i, k in enumerate(kernel))
            np.testing.assert_allclose(ours.numpy(), both, atol=1e-6)


def test_random_choices_have_the_configured_probabilities_and_ranges() -> None:
    """Blur: always in view 1, p 0.1 in view 2, sigma ~ U(0.1, 2.0); solarise 0 / 0.2; flip
    0.5, jitter 0.8 (factors in their ranges), grayscale 0.2 (binomial and KS tests)."""
    aug = PretextAugmentation(image_size=24)
    img = _image(16, 16)
    n = 1500
    torch.manual_seed(0)
    draws = [[view.sample(img) for _ in range(n)] for view in aug.view_transforms]

    def assert_rate(values: list[bool], p: float) -> None:
        if p in (0.0, 1.0):
            assert all(v == bool(p) for v in values)
        else:
            assert stats.binomtest(sum(values), len(values), p).pvalue > 0.001, (sum(values), p)

    for params, blur_p, solarize_p in zip(draws, (1.0, 0.1), (0.0, 0.2), strict=True):
        assert_rate([d.blur_sigma is not None for d in params], blur_p)
        assert_rate([d.solarize for d in params], solarize_p)
        assert_rate([d.flip for d in params], 0.5)
        assert_rate([d.jitter is not None for d in params], 0.8)
        assert_rate([d.grayscale for d in params], 0.2)
        sigmas = [d.blur_sigma for d in params if d.blur_sigma is not None]
        assert min(sigmas) >= 0.1 and max(sigmas) <= 2.0
        assert stats.kstest(sigmas, stats.uniform(loc=0.1, scale=1.9).cdf).pvalue > 0.001
        jitters = np.array([d.jitter for d in params if d.jitter is not None])
        for column, (low, high) in enumerate([(0.6, 1.4), (0.6, 1.4), (0.8, 1.2), (-0.1, 0.1)]):
            uniform = stats.uniform(loc=low, scale=high - low).cdf
            assert stats.kstest(jitters[:, column], uniform).pvalue > 0.001
        orders = {d.jitter_order for d in params if d.jitter_order is not None}
        assert len(orders) == 24  # all permutations of the four adjustments occur


def test_views_match_the_torchvision_pipeline() -> None:
    """The same seed draws the same choices as the torchvision pipeline (same samplers, same
    order): outputs differ by rounding only. Across independent seeds, per-channel means and
    standard deviations of the outputs have the same distributions (two-sample KS)."""
    aug = PretextAugmentation(image_size=32)
    old_views = previous_augmentation(32).view_transforms
    img = _image(80, 64, seed=4)
    paired: list[float] = []
    summaries: dict[str, list[list[float]]] = {"new": [[], []], "old": [[], []]}
    for seed in range(100):
        for view, (new_t, old_t) in enumerate(zip(aug.view_transforms, old_views, strict=True)):
            torch.manual_seed(seed)
            new = new_t(img)
            torch.manual_seed(seed)
            old = old_t(img)
            paired.append((new - old).abs().mean().item())
            torch.manual_seed(10_000 + seed)  # an independent draw of the old pipeline
            independent = old_t(img)
            for name, x in (("new", new), ("old", independent)):
                summaries[name][view].append(
                    torch.cat([x.mean(dim=(1, 2)), x.std(dim=(1, 2))]).tolist()
                )
    # Rounding to 8 bits after each PIL step and at the crop's border: ~1/255 on average.
    assert np.median(paired) < 0.03 and np.max(paired) < 0.1, (np.median(paired), max(paired))
    for view in range(2):
        new, old = np.array(summaries["new"][view]), np.array(summaries["old"][view])
        for column in range(6):  # mean and std of each channel
            p = stats.ks_2samp(new[:, column], old[:, column]).pvalue
            assert p > 0.001, (view, column, p)


def test_same_seed_same_views_and_inputs_of_other_modes() -> None:
    aug = PretextAugmentation(image_size=20)
    img = _image(30, 30, seed=8).convert("L")  # converted to RGB first
    with seeded_rng(3):
        first = aug(img)
    with seeded_rng(3):
        again = aug(img)
    for a, b in zip(first, again, strict=True):
        assert a.shape == (3, 20, 20) and a.dtype == torch.float32 and a.is_contiguous()
        assert torch.equal(a, b)
