"""Image noise: the share of pixels replaced, seeded per image, nothing at 0%."""

from __future__ import annotations

import numpy as np
from PIL import Image

from platonic.data.noise import add_noise


def _image(size: int = 64) -> Image.Image:
    grey = np.full((size, size, 3), 128, dtype=np.uint8)
    return Image.fromarray(grey)


def test_zero_percent_is_the_image_itself():
    image = _image()
    assert add_noise(image, 0.0, seed=0, index=0) is image


def test_about_the_percentage_of_pixels_changes_and_the_rest_is_kept():
    image = _image(200)
    noisy = np.asarray(add_noise(image, 25.0, seed=0, index=3))
    changed = (noisy != 128).any(axis=2).mean()
    # 40,000 pixels, each replaced with p = 0.25 (a replaced one keeps grey with p = 1/2^24)
    assert abs(changed - 0.25) < 0.01
    assert noisy.shape == (200, 200, 3) and noisy.dtype == np.uint8


def test_noise_is_seeded_by_seed_and_image_index():
    image = _image()
    same = [np.asarray(add_noise(image, 10.0, seed=1, index=5)) for _ in range(2)]
    assert np.array_equal(*same)
    assert not np.array_equal(same[0], np.asarray(add_noise(image, 10.0, seed=1, index=6)))
    assert not np.array_equal(same[0], np.asarray(add_noise(image, 10.0, seed=2, index=5)))
