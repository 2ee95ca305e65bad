"""Image perturbation: pixels replaced by random colours (`--noise_percentage`)."""

from __future__ import annotations

from PIL import Image


def add_noise(image: Image.Image, percentage: float, seed: int, index: int) -> Image.Image:
    """Replace `percentage`% of the pixels by uniform random colours, seeded per sample."""
    if percentage <= 0:
        return image
    import numpy as np

    rng = np.random.default_rng([seed, index])
    pixels = np.asarray(image.convert("RGB")).copy()
    mask = rng.random(pixels.shape[:2]) < percentage / 100
    pixels[mask] = rng.integers(0, 256, size=(int(mask.sum()), 3), dtype=np.uint8)
    return Image.fromarray(pixels)
