"""The embedded MM-IMDb fixture: a small, seeded movie set in exactly the real dataset's layout.

    ROOT/split.json                {"train": [...], "dev": [...], "test": [...]}, 7-digit id strings
    ROOT/dataset/<id>.json         {"plot": [str, ...], "genres": ["Drama", "Sci-Fi", ...], ...}
    ROOT/dataset/<id>.jpeg         a small poster (real JPEG, mixed aspect ratios)
    ROOT/<split>/sampled_ids.npy   optional: an array of id strings (the authors' sampled ids)

Both modalities carry the genres, each to its own, genre-dependent degree:
- a plot mentions a keyword of each of its genres with a probability `text_strength[genre]`,
  and a keyword of some other genre (a distractor) now and then;
- a poster draws the shape of each of its genres, in the genre's colour, with a probability
  `image_strength[genre]` (a different order of strengths from the text), on a noisy background.
So probes of different language models reach different F1 per genre, and how much of the plot's
information the poster shares varies by genre. Some movies have a one-word first plot entry
(the text is then the next entry), a few have no usable plot at all (skipped by the readers),
and some carry a genre outside the 23 ("News"), which the readers drop and count.
Everything is deterministic from `seed`.
"""

from __future__ import annotations

import colorsys
import json
import random
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from platonic.mmimdb.genres import GENRES, check_genres

SPLIT_SIZES: dict[str, int] = {"train": 360, "dev": 100, "test": 160}
IMAGE_SIZE = 64
UNKNOWN_GENRE = "News"
# Bump when the generator changes, so a cached fixture from an older version is not reused.
FIXTURE_VERSION = 4

KEYWORDS: dict[str, tuple[str, ...]] = {
    "drama": ("grief", "family secret", "tears", "estranged brother"),
    "comedy": ("hilarious", "clumsy", "prank", "wacky neighbour"),
    "romance": ("love", "kiss", "wedding", "falls for"),
    "thriller": ("stalker", "conspiracy", "race against time", "paranoid"),
    "crime": ("detective", "heist", "gangster", "murder case"),
    "action": ("explosion", "car chase", "gunfight", "commando"),
    "adventure": ("treasure", "jungle", "expedition", "quest"),
    "horror": ("ghost", "haunted house", "demon", "blood"),
    "documentary": ("interviews", "archival footage", "real events", "filmmaker follows"),
    "mystery": ("clue", "disappearance", "riddle", "unsolved"),
    "sci-fi": ("spaceship", "alien", "robot", "distant planet"),
    "music": ("band", "concert", "guitar", "record deal"),
    "fantasy": ("wizard", "dragon", "enchanted", "magic sword"),
    "family": ("kids", "puppy", "holiday trip", "grandma"),
    "biography": ("true story of", "life of", "famous inventor", "memoir"),
    "war": ("soldiers", "battlefield", "trenches", "platoon"),
    "history": ("ancient empire", "king", "revolution", "century"),
    "animation": ("cartoon", "animated", "talking animals", "pixel"),
    "musical": ("sings", "dance number", "broadway", "chorus"),
    "western": ("cowboy", "sheriff", "saloon", "frontier"),
    "sport": ("championship", "coach", "boxing match", "underdog team"),
    "short": ("brief", "vignette", "one scene", "minutes long"),
    "film-noir": ("femme fatale", "smoky bar", "private eye", "double cross"),
}
FILLER_SUBJECTS = ("A young woman", "An old man", "Two friends", "A stranger", "A teacher",
                   "A small town", "A retired pilot", "The new mayor", "A nurse", "Three siblings")
FILLER_VERBS = ("returns home", "moves to the city", "meets someone new", "loses a job",
                "finds a letter", "takes a long trip", "opens a shop", "changes everything")
FILLER_TAILS = ("after many years.", "one cold winter.", "in the summer.", "against all odds.",
                "without telling anyone.", "before it is too late.", "at the end of the road.")
# Genre frequencies, roughly as in MM-IMDb (drama and comedy most common, film-noir rarest).
GENRE_WEIGHTS = np.linspace(6.0, 0.6, len(GENRES))
SHAPES = ("circle", "square", "triangle", "diamond", "cross", "bar")


