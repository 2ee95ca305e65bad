"""The caption file format the authors published (`perturbed/data.json`), read and written exactly.

The one reader of the format: `read` (whole entries, for resuming and checking a generation run)
and `read_perturbations` (the captions by level, for extraction) share the key grammar below.

A JSON list ordered by index of
  {"Index - i": {"sentences": {"Caption 1 - 10%": ..., ..., "Caption 10 - 100%": ...,
                               "Caption 0 - 0%": original},
                 "similarities": [10 floats]}}
where `similarities[k-1]` is the cosine similarity between level k and the original. The file
is serialised as `json.dumps(entries, indent=4)`, byte for byte what the published file is.

This project adds one key beside `similarities`, `"similarity_model"` (the sentence encoder that
computed them), which the original's readers ignore: they take a level from `sentences` by the
`- P%` of its key. An entry without it (the published file) is from paraphrase-MiniLM-L6-v2.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from platonic.errors import PlatonicError
from platonic.io.storage import write_text

NUM_LEVELS = 10
ORIGINAL_KEY = "Caption 0 - 0%"
MODEL_KEY = "similarity_model"
_INDEX_KEY = re.compile(r"Index - (\d+)")
_LEVEL_KEY = re.compile(r"Caption \d+ - (\d+)%")


def level_key(level: int) -> str:
    """Key of uniqueness level `level` (1..10), e.g. `Caption 3 - 30%`."""
    return f"Caption {level} - {10 * level}%"


LEVEL_KEYS: tuple[str, ...] = tuple(level_key(k) for k in range(1, NUM_LEVELS + 1))
SENTENCE_KEYS: tuple[str, ...] = (*LEVEL_KEYS, ORIGINAL_KEY)


def index_key(index: int) -> str:
    return f"Index - {index}"


@dataclass(frozen=True)
class CaptionEntry:
    """One finished caption: the original and its 10 rewrites with their similarities."""

    index: int
    original: str
    captions: tuple[str, ...]
    similarities: tuple[float, ...]
    similarity_model: str | None = None

    def to_json(self) -> dict:
        sentences = dict(zip(LEVEL_KEYS, self.captions, strict=True))
        sentences[ORIGINAL_KEY] = self.original
        body = {"sentences": sentences, "similarities": list(self.similarities)}
        if self.similarity_model is not None:
            body[MODEL_KEY] = self.similarity_model
        return {index_key(self.index): body}


def dumps(entries: dict[int, CaptionEntry]) -> str:
    """The file's text: entries ordered by index, serialised as the published file is."""
    return json.dumps([entries[i].to_json() for i in sorted(entries)], indent=4)


def write(path: str | os.PathLike, entries: dict[int, CaptionEntry]) -> None:
    """Replace `path` atomically with `entries`."""
    write_text(path, dumps(entries))


def parse_index_key(key: object) -> int | None:
    match = _INDEX_KEY.fullmatch(key) if isinstance(key, str) else None
    return int(match.group(1)) if match else None


def entry_problem(item: object) -> str | None:
    """Why `item` is not a well-formed entry of the format, or None when it is."""
    if not isinstance(item, dict) or len(item) != 1:
        return "is not an object with one 'Index - i' key"
    key, body = next(iter(item.items()))
    if parse_index_key(key) is None:
        return f"has key {key!r}, not 'Index - i'"
    if not isinstance(body, dict) or not {"sentences", "similarities"} <= set(body) <= {
            "sentences", "similarities", MODEL_KEY}:
        return f"must hold 'sentences' and 'similarities' (and optionally {MODEL_KEY!r}), no more"
    if not isinstance(body.get(MODEL_KEY, ""), str):
        return f"{MODEL_KEY!r} must be a string"
    sentences, sims = body["sentences"], body["similarities"]
    if not isinstance(sentences, dict) or set(sentences) != set(SENTENCE_KEYS):
        return "'sentences' must hold the 11 keys 'Caption 0 - 0%' .. 'Caption 10 - 100%'"
    not_text = next((k for k in SENTENCE_KEYS if not isinstance(sentences[k], str)), None)
    if not_text is not None:
        return f"caption {not_text!r} is not a string (got {type(sentences[not_text]).__name__})"
    if (not isinstance(sims, list) or len(sims) != NUM_LEVELS
            or not all(isinstance(s, int | float) and not isinstance(s, bool) for s in sims)):
        return f"'similarities' must be a list of {NUM_LEVELS} numbers"
    return None


def entry_from_json(item: dict) -> CaptionEntry:
    """A `CaptionEntry` from a well-formed item (check it with `entry_problem` first)."""
    key, body = next(iter(item.items()))
    sentences = body["sentences"]
    return CaptionEntry(index=parse_index_key(key), original=sentences[ORIGINAL_KEY],
                        captions=tuple(sentences[k] for k in LEVEL_KEYS),
                        similarities=tuple(float(s) for s in body["similarities"]),
                        similarity_model=body.get(MODEL_KEY))


def load_json_list(path: str | os.PathLike) -> list:
    """The file's top-level list; a missing, unreadable or non-list file is a `PlatonicError`."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PlatonicError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise PlatonicError(f"{path}: not readable as JSON ({err})") from None
    if not isinstance(data, list):
        raise PlatonicError(f"{path}: expected a JSON list of 'Index - i' entries")
    return data


def read(path: str | os.PathLike) -> dict[int, CaptionEntry]:
    """Entries of an existing caption file by index; any malformed entry is a `PlatonicError`."""
    entries: dict[int, CaptionEntry] = {}
    for position, item in enumerate(load_json_list(path)):
        problem = entry_problem(item)
        if problem:
            raise PlatonicError(f"{path}: entry {position} {problem}")
        entry = entry_from_json(item)
        if entry.index in entries:
            raise PlatonicError(f"{path}: index {entry.index} appears twice")
        entries[entry.index] = entry
    return entries


def parse_level_key(key: object) -> int | None:
    """The level (percent) of a caption key `Caption k - P%`, or None when it is not one."""
    match = _LEVEL_KEY.fullmatch(key) if isinstance(key, str) else None
    return int(match.group(1)) if match else None


def read_perturbations(path: str | os.PathLike) -> dict[int, dict[int, str]]:
    """{sample index: {level: caption}} from a caption file.

    Unlike `read`, any subset of the levels is accepted and similarities are not needed:
    extraction uses only the captions of the levels it is asked for.
    """
    table: dict[int, dict[int, str]] = {}
    for position, entry in enumerate(load_json_list(path)):
        if not isinstance(entry, dict) or len(entry) != 1:
            raise PlatonicError(f"{path}: entry {position} is not a single {{'Index - i': ...}} object")
        (key, body), = entry.items()
        index = parse_index_key(key)
        sentences = body.get("sentences") if isinstance(body, dict) else None
        if index is None or not isinstance(sentences, dict):
            raise PlatonicError(f"{path}: entry {position} ({key!r}) lacks an index or 'sentences'")
        table[index] = _levels_of(path, key, sentences)
    return table


def _levels_of(path: str | os.PathLike, key: str, sentences: dict) -> dict[int, str]:
    levels = {}
    for name, text in sentences.items():
        level = parse_level_key(name)
        if level is None:
            raise PlatonicError(f"{path}: {key}: unexpected caption key {name!r}")
        if not isinstance(text, str):
            raise PlatonicError(f"{path}: {key}: caption {name!r} is not a string "
                                f"(got {type(text).__name__} {text!r:.60})")
        levels[level] = text
    return levels
