"""Where the original captions come from: the Hub data set, a local file, or the embedded set.

Every source yields `(index, caption)` pairs, index being the row in the source (so `--start`
keeps indices stable), and, when asked, the image of a row for vision-capable models.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from platonic.captions.quiet import hub_warnings_silenced
from platonic.data import embedded
from platonic.data.datasets import DEFAULT_SUBSETS, PRH
from platonic.errors import PlatonicError

DEFAULT_DATASET = PRH
DEFAULT_SUBSET = DEFAULT_SUBSETS[PRH]


@dataclass
class CaptionSource:
    """Captions by index, and optionally a way to get each row's image."""

    name: str
    captions: dict[int, str]
    image_of: Callable[[int], Image.Image] | None = None


def _window(num_rows: int, start: int, num_samples: int | None, name: str) -> range:
    if start < 0 or (num_samples is not None and num_samples < 0):
        raise PlatonicError("--start and --num_samples must not be negative")
    if start >= num_rows:
        raise PlatonicError(f"{name}: --start {start} is past its {num_rows} rows")
    stop = num_rows if num_samples is None else min(num_rows, start + num_samples)
    return range(start, stop)


def _checked(name: str, index: int, text: object, caption_idx: int = 0) -> str:
    if isinstance(text, list):
        if not -len(text) <= caption_idx < len(text):
            raise PlatonicError(f"{name}: row {index} has no caption number {caption_idx}")
        text = text[caption_idx]
    if not isinstance(text, str) or not text.strip():
        raise PlatonicError(f"{name}: row {index} has no caption text")
    return text


def from_hub(dataset: str = DEFAULT_DATASET, subset: str | None = DEFAULT_SUBSET,
             caption_idx: int = 0, start: int = 0, num_samples: int | None = None,
             with_images: bool = False) -> CaptionSource:
    """`text[caption_idx]` of each row of a Hub data set (`minhuh/prh`, revision `wit_1024`)."""
    import datasets

    name = f"{dataset} ({subset})" if subset else dataset
    try:
        with hub_warnings_silenced():
            rows = datasets.load_dataset(dataset, revision=subset, split="train")
    except Exception as err:  # the Hub client raises many types; all mean "not available"
        first = (str(err).strip().splitlines() or [""])[0]
        raise PlatonicError(f"cannot load data set {name}: {type(err).__name__}: {first} "
                            "(no network? use --captions_file or --embedded)") from None
    if "text" not in rows.column_names:
        raise PlatonicError(f"data set {name} has no 'text' column")
    texts = rows["text"]
    window = _window(len(texts), start, num_samples, name)
    captions = {i: _checked(name, i, texts[i], caption_idx) for i in window}
    image_of = (lambda i: rows[i]["image"]) if with_images else None
    if with_images and "image" not in rows.column_names:
        raise PlatonicError(f"data set {name} has no 'image' column for --images")
    return CaptionSource(name, captions, image_of)


def _read_rows(path: Path) -> list[dict]:
    """Rows of a JSONL file (one object per line) or a CSV file with a header."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise PlatonicError(f"{path}: cannot read ({err})") from None
    if path.suffix.lower() == ".csv":
        reader = csv.DictReader(text.splitlines(keepends=True))
        if "text" not in (reader.fieldnames or []):
            raise PlatonicError(f"{path}: a CSV captions file needs a 'text' column")
        return list(reader)
    rows = []
    for line_no, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise PlatonicError(f"{path}: line {line_no} is not JSON ({err.msg})") from None
        if not isinstance(row, dict) or "text" not in row:
            raise PlatonicError(f"{path}: line {line_no} has no 'text' field")
        rows.append(row)
    return rows


def _image_paths(path: Path, rows: list[dict], window: range) -> dict[int, Path]:
    paths = {}
    for i in window:
        value = rows[i].get("image")
        if not value:
            raise PlatonicError(f"{path}: row {i} has no 'image' path for --images")
        image_path = path.parent / value
        if not image_path.is_file():
            raise PlatonicError(f"{path}: row {i}: image {image_path} not found")
        paths[i] = image_path
    return paths


def from_file(path: str | os.PathLike, caption_idx: int = 0, start: int = 0,
              num_samples: int | None = None, with_images: bool = False) -> CaptionSource:
    """Captions of a JSONL (`text` per line) or CSV (`text` column) file.

    `text` may be a list, as in `minhuh/prh`; then `text[caption_idx]` is used. With images,
    each row names its image in `image`, a path relative to the file's folder.
    """
    path = Path(path)
    rows = _read_rows(path)
    if not rows:
        raise PlatonicError(f"{path}: no captions in it")
    window = _window(len(rows), start, num_samples, str(path))
    captions = {i: _checked(str(path), i, rows[i]["text"], caption_idx) for i in window}
    image_of = None
    if with_images:
        paths = _image_paths(path, rows, window)

        def image_of(index: int) -> Image.Image:
            try:
                return Image.open(paths[index])
            except OSError as err:
                raise PlatonicError(f"{path}: row {index}: cannot read image {paths[index]} "
                                    f"({err})") from None

    return CaptionSource(str(path), captions, image_of)


def from_embedded(start: int = 0, num_samples: int | None = None,
                  with_images: bool = False) -> CaptionSource:
    """The level-0 captions (and rendered images) of the project's embedded default data set."""
    total = start + (embedded.DEFAULT_NUM_SAMPLES if num_samples is None else num_samples)
    texts = embedded.captions(num_samples=total)
    window = _window(len(texts), start, num_samples, "embedded data set")
    image_of = None
    if with_images:
        pictures = embedded.images(num_samples=total)
        image_of = pictures.__getitem__
    return CaptionSource("embedded data set", {i: texts[i] for i in window}, image_of)
