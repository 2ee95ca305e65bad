"""Atomic file writes, fingerprints and the directory layout shared by every stage."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from platonic.errors import PlatonicError

LEVEL_PLACEHOLDER = "{}"
# What one feature or alignment folder is for: a uniqueness level (int), a named part of a
# dataset such as a split ("test"), or neither (None).
Level = int | str | None
CACHE_ENV = "PLATONIC_CACHE"


def cache_root() -> Path:
    """Where derived, re-creatable data (de-quantised GGUF models, file hashes) is kept."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "platonic")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds.

    A crash or Ctrl-C inside the block leaves no partial file under the final name, and no
    temporary file: its random name is chosen before the file is made (O_EXCL, the umask's mode),
    inside the `try`, so a stop that lands while it is being made still removes it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp_path = path.with_name(f".{path.name}.{secrets.token_hex(16)}.tmp")
    try:
        os.close(os.open(tmp_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        tmp_path.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_dir(target: str | os.PathLike, marker: str, replace: bool = False) -> Iterator[Path]:
    """Yield a temporary folder beside `target`, renamed onto it if the block succeeds; if a
    concurrent builder got there first (`target/marker` exists), its folder is kept.

    With `replace`, an existing `target` is replaced instead: moved aside only once the new
    folder is complete, deleted once the new one is in place, put back if that fails (kept
    aside if even that fails). A failed block leaves `target` as it was. The temporary folder
    never outlives the block."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    previous = tmp.with_name(f"{tmp.name}.previous")
    try:
        yield tmp
        if replace and target.exists():
            os.replace(target, previous)
        try:
            os.replace(tmp, target)
        except OSError:
            if previous.exists():
                os.replace(previous, target)
                raise
            if not (target / marker).exists():
                raise
        shutil.rmtree(previous, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text(path: str | os.PathLike, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def sha256_of(*parts: Any) -> str:
    """Fingerprint of JSON-serialisable parts (strings, numbers, lists, dicts)."""
    return sha256_of_stream(parts)


def sha256_of_stream(parts: Iterable[Any]) -> str:
    """`sha256_of(*parts)` with the parts taken one at a time (a generator: none held after use)."""
    h = hashlib.sha256()
    for part in parts:
        if isinstance(part, bytes):
            h.update(part)
        else:
            h.update(json.dumps(part, sort_keys=True, ensure_ascii=False).encode("utf-8"))
        h.update(b"\x00")
    return h.hexdigest()


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def level_dir(template: str | os.PathLike, level: Level) -> Path:
    """Directory for one uniqueness level, or for one named part of a dataset (a split).

    `template` may hold `{}` for the level (`BASE/gpt_u={}_features`, as in the original README).
    Without `{}`, a level gets its own sub-folder `u=<level>` and a named part (`"test"`) a
    sub-folder of its name; `level=None` means no levels.
    """
    template = str(template)
    if LEVEL_PLACEHOLDER in template:
        if level is None:
            raise PlatonicError(f"directory template {template!r} needs a uniqueness level for "
                                "its '{}' (--levels, or level= in the API)")
        return Path(template.replace(LEVEL_PLACEHOLDER, str(level)))
    if level is None:
        return Path(template)
    return Path(template) / (level if isinstance(level, str) else f"u={level}")


def model_slug(model_id: str) -> str:
    """File-name stem for a model named by Hub id or path (the original's `/` -> `_`)."""
    return str(model_id).strip("/").replace("/", "_")


def dataset_dir(root: str | os.PathLike, dataset: str, subset: str | None) -> Path:
    """`{root}/{dataset}/{subset}`, the original layout; a local dataset path uses its folder name."""
    name = Path(dataset).name if os.path.isabs(dataset) or dataset.startswith(".") else dataset
    path = Path(root) / name
    return path / subset if subset else path
