"""The feature-file format shared by every stage.

One safetensors file per (model, uniqueness level):
  tensors  `feats` [N, L, D] (per-layer features), plus optional per-sample extras of shape [N]
           (`loss`: mean next-token loss in nats, `bpb`: bits per byte, `num_bytes`, `num_tokens`).
  metadata one key, `platonic`, holding JSON: model id, modality, pooling, prompt, dataset,
           subset, level, num_samples, num_layers, dim, `layer_dims` (each layer's true width: narrower
           layers are zero-padded to `dim`), dtype, num_params, `input_fingerprint`
           (the exact texts or images and settings used) and `content_sha256` (of the tensors).

Loading never executes code: safetensors for our files, `torch.load(weights_only=True)` for the
original's `.pt` files. Checking a file's content streams it in row chunks (`platonic.core.layers.FileLayers` reads a
file one layer at a time the same way).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from platonic.errors import PlatonicError
from platonic.io.storage import atomic_path, dataset_dir, model_slug, sha256_file

FORMAT_VERSION = 1
META_KEY = "platonic"
FEATS = "feats"
CHUNK_BYTES = 64 << 20  # rows read at a time when a file is streamed


@dataclass
class FeatureFile:
    """Features of one model on one dataset (and level), with per-sample extras and metadata."""

    feats: torch.Tensor
    meta: dict[str, Any]
    extras: dict[str, torch.Tensor] = field(default_factory=dict)
    path: Path | None = None

    @property
    def fingerprint(self) -> str:
        return self.meta["content_sha256"]


def feature_filename(model: str, pool: str | None = None, prompt: Any = None,
                     suffix: str = ".safetensors") -> str:
    """`{model}_pool-{pool}[_prompt-{prompt}]`, the original's naming."""
    name = model_slug(model)
    if pool:
        name += f"_pool-{pool}"
    if prompt:
        name += f"_prompt-{prompt}"
    return name + suffix


def feature_path(root: str | os.PathLike, dataset: str, subset: str | None, model: str,
                 pool: str | None = None, prompt: Any = None) -> Path:
    """Where a model's features live: `{root}/{dataset}/{subset}/{model}_pool-{pool}.safetensors`."""
    return dataset_dir(root, dataset, subset) / feature_filename(model, pool, prompt)


