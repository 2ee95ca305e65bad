"""A model's prepared features one layer at a time: the alignment engine's only view of them.

The engine (`platonic.core.alignment`) reads a model's features, prepared as the measure stage does
(float32, outliers clamped), through a `LayerSource`: `layer(l)` gives layer l as [N, D].
`TensorLayers` wraps a tensor already in memory; `FileLayers` reads each
layer's slice from a feature file when asked, so that a file larger than memory can be scored;
`RowsView` reorders or resamples the rows of another source (the calibration's permutations and
bootstrap draws) without copying it.

Memory: a TensorLayers holds its [N, L, D] tensor; a FileLayers holds one layer [N, D] float32
while a caller uses it, nothing in between; a RowsView holds its row order.

`OutlierThreshold` gives the clamp's threshold from the features streamed in row chunks, equal to
the one `metrics.remove_outliers` computes on the whole tensor.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import torch
from safetensors import safe_open

from platonic.core import metrics
from platonic.errors import PlatonicError
from platonic.io.features import (
    FEATS,
    check_content,
    chunk_rows,
    load_features,
    read_layer,
    read_meta,
    read_tensor,
    slice_dtype,
    streamed_sha256,
)

QUANTILE = 0.95
SAMPLE_CHUNK = 64  # rows per torch.quantile call, as metrics.mean_sample_abs_quantile


class LayerSource:
    """Prepared features [N, L, D], one layer at a time."""

    n: int
    num_layers: int
    width: int
    device: torch.device

    def layer(self, index: int) -> torch.Tensor:
        """Layer `index` as [N, D] float32 on `device`."""
        raise NotImplementedError

    def to(self, device: str | torch.device) -> LayerSource:
        raise NotImplementedError

    def whole(self) -> torch.Tensor:
        """All layers [N, L, D] in memory: only for metrics that have no layer-by-layer form."""
        return torch.stack([self.layer(i) for i in range(self.num_layers)], dim=1)

    def reordered(self, order: torch.Tensor) -> RowsView:
        return RowsView(self, order)


class TensorLayers(LayerSource):
    """Features already in memory, [N, L, D] float32 (prepared by the caller)."""

    def __init__(self, feats: torch.Tensor):
        self.feats = feats
        self.n, self.num_layers, self.width = (int(s) for s in feats.shape)
        self.device = feats.device

    def layer(self, index: int) -> torch.Tensor:
        return self.feats[:, index, :]

    def to(self, device: str | torch.device) -> TensorLayers:
        return TensorLayers(self.feats.to(device))

    def whole(self) -> torch.Tensor:
        return self.feats


class RowsView(LayerSource):
    """`base` with its rows reordered: row i is base row order[i] (repeats allowed)."""

    def __init__(self, base: LayerSource, order: torch.Tensor):
        self.base, self.order = base, order.to(base.device)
        self.n, self.num_layers, self.width = len(order), base.num_layers, base.width
        self.device = base.device

    def layer(self, index: int) -> torch.Tensor:
        return self.base.layer(index)[self.order]

    def to(self, device: str | torch.device) -> RowsView:
        return RowsView(self.base.to(device), self.order)


class OutlierThreshold:
    """The clamp threshold of `metrics.remove_outliers` (q-quantile of |x| over the real
    entries, `exact` or mean of per-sample quantiles), from row chunks of raw [c, L, D]
    features fed in order; chunks must hold a multiple of 64 rows (but the last).

    The mean of per-sample quantiles needs one pass (`add`); the exact order statistic a
    second one (`refine`): the first counts the values by their top 16 bits, the second the
    low 16 bits of those in the bucket holding the wanted rank (float32 bit patterns of
    non-negative numbers sort as integers), so that the result is the exact k-th value.
    """

    def __init__(self, num_samples: int, layer_dims: list[int] | None = None,
                 q: float = QUANTILE, exact: bool = False):
        self.n, self.layer_dims, self.q, self.exact = num_samples, layer_dims, q, exact
        self.total = torch.zeros((), dtype=torch.float64)
        self.count = 0
        self.high = torch.zeros(1 << 15, dtype=torch.int64)
        self.low = torch.zeros(1 << 16, dtype=torch.int64)
        self.bucket: int | None = None
        self.rank_in_bucket = 0

    @property
    def needed(self) -> bool:
        return self.q != 1

    @property
    def needs_refine(self) -> bool:
        return self.needed and self.exact

    def _abs_real(self, chunk: torch.Tensor) -> torch.Tensor:
        return metrics.real_entries(chunk.float(), self.layer_dims).reshape(len(chunk), -1).abs()

    def add(self, chunk: torch.Tensor) -> None:
        if not self.needed:
            return
        values = self._abs_real(chunk).cpu()
        if self.exact:
            bits = values.reshape(-1).view(torch.int32)
            self.high += torch.bincount(bits >> 16, minlength=1 << 15)
            self.count += bits.numel()
            return
        for start in range(0, len(values), SAMPLE_CHUNK):
            block = values[start:start + SAMPLE_CHUNK]
            self.total += torch.quantile(block, self.q, dim=1).double().sum()

    def _locate_bucket(self) -> None:
        rank = int(self.q * self.count) + 1  # kthvalue's k, as metrics.global_abs_quantile
        cumulative = torch.cumsum(self.high, 0)
        self.bucket = int(torch.searchsorted(cumulative, rank))
        below = int(cumulative[self.bucket - 1]) if self.bucket else 0
        self.rank_in_bucket = rank - below

    def refine(self, chunk: torch.Tensor) -> None:
        if self.bucket is None:
            self._locate_bucket()
        bits = self._abs_real(chunk).cpu().reshape(-1).view(torch.int32)
        low = bits[(bits >> 16) == self.bucket] & 0xFFFF
        self.low += torch.bincount(low, minlength=1 << 16)

    def value(self) -> float | None:
        """The threshold, or None when nothing is clamped (q = 1)."""
        if not self.needed:
            return None
        if not self.exact:
            return (self.total / self.n).float().item()
        low = int(torch.searchsorted(torch.cumsum(self.low, 0), self.rank_in_bucket))
        bits = torch.tensor([(self.bucket << 16) | low], dtype=torch.int32)
        return bits.view(torch.float32).item()

class FileLayers(LayerSource):
    """The features of one safetensors feature file, prepared as the measure stage does (float32,
    clamped at the q-quantile of |x| over the real entries), read one layer at a time.

    Opening streams the file once in row chunks (a second time for the `exact` threshold):
    its content hash is checked, every entry must be finite, and the clamp threshold is
    computed; afterwards each `layer(l)` reads that layer's slice, so memory holds one layer.
    """

    def __init__(self, path: str | os.PathLike, device: str | torch.device = "cpu",
                 exact: bool = False):
        self.path, self.device = Path(path), torch.device(device)
        meta = read_meta(self.path)
        self.n, self.num_layers, self.width = self._shape()
        layer_dims = meta.get("layer_dims")
        try:
            metrics.real_entries(torch.zeros(0, self.num_layers, self.width), layer_dims)
        except PlatonicError as err:
            raise PlatonicError(f"{self.path}: {err}") from err
        threshold = OutlierThreshold(self.n, layer_dims, exact=exact)
        finite = torch.ones(self.num_layers, dtype=torch.bool)

        def inspect(chunk: torch.Tensor) -> None:
            finite.logical_and_(torch.isfinite(chunk).flatten(2).all(dim=2).all(dim=0))
            if bool(finite.all()):
                threshold.add(chunk)

        check_content(self.path, meta, streamed_sha256(self.path, inspect))
        if not bool(finite.all()):
            bad = torch.nonzero(~finite).flatten().tolist()
            raise PlatonicError(f"{self.path}: NaN or inf in layer(s) {bad}")
        if threshold.needs_refine:
            for chunk in self._row_chunks():
                threshold.refine(chunk)
        self.threshold = threshold.value()

    def _shape(self) -> tuple[int, int, int]:
        with safe_open(str(self.path), framework="pt") as f:
            if FEATS not in f.keys():  # noqa: SIM118
                raise PlatonicError(f"{self.path}: no '{FEATS}' tensor")
            part = f.get_slice(FEATS)
            shape, dtype = tuple(part.get_shape()), slice_dtype(part)
        if len(shape) != 3 or 0 in shape:
            raise PlatonicError(f"{self.path}: features must be a non-empty [N, layers, dim] "
                                f"tensor, got shape {shape}")
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            raise PlatonicError(f"{self.path}: features must be floating point, got {dtype}")
        return shape

    def _row_chunks(self) -> Iterable[torch.Tensor]:
        rows = chunk_rows((self.n, self.num_layers, self.width))
        for start in range(0, self.n, rows):
            yield read_tensor(self.path, FEATS, (slice(start, start + rows),)).clone()

    def layer(self, index: int) -> torch.Tensor:
        raw = read_layer(self.path, index)
        x = raw.to(device=self.device, dtype=torch.float32, copy=True)
        return x if self.threshold is None else x.clamp_(-self.threshold, self.threshold)

    def to(self, device: str | torch.device) -> FileLayers:
        moved = object.__new__(FileLayers)
        moved.__dict__.update(self.__dict__, device=torch.device(device))
        return moved


def open_layers(path: str | os.PathLike, device: str | torch.device = "cpu",
                exact: bool = False) -> LayerSource:
    """A feature file's prepared features, layer by layer: streamed from our safetensors files,
    in memory for the original's `.pt` files (which cannot be read in parts)."""
    path = Path(path)
    if not path.exists():
        raise PlatonicError(f"{path}: feature file not found")
    if path.suffix != ".pt":
        return FileLayers(path, device, exact)
    loaded = load_features(path, device)
    return TensorLayers(metrics.remove_outliers(loaded.feats.float(), QUANTILE, exact))
