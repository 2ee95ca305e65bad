"""What identifies a model's weights, for the extraction fingerprint.

A local file or folder is identified by the SHA-256 of its content (every file of a folder:
weights, config and tokenizer all change features). Hashing gigabytes on every run would be
slow, so each file's hash is cached under its absolute path, size and modification time in
`$PLATONIC_CACHE/file_hashes.json`: a changed file gets a new size or mtime and is hashed again.
A Hub model is identified by the commit its requested revision resolves to in the local Hub
cache (no network), else by the requested revision itself.
"""

from __future__ import annotations

import contextlib
import os
import threading
from pathlib import Path
from typing import Any

from platonic.io.storage import cache_root, read_json, sha256_file, sha256_of, write_json

HASH_CACHE_NAME = "file_hashes.json"
_lock = threading.Lock()


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 of a file's content, from the cache when its path, size and mtime are unchanged."""
    path = Path(path).resolve()
    stat = path.stat()
    key = str(path)
    stamp = [stat.st_size, stat.st_mtime_ns]
    cache_file = cache_root() / HASH_CACHE_NAME
    with _lock:
        cache = _read_cache(cache_file)
        entry = cache.get(key)
        if entry and entry.get("stamp") == stamp:
            return entry["sha256"]
        digest = sha256_file(path)
        cache = _read_cache(cache_file)  # another process may have added entries meanwhile
        cache[key] = {"stamp": stamp, "sha256": digest}
        with contextlib.suppress(OSError):  # a read-only cache only costs speed
            write_json(cache_file, cache)
        return digest


def _read_cache(cache_file: Path) -> dict[str, Any]:
    try:
        data = read_json(cache_file)
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def local_identity(path: str | os.PathLike) -> str:
    """Content hash of a file, or of every file (by relative name) of a folder."""
    path = Path(path)
    if path.is_file():
        return file_sha256(path)
    files = sorted(p for p in path.rglob("*") if p.is_file()
                   and not any(part.startswith(".") for part in p.relative_to(path).parts))
    return sha256_of([[str(p.relative_to(path)), file_sha256(p)] for p in files])


def hub_commit(repo_id: str, revision: str | None) -> str | None:
    """The commit `revision` resolves to in the local Hub cache, or None when it is not there."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    for filename in ("config.json", "model.safetensors", "pytorch_model.bin", "open_clip_config.json"):
        try:
            found = try_to_load_from_cache(repo_id, filename, revision=revision)
        except Exception:  # an id that is not a valid repo name
            return None
        if isinstance(found, str):
            return Path(found).parent.name  # .../snapshots/<commit>/<filename>
    return None


def weights_identity(source: str, revision: str | None = None) -> dict[str, Any]:
    """{"sha256": ...} for a local file or folder, else {"hub": id, "commit" or "revision": ...}."""
    if Path(source).exists():
        return {"sha256": local_identity(source)}
    commit = hub_commit(source, revision)
    return {"hub": source, "commit": commit} if commit else {"hub": source, "revision": revision}