def tensors_sha256(tensors: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for name in sorted(tensors):
        h.update(_tensor_record(name, tensors[name]))
    return h.hexdigest()


def _tensor_record(name: str, tensor: torch.Tensor) -> bytes:
    """What the content hash reads of one tensor: name, dtype, shape, then its bytes."""
    t = tensor.detach().contiguous().cpu()
    header = f"{name}:{t.dtype}:{tuple(t.shape)}".encode()
    return header + (t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")


def verified_fingerprint(path: str | os.PathLike) -> str:
    """The file's recorded `content_sha256`, after checking that its tensors still have it (the
    features streamed in row chunks); a damaged or edited file is an error, never a reused input."""
    path = Path(path)
    meta = read_meta(path)
    if path.suffix == ".pt":
        return meta["content_sha256"]
    check_content(path, meta, streamed_sha256(path))
    return meta["content_sha256"]


def streamed_sha256(path: Path, each_chunk: Callable[[torch.Tensor], None] | None = None) -> str:
    """`tensors_sha256` of a safetensors file with the features read in row chunks of about
    `CHUNK_BYTES` (a multiple of 64 rows), each also given to `each_chunk`. The file is mapped
    again for each chunk: pages of one mapping count in the process's resident memory until it
    is closed, so one mapping kept over the whole stream held the whole file."""
    h = hashlib.sha256()
    try:
        with safe_open(str(path), framework="pt") as f:
            names = sorted(f.keys())  # noqa: SIM118
            parts = {name: f.get_slice(name) for name in names}
            shapes = {name: tuple(part.get_shape()) for name, part in parts.items()}
            dtypes = {name: slice_dtype(part) for name, part in parts.items()}
        for name in names:
            shape = shapes[name]
            if name != FEATS or not shape:
                with safe_open(str(path), framework="pt") as f:
                    h.update(_tensor_record(name, f.get_tensor(name)))
                continue
            h.update(f"{name}:{dtypes[name]}:{shape}".encode())
            rows = chunk_rows(shape)
            for start in range(0, shape[0], rows):
                with safe_open(str(path), framework="pt") as f:
                    chunk = f.get_slice(name)[start:start + rows].clone()
                h.update(chunk.contiguous().view(torch.uint8).numpy().tobytes() if chunk.numel() else b"")
                if each_chunk is not None:
                    each_chunk(chunk)
    except PlatonicError:
        raise
    except Exception as err:  # safetensors raises several types for a damaged file
        raise PlatonicError(f"{path}: not a readable safetensors feature file ({err})") from err
    return h.hexdigest()


DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "F64": torch.float64,
          "I64": torch.int64, "I32": torch.int32, "U8": torch.uint8, "BOOL": torch.bool,
          "I16": torch.int16, "I8": torch.int8}  # safetensors' dtype names


def slice_dtype(part: Any) -> torch.dtype:
    name = part.get_dtype()
    return DTYPES.get(name, name)


def read_layer(path: str | os.PathLike, index: int) -> torch.Tensor:
    """Layer `index` of a feature file's `feats` [N, L, D]: [N, D] in the file's dtype, read
    with one positioned read of that layer's bytes per row. Not through a memory map: its pages
    count in resident memory while it is open, and safetensors' strided read of one layer of a
    2.2 GB file held 1.8 GB of it resident."""
    path = Path(path)
    offset, dtype, (n, layers, width) = _feats_location(path)
    out = torch.empty(n, width, dtype=dtype)
    rows = out.view(torch.uint8).numpy()
    span = rows.shape[1]
    with open(path, "rb", buffering=0) as f:
        for i in range(n):
            if os.preadv(f.fileno(), [rows[i]], offset + (i * layers + index) * span) != span:
                raise PlatonicError(f"{path}: truncated feature file (row {i} of layer {index})")
    return out


def _feats_location(path: Path) -> tuple[int, torch.dtype, tuple[int, int, int]]:
    """Where `feats` starts in the file, its dtype and its shape, from the safetensors header
    (8 bytes of little-endian length, then JSON with each tensor's data offsets)."""
    try:
        with open(path, "rb") as f:
            length = int.from_bytes(f.read(8), "little")
            entry = json.loads(f.read(length))[FEATS]
        dtype, shape, (begin, end) = DTYPES[entry["dtype"]], entry["shape"], entry["data_offsets"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise PlatonicError(f"{path}: not a readable safetensors feature file ({err!r})") from err
    if len(shape) != 3 or end - begin != math.prod(shape) * dtype.itemsize:
        raise PlatonicError(f"{path}: feats of shape {shape} do not match their stored size")
    return 8 + length + begin, dtype, tuple(shape)


def chunk_rows(shape: tuple[int, ...]) -> int:
    """Rows per streamed chunk of a tensor of `shape` (4-byte entries assumed): a multiple of 64."""
    row_bytes = 4 * max(1, math.prod(shape[1:]))
    return max(64, CHUNK_BYTES // row_bytes // 64 * 64)


def check_content(path: Path, meta: dict[str, Any], actual: str) -> None:
    if meta.get("content_sha256") != actual:
        raise PlatonicError(f"{path}: its tensors do not match their recorded SHA-256 (a damaged "
                            "or edited file); extract it again")


def save_features(path: str | os.PathLike, feats: torch.Tensor, meta: dict[str, Any],
                  extras: dict[str, torch.Tensor] | None = None) -> FeatureFile:
    """Validate and write one feature file atomically; returns what was written."""
    if feats.ndim != 3 or feats.shape[0] == 0:
        raise PlatonicError(f"{path}: features must be [N, L, D] with N > 0, got {tuple(feats.shape)}")
    tensors = {FEATS: feats.detach().contiguous().cpu()}
    for name, value in (extras or {}).items():
        value = value.detach().contiguous().cpu()
        if value.shape[:1] != feats.shape[:1]:
            raise PlatonicError(f"{path}: extra {name!r} has {value.shape[0]} rows, feats {feats.shape[0]}")
        tensors[name] = value
    full_meta = dict(meta)
    full_meta["layer_dims"] = _layer_dims(path, feats, meta.get("layer_dims"))
    full_meta.update(
        format_version=FORMAT_VERSION,
        num_samples=int(feats.shape[0]),
        num_layers=int(feats.shape[1]),
        dim=int(feats.shape[2]),
        dtype=str(feats.dtype).removeprefix("torch."),
        content_sha256=tensors_sha256(tensors),
    )
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={META_KEY: json.dumps(full_meta, sort_keys=True)})
    return FeatureFile(tensors.pop(FEATS), full_meta, tensors, Path(path))


def _layer_dims(path: str | os.PathLike, feats: torch.Tensor, dims: list[int] | None) -> list[int]:
    """Each layer's true width (narrower layers are zero-padded to D); all D when not given."""
    num_layers, width = int(feats.shape[1]), int(feats.shape[2])
    if dims is None:
        return [width] * num_layers
    dims = [int(d) for d in dims]
    if len(dims) != num_layers or not all(1 <= d <= width for d in dims):
        raise PlatonicError(f"{path}: layer widths {dims} do not fit features of shape {tuple(feats.shape)}")
    return dims


def read_meta(path: str | os.PathLike) -> dict[str, Any]:
    """Metadata of a feature file: a safetensors header alone (cheap), or an imported `.pt` file."""
    if Path(path).suffix == ".pt":
        return _load_legacy(Path(path), "cpu").meta
    try:
        with safe_open(str(path), framework="pt") as f:
            raw = (f.metadata() or {}).get(META_KEY)
    except Exception as err:  # safetensors raises several types for a damaged header
        raise PlatonicError(f"{path}: not a readable safetensors feature file ({err})") from err
    if raw is None:
        raise PlatonicError(f"{path}: safetensors file without '{META_KEY}' metadata")
    return json.loads(raw)


def read_tensor(path: str | os.PathLike, name: str,
                index: tuple[slice | int, ...] | None = None) -> torch.Tensor | None:
    """One tensor of a feature file (or the part `index` picks, read alone: one layer of a 65B
    model's 81), without loading the others; None if the file has no tensor `name`."""
    path = Path(path)
    if path.suffix == ".pt":
        loaded = load_features(path)
        tensor = loaded.feats if name == FEATS else loaded.extras.get(name)
        return tensor if tensor is None or index is None else tensor[index]
    try:
        with safe_open(str(path), framework="pt") as f:
            if name not in f.keys():  # noqa: SIM118
                return None
            return f.get_tensor(name) if index is None else f.get_slice(name)[index]
    except Exception as err:  # safetensors raises several types for a damaged file
        raise PlatonicError(f"{path}: not a readable safetensors feature file ({err})") from err


def load_features(path: str | os.PathLike, device: str | torch.device = "cpu") -> FeatureFile:
    """Load our safetensors file, or import the original's `.pt` file (`torch.load`, weights only)."""
    path = Path(path)
    if not path.exists():
        raise PlatonicError(f"{path}: feature file not found")
    if path.suffix == ".pt":
        return _load_legacy(path, device)
    meta = read_meta(path)
    with safe_open(str(path), framework="pt", device=str(device)) as f:
        tensors = {name: f.get_tensor(name) for name in f.keys()}  # noqa: SIM118
    if FEATS not in tensors:
        raise PlatonicError(f"{path}: no '{FEATS}' tensor")
    check_content(path, meta, tensors_sha256(tensors))
    feats = tensors.pop(FEATS)
    check_feats(feats, path)
    return FeatureFile(feats, meta, tensors, path)


def _load_legacy(path: Path, device: str | torch.device) -> FeatureFile:
    try:
        blob = torch.load(path, map_location=device, weights_only=True)
    except Exception as err:  # unpickling refuses anything but tensors and plain containers
        raise PlatonicError(f"{path}: cannot load as a weights-only .pt feature file ({err})") from err
    if not isinstance(blob, dict) or FEATS not in blob:
        raise PlatonicError(f"{path}: legacy .pt file has no 'feats' entry")
    feats = blob[FEATS]
    check_feats(feats, path)
    extras = {k: v for k, v in blob.items()
              if k != FEATS and isinstance(v, torch.Tensor) and v.shape[:1] == feats.shape[:1]}
    meta = {
        "model": path.stem.split("_pool-")[0],
        "num_samples": int(feats.shape[0]),
        "num_layers": int(feats.shape[1]),
        "dim": int(feats.shape[2]),
        "dtype": str(feats.dtype).removeprefix("torch."),
        "num_params": _as_int(blob.get("num_params")),
        "legacy": True,
        "content_sha256": sha256_file(path),
    }
    return FeatureFile(feats, meta, extras, path)


def _as_int(value: Any) -> int | None:
    if isinstance(value, torch.Tensor):
        return int(value.item())
    return int(value) if isinstance(value, int | float) else None


def check_feats(feats: Any, path: str | os.PathLike) -> None:
    """Features must be a non-empty [N, L, D] tensor of finite numbers; name the bad layer."""
    if not isinstance(feats, torch.Tensor):
        raise PlatonicError(f"{path}: 'feats' is not a tensor")
    if feats.ndim != 3 or feats.numel() == 0:
        raise PlatonicError(f"{path}: features must be a non-empty [N, layers, dim] tensor, "
                            f"got shape {tuple(feats.shape)}")
    if not feats.is_floating_point():
        raise PlatonicError(f"{path}: features must be floating point, got {feats.dtype}")
    finite = torch.isfinite(feats).flatten(2).all(dim=2).all(dim=0)
    if not bool(finite.all()):
        bad = torch.nonzero(~finite).flatten().tolist()
        raise PlatonicError(f"{path}: NaN or inf in layer(s) {bad}")


def equal_to_rounding(a: torch.Tensor, b: torch.Tensor, rtol: float = 1e-4) -> bool:
    """Whether two feature tensors ([..., D], or one number per sample) agree to fp32 rounding,
    vector by vector: an error scales with a hidden state's norm (a few dimensions of a residual
    stream reach thousands), not with each entry, so entrywise tolerances do not fit."""
    if a.shape != b.shape:
        return False
    if a.ndim == 1:
        a, b = a[:, None], b[:, None]
    a, b = a.double(), b.double()
    return bool(((a - b).norm(dim=-1) <= rtol * a.norm(dim=-1) + 1e-9).all())


def resolve_feature_file(root: str | os.PathLike, dataset: str, subset: str | None, model: str,
                         pool: str | None, prompt: Any = None) -> Path:
    """Our safetensors file if present, else the original's `.pt` file of the same name."""
    path = feature_path(root, dataset, subset, model, pool, prompt)
    legacy = path.with_suffix(".pt")
    return legacy if not path.exists() and legacy.exists() else path