def _strengths(seed: int, low: float, high: float, salt: str) -> dict[str, float]:
    """A genre -> probability map with evenly spread values in a seeded random order."""
    rng = random.Random(f"{seed}-{salt}")
    values = list(np.linspace(high, low, len(GENRES)))
    rng.shuffle(values)
    return {g: float(v) for g, v in zip(GENRES, values, strict=True)}


def default_text_strength(seed: int = 0) -> dict[str, float]:
    return _strengths(seed, 0.25, 0.95, "text")


def default_image_strength(seed: int = 0) -> dict[str, float]:
    return _strengths(seed, 0.15, 0.9, "image")


def _genre_style(index: int) -> tuple[tuple[int, int, int], str]:
    """A distinct colour (hue wheel, two lightness rings) and a shape for genre `index`."""
    hue = (index * 7 % len(GENRES)) / len(GENRES)
    light = 0.35 if index % 2 else 0.65
    r, g, b = colorsys.hls_to_rgb(hue, light, 0.9)
    return (int(r * 255), int(g * 255), int(b * 255)), SHAPES[index % len(SHAPES)]


def _draw_genres(rng: random.Random, weights: np.ndarray) -> list[str]:
    count = rng.choices((1, 2, 3), weights=(0.45, 0.4, 0.15))[0]
    chosen: list[str] = []
    while len(chosen) < count:
        genre = rng.choices(GENRES, weights=list(weights))[0]
        if genre not in chosen:
            chosen.append(genre)
    return chosen


def _plot_text(rng: random.Random, genres: list[str], strength: Mapping[str, float],
               distractor: float) -> str:
    words = [f"{rng.choice(FILLER_SUBJECTS)} {rng.choice(FILLER_VERBS)} {rng.choice(FILLER_TAILS)}"]
    for genre in genres:
        if rng.random() < strength.get(genre, 0.0):
            words.append(f"There is {rng.choice(KEYWORDS[genre])} and {rng.choice(KEYWORDS[genre])}.")
    if rng.random() < distractor:
        other = rng.choice([g for g in GENRES if g not in genres and strength.get(g, 0.0) > 0]
                           or [None])
        if other is not None:
            words.append(f"Someone mentions {rng.choice(KEYWORDS[other])}.")
    rng.shuffle(words)
    return " ".join(words)


def _shape(draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, r: float,
           colour: tuple[int, int, int]) -> None:
    if shape == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=colour)
    elif shape == "square":
        draw.rectangle((cx - r, cy - r, cx + r, cy + r), fill=colour)
    elif shape == "triangle":
        draw.polygon([(cx, cy - r), (cx + r, cy + r), (cx - r, cy + r)], fill=colour)
    elif shape == "diamond":
        draw.polygon([(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)], fill=colour)
    elif shape == "cross":
        w = r / 3
        draw.rectangle((cx - r, cy - w, cx + r, cy + w), fill=colour)
        draw.rectangle((cx - w, cy - r, cx + w, cy + r), fill=colour)
    else:
        draw.rectangle((cx - r, cy - r / 4, cx + r, cy + r / 4), fill=colour)


