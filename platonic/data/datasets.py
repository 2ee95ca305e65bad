"""Image-caption datasets by name, and the captions at each uniqueness level.

Datasets (one registry, `DATASETS`; a local folder is recognised by being a directory):
  `minhuh/prh`  the original's WIT pairs from the Hub; `--subset` is the revision (`wit_1024`).
  `embedded`    the offline default (platonic.data.embedded): rendered scenes, faithful captions and
                built-in uniqueness levels; `--subset seed<N>` picks the seed (default `seed0`).
  a folder      the Hugging Face `imagefolder` convention: images plus `metadata.jsonl`/`.csv`
                with a `file_name` column and a caption column (`text`, `caption` or `captions`,
                a string or a list indexed by `--caption_idx`).

A dataset may bring uniqueness levels of its own (`PairedData.level_texts`, the embedded set);
the other level sources are in `platonic.data.level_sources`, the level values in `platonic.data.levels`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from platonic.data import embedded
from platonic.errors import PlatonicError, first_line

PRH = "minhuh/prh"
DEFAULT_SUBSETS: dict[str, str] = {PRH: "wit_1024", embedded.NAME: "seed0"}
_CAPTION_COLUMNS = ("text", "caption", "captions")


class ImageSequence(Sequence[Image.Image]):
    """Images made one at a time as they are read (decoded, rendered, perturbed by `load(i)`),
    so that a pass over N images holds one, not N: `len`, indexing, slicing (another lazy
    sequence) and iteration. Each read makes the image again."""

    def __init__(self, load: Callable[[int], Image.Image], indices: range) -> None:
        self._load = load
        self._indices = indices

    def __len__(self) -> int:
        return len(self._indices)

    def __getitem__(self, index):  # type: ignore[override]
        if isinstance(index, slice):
            return ImageSequence(self._load, self._indices[index])
        return self._load(self._indices[index])

    def __iter__(self) -> Iterator[Image.Image]:
        return map(self._load, self._indices)


@dataclass
class PairedData:
    """Images and their captions, in dataset order; `level_texts` gives captions at a level.
    The images are an `ImageSequence`: decoded when read."""

    name: str
    subset: str | None
    images: Sequence[Image.Image]
    texts: list[str]
    level_texts: Callable[[int], list[str]] | None = None

    def __len__(self) -> int:
        return len(self.texts)


def _caption_of(value: Any, caption_idx: int, where: str) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list | tuple) and value:
        if not 0 <= caption_idx < len(value):
            raise PlatonicError(f"{where}: caption_idx {caption_idx} out of range (it has {len(value)} captions)")
        return str(value[caption_idx])
    raise PlatonicError(f"{where}: no caption (got {value!r})")


def load_prh(name: str, subset: str | None, num_samples: int | None, caption_idx: int) -> PairedData:
    """The original's data: `minhuh/prh` at revision `subset` (images and caption lists)."""
    import datasets

    revision = subset or DEFAULT_SUBSETS[PRH]
    try:
        table = datasets.load_dataset(name, revision=revision, split="train")
    except Exception as err:  # the Hub client raises many types when offline or refused
        raise PlatonicError(
            f"cannot fetch dataset {name!r} at revision {revision!r} ({first_line(err)}); "
            "without network, save it as an imagefolder (images + metadata.jsonl with a 'text' "
            "column) and pass that folder as --dataset") from err
    if num_samples is not None:
        table = table.select(range(min(num_samples, len(table))))
    texts = [_caption_of(row, caption_idx, f"{name}@{revision} sample {i}")
             for i, row in enumerate(table["text"])]
    return PairedData(name, revision, table_images(table), texts)


def table_images(table: Any) -> ImageSequence:
    """A `datasets` table's "image" column, each image decoded (as RGB) when read."""
    return ImageSequence(lambda i: table[i]["image"].convert("RGB"), range(len(table)))


def load_embedded(name: str, subset: str | None, num_samples: int | None, caption_idx: int) -> PairedData:
    """The offline default: rendered scenes with faithful captions and built-in levels."""
    subset = subset or DEFAULT_SUBSETS[embedded.NAME]
    match = re.fullmatch(r"seed(\d+)", subset)
    if match is None:
        raise PlatonicError(f"dataset {name!r}: subset must be seed<N> (e.g. seed0), got {subset!r}")
    seed = int(match.group(1))
    count = embedded.DEFAULT_NUM_SAMPLES if num_samples is None else num_samples
    scenes = embedded.scenes(count, seed)
    texts = [embedded.describe(scene) for scene in scenes]
    images = ImageSequence(lambda i: embedded.render(scenes[i]), range(len(scenes)))

    def level_texts(level: int) -> list[str]:
        return [embedded.describe(embedded.perturb(s, i, level, seed)) for i, s in enumerate(scenes)]

    return PairedData(name, subset, images, texts, level_texts)


def load_imagefolder(path: str, subset: str | None, num_samples: int | None, caption_idx: int) -> PairedData:
    """A local folder of images with `metadata.jsonl` or `metadata.csv` holding captions."""
    import datasets

    try:
        table = datasets.load_dataset("imagefolder", data_dir=path, split="train")
    except Exception as err:  # datasets raises several types for a malformed folder
        raise PlatonicError(f"{path}: not a readable imagefolder dataset ({first_line(err)})") from err
    column = next((c for c in _CAPTION_COLUMNS if c in table.column_names), None)
    if column is None or "image" not in table.column_names:
        raise PlatonicError(f"{path}: needs images and a metadata file with a caption column "
                            f"({', '.join(_CAPTION_COLUMNS)}); found columns {table.column_names}")
    if num_samples is not None:
        table = table.select(range(min(num_samples, len(table))))
    texts = [_caption_of(v, caption_idx, f"{path} sample {i}") for i, v in enumerate(table[column])]
    return PairedData(Path(path).name, subset, table_images(table), texts)


DATASETS: dict[str, Callable[[str, str | None, int | None, int], PairedData]] = {
    PRH: load_prh,
    embedded.NAME: load_embedded,
}


def load_data(name: str, subset: str | None = None, num_samples: int | None = None,
              caption_idx: int = 0) -> PairedData:
    """Look a dataset up by registry name, or read a local imagefolder."""
    if num_samples is not None and num_samples < 1:
        raise PlatonicError(f"--num_samples must be >= 1, got {num_samples}")
    if name in DATASETS:
        return DATASETS[name](name, subset, num_samples, caption_idx)
    if Path(name).is_dir():
        return load_imagefolder(name, subset, num_samples, caption_idx)
    raise PlatonicError(f"unknown dataset {name!r}: use one of {', '.join(sorted(DATASETS))} "
                        "or a local imagefolder directory")


def dataset_label(name: str, subset: str | None) -> tuple[str, str | None]:
    """The (dataset, subset) pair that names output folders, with the registry's defaults."""
    return name, subset or DEFAULT_SUBSETS.get(name)
