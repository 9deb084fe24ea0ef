"""``resize_and_crop`` resamples only the crop window; it must match resizing everything first."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from imgclf.preprocessing import PreprocessConfig, resize_and_crop, resized_size


def textured(width: int, height: int, seed: int = 0) -> Image.Image:
    """A photo-like image: smooth gradients plus noise, so misplaced pixels show."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x * 255 / width, y * 255 / height, (x + y) * 127 / (width + height)], -1)
    noisy = base + rng.normal(0, 40, base.shape)
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8), "RGB")


def resize_then_crop(image: Image.Image, config: PreprocessConfig) -> np.ndarray:
    """The reference: resize the whole image, then cut the centre square."""
    new_w, new_h = resized_size(*image.size, config)
    resample = getattr(Image.Resampling, config.interpolation.upper())
    resized = image.resize((new_w, new_h), resample)
    left, top = (new_w - config.input_size) // 2, (new_h - config.input_size) // 2
    return np.asarray(resized.crop((left, top, left + config.input_size, top + config.input_size)))


@pytest.mark.parametrize("size", [(400, 534), (534, 400), (400, 711), (333, 333), (1200, 901)])
@pytest.mark.parametrize(
    "config",
    [
        PreprocessConfig(input_size=224, crop_pct=1.0),
        PreprocessConfig(input_size=224, crop_pct=0.875),
        PreprocessConfig(input_size=240, crop_pct=1.0, crop_mode="squash"),
        PreprocessConfig(input_size=256, crop_pct=0.9, interpolation="bilinear"),
    ],
    ids=["whole-short-side", "crop-0.875", "squash", "bilinear"],
)
def test_window_resample_matches_resize_then_crop(
    size: tuple[int, int], config: PreprocessConfig
) -> None:
    image = textured(*size)
    got = np.asarray(resize_and_crop(image, config)).astype(int)
    want = resize_then_crop(image, config).astype(int)
    assert got.shape == want.shape == (config.input_size, config.input_size, 3)
    difference = np.abs(got - want)
    assert difference.mean() < 0.5, "the window is misplaced (one pixel off costs ~18 levels)"
    assert difference.max() <= 8


def test_an_image_already_at_the_resize_size_is_only_cropped() -> None:
    config = PreprocessConfig(input_size=224, crop_pct=0.875)  # short side resized to 256
    image = textured(256, 300)
    out = np.asarray(resize_and_crop(image, config))
    np.testing.assert_array_equal(out, np.asarray(image)[38:262, 16:240])