def _poster(rng: random.Random, genres: list[str], strength: Mapping[str, float],
            image_size: int) -> Image.Image:
    width, height = rng.choice(((image_size * 2 // 3, image_size), (image_size * 3 // 4, image_size),
                                (image_size, image_size * 2 // 3)))
    background = tuple(rng.randrange(40, 200) for _ in range(3))
    noise = np.random.default_rng(rng.randrange(2**32)).normal(0, 18, (height, width, 3))
    pixels = np.clip(np.asarray(background, dtype=np.float64) + noise, 0, 255).astype(np.uint8)
    image = Image.fromarray(pixels, "RGB")
    draw = ImageDraw.Draw(image)
    shown = [g for g in genres if rng.random() < strength.get(g, 0.0)]
    if rng.random() < 0.3:
        shown.append(rng.choice(GENRES))  # a distractor
    for genre in shown:
        colour, shape = _genre_style(GENRES.index(genre))
        r = min(width, height) * rng.uniform(0.18, 0.3)
        _shape(draw, shape, rng.uniform(r, width - r), rng.uniform(r, height - r), r, colour)
    return image


def _ids(seed: int, total: int) -> list[str]:
    rng = random.Random(f"{seed}-ids")
    return [f"{i:07d}" for i in sorted(rng.sample(range(10_000, 9_999_999), total))]


def _full_strength(strength: Mapping[str, float] | None, default: dict[str, float]) -> dict[str, float]:
    """A user's partial genre -> probability map made total (genres it leaves out get 0)."""
    if strength is None:
        return default
    names = check_genres(strength)
    given = dict(zip(names, (float(v) for v in strength.values()), strict=True))
    return {g: given.get(g, 0.0) for g in GENRES}


def build_fixture(root: str | Path, seed: int = 0, split_sizes: Mapping[str, int] | None = None,
                  image_size: int = IMAGE_SIZE, text_strength: Mapping[str, float] | None = None,
                  image_strength: Mapping[str, float] | None = None,
                  genre_weights: Mapping[str, float] | None = None, distractor: float = 0.15,
                  sampled_ids: bool = False, single_word_rate: float = 0.08,
                  no_plot_rate: float = 0.01, unknown_genre_rate: float = 0.03) -> Path:
    """Write the fixture under `root` (which must be empty or absent) and return `root`.

    `text_strength` / `image_strength` map genre -> probability that a movie of that genre shows
    it in its plot / poster (genres left out get 0); by default each is spread over 0.25-0.95 /
    0.15-0.9 in its own seeded order. `genre_weights` overrides the relative frequency of some
    genres (by default drama is the most and film-noir the least frequent, as in MM-IMDb). `sampled_ids=True` also writes `<split>/sampled_ids.npy`
    (a seeded shuffle of each split's ids that have a usable plot). Every genre is present in
    train (the first 23 train movies take one genre each in turn).
    """
    root = Path(root)
    sizes = dict(split_sizes or SPLIT_SIZES)
    text = _full_strength(text_strength, default_text_strength(seed))
    image = _full_strength(image_strength, default_image_strength(seed))
    weights = GENRE_WEIGHTS.copy()
    for name, weight in zip(check_genres(genre_weights or {}), (genre_weights or {}).values(),
                            strict=True):
        weights[GENRES.index(name)] = float(weight)
    (root / "dataset").mkdir(parents=True, exist_ok=True)
    ids = _ids(seed, sum(sizes.values()))
    rng = random.Random(f"{seed}-order")
    rng.shuffle(ids)
    split: dict[str, list[str]] = {}
    start = 0
    for name, size in sizes.items():
        split[name] = ids[start:start + size]
        start += size
    usable: dict[str, list[str]] = {name: [] for name in split}
    for name, members in split.items():
        for position, movie_id in enumerate(members):
            rng = random.Random(f"{seed}-movie-{movie_id}")
            genres = _draw_genres(rng, weights)
            if name == "train" and position < len(GENRES) and GENRES[position] not in genres:
                genres[0] = GENRES[position]
            plot = [_plot_text(rng, genres, text, distractor)]
            if rng.random() < single_word_rate:
                plot.insert(0, rng.choice(("Unknown.", "TBA", "Plot?")))
            has_plot = rng.random() >= no_plot_rate or (name == "train" and position < len(GENRES))
            if not has_plot:
                plot = [rng.choice(("TBA", "Unknown."))]
            labels = [g.title() if g != "sci-fi" else "Sci-Fi" for g in genres]
            if rng.random() < unknown_genre_rate:
                labels.append(UNKNOWN_GENRE)
            record = {"title": f"Movie {movie_id}", "plot": plot, "genres": labels}
            (root / "dataset" / f"{movie_id}.json").write_text(json.dumps(record), encoding="utf-8")
            _poster(rng, genres, image, image_size).save(root / "dataset" / f"{movie_id}.jpeg",
                                                          format="JPEG", quality=80)
            if has_plot:
                usable[name].append(movie_id)
    (root / "split.json").write_text(json.dumps(split), encoding="utf-8")
    if sampled_ids:
        for name, members in usable.items():
            order = list(members)
            random.Random(f"{seed}-sampled-{name}").shuffle(order)
            (root / name).mkdir(exist_ok=True)
            np.save(root / name / "sampled_ids.npy", np.array(order, dtype=str))
    return root


def fixture_fingerprint(seed: int = 0) -> str:
    """Folder name of the default fixture in the cache: the generator version and the seed."""
    return f"v{FIXTURE_VERSION}-seed{seed}"

