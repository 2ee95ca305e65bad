"""Image-caption datasets by name, and the captions at each uniqueness level.

Datasets (one registry, `DATASETS`; a local folder is recognised by being a directory):
  `minhuh/prh`  the original's WIT pairs from the Hub; `--subset` is the revision (`wit_1024`).
  `embedded`    the offline default (platonic.embedded): rendered scenes, faithful captions and
                built-in uniqueness levels; `--subset seed<N>` picks the seed (default `seed0`).
  a folder      the Hugging Face `imagefolder` convention: images plus `metadata.jsonl`/`.csv`
                with a `file_name` column and a caption column (`text`, `caption` or `captions`,
                a string or a list indexed by `--caption_idx`).

Uniqueness levels come from, in order of precedence: a caption file in the published format
(`--json_perturbations`, matched to images by index and checked by each row's level-0 caption),
rule-based word operations (`--text_operations`, the level is the percentage of words touched),
or the dataset's own rules (the embedded set).
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from platonic import embedded
from platonic.errors import PlatonicError, first_line
from platonic.storage import sha256_of

ALL_LEVELS: tuple[int, ...] = tuple(range(0, 101, 10))
_CAPTION_COLUMNS = ("text", "caption", "captions")


@dataclass
class PairedData:
    """Images and their captions, in dataset order; `level_texts` gives captions at a level."""

    name: str
    subset: str | None
    images: list[Image.Image]
    texts: list[str]
    level_texts: Callable[[int], list[str]] | None = None

    def __len__(self) -> int:
        return len(self.texts)


def _take(items: list, num_samples: int | None) -> list:
    return items if num_samples is None else items[:num_samples]


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

    revision = subset or "wit_1024"
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
    return PairedData(name, revision, [img.convert("RGB") for img in table["image"]], texts)


def load_embedded(name: str, subset: str | None, num_samples: int | None, caption_idx: int) -> PairedData:
    """The offline default: rendered scenes with faithful captions and built-in levels."""
    subset = subset or "seed0"
    match = re.fullmatch(r"seed(\d+)", subset)
    if match is None:
        raise PlatonicError(f"dataset {name!r}: subset must be seed<N> (e.g. seed0), got {subset!r}")
    seed = int(match.group(1))
    count = embedded.DEFAULT_NUM_SAMPLES if num_samples is None else num_samples
    scenes = embedded.scenes(count, seed)
    texts = [embedded.describe(scene) for scene in scenes]
    images = [embedded.render(scene) for scene in scenes]

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
    return PairedData(Path(path).name, subset, [img.convert("RGB") for img in table["image"]], texts)


DATASETS: dict[str, Callable[[str, str | None, int | None, int], PairedData]] = {
    "minhuh/prh": load_prh,
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
    defaults = {"minhuh/prh": "wit_1024", embedded.NAME: "seed0"}
    return name, subset or defaults.get(name)



# ---- levels -----------------------------------------------------------------------------------

_LEVEL_KEY = re.compile(r"Caption\s+\d+\s*-\s*(\d+)\s*%")
_INDEX_KEY = re.compile(r"Index\s*-\s*(\d+)")


def read_perturbations(path: str | Path) -> dict[int, dict[int, str]]:
    """Parse a caption file in the published format into {sample index: {level: caption}}."""
    path = Path(path)
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise PlatonicError(f"{path}: cannot read the caption file ({err})") from err
    if not isinstance(entries, list):
        raise PlatonicError(f"{path}: expected a JSON list of {{'Index - i': ...}} objects")
    table: dict[int, dict[int, str]] = {}
    for position, entry in enumerate(entries):
        if not isinstance(entry, dict) or len(entry) != 1:
            raise PlatonicError(f"{path}: entry {position} is not a single {{'Index - i': ...}} object")
        (key, body), = entry.items()
        match = _INDEX_KEY.fullmatch(key.strip())
        sentences = body.get("sentences") if isinstance(body, dict) else None
        if match is None or not isinstance(sentences, dict):
            raise PlatonicError(f"{path}: entry {position} ({key!r}) lacks an index or 'sentences'")
        table[int(match.group(1))] = _levels_of(path, key, sentences)
    return table


def _levels_of(path: Path, key: str, sentences: dict) -> dict[int, str]:
    levels = {}
    for name, text in sentences.items():
        match = _LEVEL_KEY.search(name)
        if match is None:
            raise PlatonicError(f"{path}: {key}: unexpected caption key {name!r}")
        if not isinstance(text, str):
            raise PlatonicError(f"{path}: {key}: caption {name!r} is not a string "
                                f"(got {type(text).__name__} {text!r:.60})")
        levels[int(match.group(1))] = text
    return levels


def file_levels(path: str | Path, texts: list[str],
                allow_mismatch: bool = False) -> Callable[[int], list[str]]:
    """Captions at a level from a published-format file, matched by index to the dataset `texts`.

    The file must cover every sample, and each sample's level-0 caption must be the dataset's own
    (white space aside): a file made for other data, another --caption_idx or another order is
    refused, naming the first index that differs, unless `allow_mismatch`.
    """
    table = read_perturbations(path)
    missing = next((i for i in range(len(texts)) if i not in table), None)
    if missing is not None:
        raise PlatonicError(f"{path}: no captions for sample index {missing}")
    if not allow_mismatch:
        _check_level0(path, table, texts)

    def level_texts(level: int) -> list[str]:
        absent = next((i for i in range(len(texts)) if level not in table[i]), None)
        if absent is not None:
            raise PlatonicError(f"{path}: sample index {absent} has no caption at level {level}% "
                                f"(levels: {sorted(table[absent])})")
        return [table[i][level] for i in range(len(texts))]

    return level_texts


def _check_level0(path: str | Path, table: dict[int, dict[int, str]], texts: list[str]) -> None:
    for index, text in enumerate(texts):
        level0 = table[index].get(0)
        if level0 is None:
            raise PlatonicError(f"{path}: sample index {index} has no level-0 caption to match "
                                "against the dataset's; pass --allow_caption_mismatch to use it "
                                "anyway")
        if level0.split() != text.split():  # white space aside
            raise PlatonicError(
                f"{path}: sample index {index}: the file's level-0 caption {level0[:60]!r} is not "
                f"the dataset's {text[:60]!r}, so the file was made for other data (or another "
                "--caption_idx); pass --allow_caption_mismatch to use it anyway")


TEXT_OPERATIONS = ("shuffle", "delete", "replace")


def rule_levels(texts: list[str], operations: list[str], seed: int = 0) -> Callable[[int], list[str]]:
    """Word-level rules: at level p each word is touched with probability p/100 (seeded, nested).

    `delete` drops it, `replace` swaps in a random word from the other captions, `shuffle`
    permutes the touched words among their positions.
    """
    unknown = [op for op in operations if op not in TEXT_OPERATIONS]
    if unknown or not operations:
        raise PlatonicError(f"--text_operations: unknown {unknown or operations}; "
                            f"choose from {', '.join(TEXT_OPERATIONS)}")
    vocabulary = sorted({word for text in texts for word in text.split()})

    def level_texts(level: int) -> list[str]:
        return [_apply_rules(text, i, level, operations, vocabulary, seed) for i, text in enumerate(texts)]

    return level_texts


def _apply_rules(text: str, index: int, level: int, operations: list[str], vocabulary: list[str],
                 seed: int) -> str:
    rng = random.Random(f"platonic-rules:{seed}:{index}")
    words = text.split()
    draws = [(rng.random(), rng.choice(operations), rng.choice(vocabulary)) for _ in words]
    touched = [k for k, (r, _, _) in enumerate(draws) if r < level / 100]
    shuffled = [k for k in touched if draws[k][1] == "shuffle"]
    order = shuffled[:]
    random.Random(f"platonic-shuffle:{seed}:{index}:{level}").shuffle(order)
    result = list(words)
    for source, target in zip(shuffled, order, strict=True):
        result[target] = words[source]
    for k in touched:
        if draws[k][1] == "replace":
            result[k] = draws[k][2]
    return " ".join(w for k, w in enumerate(result) if not (k in touched and draws[k][1] == "delete"))


_LEVELS_USAGE = "use 'all', a list '0,50,100', 'start:stop:step' or '0,10,...,100'"


def parse_levels(spec: str) -> list[int]:
    """`all` (0,10,..,100), a list `0,20,40`, `start:stop:step`, or `0,10,...,100`.

    A range needs an explicit positive step (the third number, or the difference of the two
    terms before `...`) and an end that lies on it: `0,10,...,95` and `0,...,100` are errors,
    never silently shortened.
    """
    text = spec.strip()
    if text == "all":
        return list(ALL_LEVELS)
    levels = _colon_range(spec, text) if ":" in text else _comma_levels(spec, text)
    bad = [lv for lv in levels if not 0 <= lv <= 100]
    if bad or not levels:
        raise _levels_error(spec, "levels must be integers 0..100")
    return sorted(set(levels))


def _levels_error(spec: str, why: str) -> PlatonicError:
    return PlatonicError(f"--levels {spec!r}: {why}; {_LEVELS_USAGE}")


def _level_number(spec: str, part: str) -> int:
    try:
        return int(part)
    except ValueError:
        raise _levels_error(spec, f"{part!r} is not an integer") from None


def _stepped(spec: str, start: int, stop: int, step: int) -> list[int]:
    """start, start + step, ..., stop, where stop must lie on that grid."""
    if step <= 0:
        raise _levels_error(spec, f"a range needs a positive step, got {step}")
    if stop < start or (stop - start) % step:
        raise _levels_error(spec, f"{stop} is not reached from {start} in steps of {step}")
    return list(range(start, stop + 1, step))


def _colon_range(spec: str, text: str) -> list[int]:
    parts = text.split(":")
    if len(parts) != 3:
        raise _levels_error(spec, "a range is start:stop:step")
    start, stop, step = (_level_number(spec, p.strip()) for p in parts)
    return _stepped(spec, start, stop, step)


def _comma_levels(spec: str, text: str) -> list[int]:
    """A list, possibly with one `a,b,...,end` run whose step is b - a (more values may follow)."""
    parts = [p.strip() for p in text.split(",") if p.strip()]
    if "..." not in parts:
        return [_level_number(spec, p) for p in parts]
    at = parts.index("...")
    if parts.count("...") > 1 or at < 2 or at == len(parts) - 1:
        raise _levels_error(spec, "'...' goes once, after two levels that give the step and "
                                  "before the last level")
    head = [_level_number(spec, p) for p in parts[:at]]
    tail = [_level_number(spec, p) for p in parts[at + 1:]]
    return head + _stepped(spec, head[-1], tail[0], head[-1] - head[-2]) + tail[1:]


# ---- images -----------------------------------------------------------------------------------

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


def images_fingerprint(images: list[Image.Image]) -> str:
    """sha256 over every image's mode, size and pixels, in order."""
    return sha256_of(*[part for img in images for part in (img.mode, list(img.size), img.tobytes())])


def texts_fingerprint(texts: list[str]) -> str:
    return sha256_of(texts)
