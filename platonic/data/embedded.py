"""The embedded default dataset: rendered scenes with captions written from the same attributes.

Every scene is drawn from a handful of attributes (how many objects, their shape, colour and
size, where they are, the background colour). The level-0 caption says exactly those
attributes, so it is fully redundant with the image. Uniqueness level `u` (0..100) replaces
each attribute *in the caption* by another value with probability u/100; the draw behind that
choice is made once per (sample, attribute), so the levels are nested (an attribute replaced at
level 30 is replaced, by the same value, at every level above) and level 100 replaces every
attribute, so its caption shares nothing with the image.

Everything is deterministic from `seed`; sample `i` does not depend on `num_samples`, so a
smaller set is a prefix of a larger one.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, replace

from PIL import Image, ImageDraw

from platonic.data.levels import ALL_LEVELS, check_levels
from platonic.errors import PlatonicError

NAME = "embedded"
DEFAULT_NUM_SAMPLES = 256  # 2 idle cores run the default study in under 5 minutes (issue 18)
IMAGE_SIZE = 224
LEVELS: tuple[int, ...] = ALL_LEVELS

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 160, 50),
    "blue": (30, 70, 220),
    "yellow": (245, 215, 30),
    "orange": (245, 140, 20),
    "purple": (140, 50, 180),
    "black": (15, 15, 15),
    "white": (250, 250, 250),
}
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "white": (245, 245, 245),
    "black": (20, 20, 20),
    "grey": (128, 128, 128),
    "pink": (250, 190, 200),
    "light blue": (170, 210, 245),
    "dark green": (20, 80, 40),
}
SHAPES = ("circle", "square", "triangle", "star", "cross", "diamond")
SIZES: dict[str, float] = {"small": 0.09, "medium": 0.15, "large": 0.22}
COUNTS: dict[str, int] = {"one": 1, "two": 2, "three": 3}
POSITIONS: dict[str, tuple[float, float]] = {
    "center": (0.5, 0.5),
    "top": (0.5, 0.22),
    "bottom": (0.5, 0.78),
    "left": (0.22, 0.5),
    "right": (0.78, 0.5),
    "top left": (0.24, 0.24),
    "top right": (0.76, 0.24),
    "bottom left": (0.24, 0.76),
    "bottom right": (0.76, 0.76),
}
ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "count": tuple(COUNTS),
    "size": tuple(SIZES),
    "colour": tuple(COLOURS),
    "shape": SHAPES,
    "position": tuple(POSITIONS),
    "background": tuple(BACKGROUNDS),
}


@dataclass(frozen=True)
class Scene:
    """What one image shows; `jitter` nudges the objects so no two images are pixel-identical."""

    count: str
    size: str
    colour: str
    shape: str
    position: str
    background: str
    jitter: tuple[float, float] = (0.0, 0.0)


def _sample_rng(seed: int, index: int, purpose: str) -> random.Random:
    return random.Random(f"platonic-embedded:{seed}:{index}:{purpose}")


def _draw_scene(seed: int, index: int) -> Scene:
    rng = _sample_rng(seed, index, "scene")
    values = {name: rng.choice(options) for name, options in ATTRIBUTES.items()}
    while values["colour"] == values["background"]:  # a white shape on white would be invisible
        values["colour"] = rng.choice(ATTRIBUTES["colour"])
    jitter = (rng.uniform(-0.04, 0.04), rng.uniform(-0.04, 0.04))
    return Scene(**values, jitter=jitter)


def scenes(num_samples: int = DEFAULT_NUM_SAMPLES, seed: int = 0) -> list[Scene]:
    """The attributes of every image, in dataset order."""
    if num_samples < 1:
        raise PlatonicError(f"embedded dataset: num_samples must be >= 1, got {num_samples}")
    return [_draw_scene(seed, i) for i in range(num_samples)]


_POSITION_PHRASES = {
    "center": "in the center",
    "top": "at the top",
    "bottom": "at the bottom",
    "left": "on the left",
    "right": "on the right",
}


def describe(scene: Scene) -> str:
    """The caption that states exactly the scene's attributes."""
    plural = scene.count != "one"
    noun = scene.shape + ("es" if plural and scene.shape.endswith("s") else "s" if plural else "")
    quantity = scene.count.capitalize() if plural else "A"
    where = _POSITION_PHRASES.get(scene.position, f"in the {scene.position} corner")
    return f"{quantity} {scene.size} {scene.colour} {noun} {where} on a {scene.background} background."


def captions(num_samples: int = DEFAULT_NUM_SAMPLES, seed: int = 0) -> list[str]:
    """The faithful (level-0) captions, in dataset order."""
    return [describe(scene) for scene in scenes(num_samples, seed)]


def check_level(level: int) -> int:
    check_levels([level], "embedded dataset")
    return level


def perturb(scene: Scene, index: int, level: int, seed: int = 0) -> Scene:
    """The scene a level-`level` caption describes: each attribute replaced w.p. level/100.

    The threshold draw and the replacement value are fixed per (sample, attribute), which makes
    the levels nested; at level 100 every attribute differs from the image.
    """
    check_level(level)
    rng = _sample_rng(seed, index, "perturb")
    changes = {}
    for name, options in ATTRIBUTES.items():
        threshold = rng.random()
        current = getattr(scene, name)
        replacement = rng.choice([value for value in options if value != current])
        if threshold < level / 100:
            changes[name] = replacement
    return replace(scene, **changes)


def captions_at_level(level: int, num_samples: int = DEFAULT_NUM_SAMPLES, seed: int = 0) -> list[str]:
    """Captions at uniqueness `level` (0 = faithful, 100 = shares nothing with the image)."""
    check_level(level)
    return [describe(perturb(scene, i, level, seed)) for i, scene in enumerate(scenes(num_samples, seed))]


def _shape_points(shape: str, cx: float, cy: float, r: float) -> list[tuple[float, float]]:
    if shape == "square":
        return [(cx - r, cy - r), (cx + r, cy - r), (cx + r, cy + r), (cx - r, cy + r)]
    if shape == "triangle":
        return [(cx, cy - r), (cx + r, cy + r * 0.8), (cx - r, cy + r * 0.8)]
    if shape == "diamond":
        return [(cx, cy - r), (cx + r * 0.75, cy), (cx, cy + r), (cx - r * 0.75, cy)]
    if shape == "cross":
        t = r / 3
        return [(cx - t, cy - r), (cx + t, cy - r), (cx + t, cy - t), (cx + r, cy - t),
                (cx + r, cy + t), (cx + t, cy + t), (cx + t, cy + r), (cx - t, cy + r),
                (cx - t, cy + t), (cx - r, cy + t), (cx - r, cy - t), (cx - t, cy - t)]
    if shape == "star":
        return [(cx + (r if k % 2 == 0 else r * 0.45) * math.sin(k * math.pi / 5),
                 cy - (r if k % 2 == 0 else r * 0.45) * math.cos(k * math.pi / 5)) for k in range(10)]
    raise PlatonicError(f"embedded dataset: unknown shape {shape!r}")


def _object_centres(scene: Scene, radius: float, image_size: int) -> list[tuple[float, float]]:
    fx, fy = POSITIONS[scene.position]
    cx = (fx + scene.jitter[0]) * image_size
    cy = (fy + scene.jitter[1]) * image_size
    n = COUNTS[scene.count]
    step = 2.2 * radius
    centres = [(cx + (k - (n - 1) / 2) * step, cy) for k in range(n)]
    low, high = radius + 2, image_size - radius - 2
    shift = min(0.0, high - centres[-1][0]) + max(0.0, low - centres[0][0])
    return [(min(max(x + shift, low), high), min(max(y, low), high)) for x, y in centres]


def render(scene: Scene, image_size: int = IMAGE_SIZE) -> Image.Image:
    """Draw the scene as an RGB image."""
    image = Image.new("RGB", (image_size, image_size), BACKGROUNDS[scene.background])
    draw = ImageDraw.Draw(image)
    n = COUNTS[scene.count]
    radius = SIZES[scene.size] * image_size * (1.0 if n == 1 else 0.8 if n == 2 else 0.6)
    fill = COLOURS[scene.colour]
    for cx, cy in _object_centres(scene, radius, image_size):
        if scene.shape == "circle":
            draw.ellipse([cx - radius, cy - radius, cx + radius, cy + radius], fill=fill)
        else:
            draw.polygon(_shape_points(scene.shape, cx, cy, radius), fill=fill)
    return image


def images(num_samples: int = DEFAULT_NUM_SAMPLES, seed: int = 0,
           image_size: int = IMAGE_SIZE) -> list[Image.Image]:
    """The rendered images, in dataset order."""
    return [render(scene, image_size) for scene in scenes(num_samples, seed)]
