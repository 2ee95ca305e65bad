"""Best alignment over all layer pairs, computed once per layer instead of once per pair.

A model's features [N, L, D] give L + 1 candidates: each layer, and all layers concatenated
(index -1). Every metric here depends on a candidate only through its row-normalised Gram
matrix, so each model is reduced once to `LayerKernels`: the [L + 1, N, N] stack of those Gram
matrices, the concatenation's obtained from the per-layer ones (sum, then normalise), never by
materialising the concatenated features. kNN lists (top-k, not a full sort) and centred kernels
are derived once per candidate, and the whole (Lx + 1) x (Ly + 1) grid of scores comes from
batched products. `exhaustive_search` is the plain per-pair loop of the original, kept as the
oracle the tests compare against.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from functools import cached_property
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from platonic.core import metrics
from platonic.errors import PlatonicError
from platonic.io.features import load_features

GridFn = Callable[..., np.ndarray]
GRID_METRICS: dict[str, GridFn] = {}


def register_grid(name: str) -> Callable[[GridFn], GridFn]:
    """Register the fast all-pairs form of a metric already in `metrics.METRICS`."""

    def add(fn: GridFn) -> GridFn:
        GRID_METRICS[name] = fn
        return fn

    return add


def prepare_features(feats: torch.Tensor, q: float = 0.95, exact: bool = False,
                     layer_dims: list[int] | None = None) -> torch.Tensor:
    """Clamp outliers to ±(q-quantile of |x|) in float32, on the tensor's own device; with
    `layer_dims` (true widths of zero-padded layers) the quantile ignores the padding."""
    return metrics.remove_outliers(feats.float(), q=q, exact=exact, layer_dims=layer_dims)


def check_layered(feats: Any, name: str) -> None:
    """A non-empty [N, layers, dim] tensor of finite numbers; else name the first bad entry."""
    if not isinstance(feats, torch.Tensor) or feats.ndim != 3 or feats.numel() == 0:
        shape = tuple(feats.shape) if isinstance(feats, torch.Tensor) else type(feats).__name__
        raise PlatonicError(f"{name} must be a non-empty [N, layers, dim] tensor, got {shape}")
    finite = torch.isfinite(feats).all(dim=2)
    if not bool(finite.all()):
        sample, layer = (int(v) for v in torch.nonzero(~finite)[0])
        raise PlatonicError(f"{name} hold NaN or inf (first at sample {sample}, layer {layer})")


def candidate(feats: torch.Tensor, index: int, normalize: bool = True) -> torch.Tensor:
    """Features of one candidate: layer `index`, or all layers concatenated for -1."""
    x = feats.flatten(1, 2) if index == -1 else feats[:, index, :]
    return F.normalize(x, p=2, dim=-1) if normalize else x


class LayerKernels:
    """Per-candidate Gram matrices of one model, index 0 = concatenation, r = layer r - 1."""

    def __init__(self, feats: torch.Tensor, normalize: bool = True):
        check_layered(feats, "features")
        self.feats = feats
        self.normalize = normalize
        self.n = feats.shape[0]
        self.grams = self._grams()
        self._knn: dict[tuple[int, bool], torch.Tensor] = {}

    def __len__(self) -> int:
        return self.grams.shape[0]

    def to(self, device: str | torch.device) -> LayerKernels:
        """The same kernels (and cached neighbour lists) on `device`, without recomputing them."""
        moved = object.__new__(LayerKernels)
        moved.__dict__.update(self.__dict__)
        moved.feats, moved.grams = self.feats.to(device), self.grams.to(device)
        moved._knn = {key: knn.to(device) for key, knn in self._knn.items()}
        moved.__dict__.pop("candidates", None)
        return moved

    def _grams(self) -> torch.Tensor:
        n, num_layers, _ = self.feats.shape
        grams = torch.empty(num_layers + 1, n, n, dtype=self.feats.dtype, device=self.feats.device)
        for layer in range(num_layers):
            x = self.feats[:, layer, :]
            torch.mm(x, x.T, out=grams[layer + 1])
        torch.sum(grams[1:], dim=0, out=grams[0])
        if self.normalize:
            norms = grams.diagonal(dim1=1, dim2=2).sqrt().clamp_min(1e-12)
            grams /= norms[:, :, None]
            grams /= norms[:, None, :]
        return grams

    def knn(self, topk: int, exclude_self: bool = True) -> torch.Tensor:
        """[L + 1, N, topk] neighbour indices by inner product, nearest first."""
        key = (topk, exclude_self)
        if key not in self._knn:
            out = torch.empty(len(self), self.n, topk, dtype=torch.long, device=self.grams.device)
            metrics.check_topk(topk, self.n)
            for c in range(len(self)):
                sim = self.grams[c]
                diagonal = sim.diagonal().clone()
                try:  # in place, always restored: no copy of the N x N matrix
                    if exclude_self:
                        sim.fill_diagonal_(float("-inf"))
                    torch.topk(sim, topk, dim=1, out=(torch.empty_like(sim[:, :topk]), out[c]))
                finally:
                    sim.diagonal().copy_(diagonal)
            self._knn[key] = out
        return self._knn[key]

    def membership(self, topk: int, c: int, exclude_self: bool = True) -> torch.Tensor:
        """Boolean [N, N]: (i, j) True when j is among candidate c's neighbours of i."""
        return metrics.knn_membership(self.knn(topk, exclude_self)[c], self.n)

    def kernel(self, c: int, kernel_metric: str = "ip", rbf_sigma: float = 1.0) -> torch.Tensor:
        K = self.grams[c]
        if kernel_metric == "ip":
            return K
        if kernel_metric == "rbf":
            sq_norms = K.diagonal()
            sq_dist = (sq_norms[:, None] + sq_norms[None, :] - 2 * K).clamp_min(0)
            return torch.exp(-sq_dist / (2 * rbf_sigma**2))
        raise PlatonicError(f"unknown kernel_metric {kernel_metric!r}; use 'ip' or 'rbf'")

    @cached_property
    def candidates(self) -> list[torch.Tensor]:
        """Materialised candidate features, for metrics without a kernel form (e.g. svcca)."""
        return [candidate(self.feats, c - 1, self.normalize) for c in range(len(self))]


def _knn_grid(kx: LayerKernels, ky: LayerKernels, topk: int,
              pair_score: Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor]) -> np.ndarray:
    """Fill the grid column by column; `pair_score(knn_x [Lx+1,N,k], knn_yb [N,k], b)` gives
    the scores of every x candidate against y candidate b."""
    metrics.check_topk(topk, kx.n)
    grid = np.empty((len(kx), len(ky)))
    knn_y = ky.knn(topk)
    for b in range(len(ky)):
        grid[:, b] = pair_score(kx.knn(topk), knn_y[b], b).double().cpu().numpy()
    return grid


def flat_positions(knn: torch.Tensor) -> torch.Tensor:
    """Indices of the entries (i, knn[..., i, t]) in a flattened N x N matrix."""
    n = knn.shape[-2]
    return knn + torch.arange(n, device=knn.device).unsqueeze(1) * n


@register_grid("mutual_knn")
def mutual_knn_grid(kx: LayerKernels, ky: LayerKernels, topk: int) -> np.ndarray:
    flat_x = flat_positions(kx.knn(topk))

    def score(knn_x: torch.Tensor, knn_yb: torch.Tensor, b: int) -> torch.Tensor:
        hits = metrics.knn_membership(knn_yb, ky.n).view(-1)[flat_x]
        return hits.flatten(1).sum(dim=1).double() / knn_yb.numel()

    return _knn_grid(kx, ky, topk, score)


@register_grid("cycle_knn")
def cycle_knn_grid(kx: LayerKernels, ky: LayerKernels, topk: int) -> np.ndarray:
    members_t = torch.stack([kx.membership(topk, a).T for a in range(len(kx))]).flatten(1)

    def score(knn_x: torch.Tensor, knn_yb: torch.Tensor, b: int) -> torch.Tensor:
        back = members_t[:, flat_positions(knn_yb)]
        return back.any(dim=2).float().mean(dim=1)

    return _knn_grid(kx, ky, topk, score)


@register_grid("lcs_knn")
def lcs_knn_grid(kx: LayerKernels, ky: LayerKernels, topk: int) -> np.ndarray:
    def score(knn_x: torch.Tensor, knn_yb: torch.Tensor, b: int) -> torch.Tensor:
        return metrics.lcs_lengths(knn_x, knn_yb.expand_as(knn_x)).float().mean(dim=1)

    return _knn_grid(kx, ky, topk, score)


@register_grid("edit_distance_knn")
def edit_distance_knn_grid(kx: LayerKernels, ky: LayerKernels, topk: int) -> np.ndarray:
    def score(knn_x: torch.Tensor, knn_yb: torch.Tensor, b: int) -> torch.Tensor:
        dist = metrics.edit_distances(knn_x, knn_yb.expand_as(knn_x)).float().mean(dim=1)
        return 1.0 - dist.double() / topk

    return _knn_grid(kx, ky, topk, score)


def centre_kernel_(K: torch.Tensor, unbiased: bool) -> torch.Tensor:
    """Centre a kernel matrix in place: H K H for the biased HSIC, the U-centred kernel (zero
    diagonal) for the unbiased one.

    With these, HSIC_biased(K, L) = <HKH, HLH> and HSIC_unbiased(K, L) = <K_U, L_U> / (m (m-3))
    (Székely & Rizzo 2014), so a whole grid of HSIC values is one matrix product, and centring
    first avoids the cancellation of the large terms of the unbiased estimator.
    """
    m = K.shape[0]
    if unbiased:
        K.fill_diagonal_(0)
    row, col, total = K.sum(dim=1), K.sum(dim=0), K.sum()
    if unbiased:
        K.sub_(row[:, None] / (m - 2)).sub_(col[None, :] / (m - 2))
        return K.add_(total / ((m - 1) * (m - 2))).fill_diagonal_(0)
    return K.sub_(row[:, None] / m).sub_(col[None, :] / m).add_(total / m**2)


def _centred_stack(kernels: LayerKernels, unbiased: bool, kernel_metric: str,
                   rbf_sigma: float) -> torch.Tensor:
    """[L + 1, N * N]: every candidate's centred kernel, flattened."""
    n = kernels.n
    out = torch.empty(len(kernels), n, n, dtype=kernels.grams.dtype, device=kernels.grams.device)
    for c in range(len(kernels)):
        centre_kernel_(out[c].copy_(kernels.kernel(c, kernel_metric, rbf_sigma)), unbiased)
    return out.view(len(kernels), n * n)


def inner_products(a: torch.Tensor, b: torch.Tensor | None = None, chunk: int = 1 << 14) -> torch.Tensor:
    """a @ b.T (or each row's squared norm when b is None) in float64, from float32 products
    over chunks of columns: one float32 sum over N * N terms would lose about 1e-5."""
    out = torch.zeros(a.shape[0], *(() if b is None else (b.shape[0],)), dtype=torch.float64,
                      device=a.device)
    for start in range(0, a.shape[1], chunk):
        block = a[:, start:start + chunk]
        out += (block * block).sum(dim=1) if b is None else block @ b[:, start:start + chunk].T
    return out


@register_grid("cka")
def cka_grid(kx: LayerKernels, ky: LayerKernels, kernel_metric: str = "ip",
             rbf_sigma: float = 1.0, unbiased: bool = False) -> np.ndarray:
    cx = _centred_stack(kx, unbiased, kernel_metric.lower(), rbf_sigma)
    cy = _centred_stack(ky, unbiased, kernel_metric.lower(), rbf_sigma)
    cross = inner_products(cx, cy)
    self_x, self_y = inner_products(cx), inner_products(cy)
    scale = 1.0 / (kx.n * (kx.n - 3)) if unbiased else 1.0
    denom = torch.sqrt(torch.outer(self_x, self_y)) * scale + 1e-6
    return (cross * scale / denom).cpu().numpy()


@register_grid("unbiased_cka")
def unbiased_cka_grid(kx: LayerKernels, ky: LayerKernels, kernel_metric: str = "ip",
                      rbf_sigma: float = 1.0) -> np.ndarray:
    return cka_grid(kx, ky, kernel_metric=kernel_metric, rbf_sigma=rbf_sigma, unbiased=True)


def _masked_hsic(idx: torch.Tensor, mask: torch.Tensor, mask_t: torch.Tensor,
                 k_ij: torch.Tensor, l_ij: torch.Tensor, l_ji: torch.Tensor,
                 unbiased: bool) -> torch.Tensor:
    """HSIC of the masked kernels A = mask ∘ K, B = mask ∘ L from their entries at the
    sparse positions (i, idx[i, t]): `mask`/`mask_t` say whether (i, j) and (j, i) are in the
    mask, `k_ij`, `l_ij`, `l_ji` are K[i, j], L[i, j], L[j, i] there. No N x N tensor is made."""
    n = idx.shape[0]
    a, b = k_ij * mask, l_ij * mask
    a_dot_bt = (a * l_ji * mask_t).sum()
    a_col = torch.zeros(n, dtype=a.dtype, device=a.device).scatter_add_(0, idx.flatten(), a.flatten())
    b_col = torch.zeros(n, dtype=b.dtype, device=b.device).scatter_add_(0, idx.flatten(), b.flatten())
    a_row, b_row = a.sum(dim=1), b.sum(dim=1)
    if unbiased:  # the mask excludes the diagonal, so A and B already have a zero diagonal
        return (a_dot_bt + a.sum() * b.sum() / ((n - 1) * (n - 2))
                - 2 * (a_col @ b_row) / (n - 2)) / (n * (n - 3))
    return a_dot_bt - (a_row @ b_col + a_col @ b_row) / n + a.sum() * b.sum() / n**2


@register_grid("cknna")
def cknna_grid(kx: LayerKernels, ky: LayerKernels, topk: int | None = None,
               distance_agnostic: bool = False, unbiased: bool = True) -> np.ndarray:
    topk = kx.n - 1 if topk is None else topk
    metrics.check_topk(topk, kx.n)
    if topk < 2:
        raise PlatonicError("cknna needs topk >= 2")
    exclude = unbiased

    def similarity(ka: LayerKernels, a: int, kb: LayerKernels, b: int,
                   member_b: torch.Tensor, member_b_t: torch.Tensor,
                   member_a_t: torch.Tensor) -> torch.Tensor:
        idx = ka.knn(topk, exclude)[a]
        mask = member_b.gather(1, idx)
        if distance_agnostic:
            return mask.sum().double()
        mask_t = member_a_t.gather(1, idx) & member_b_t.gather(1, idx)
        K, L = ka.grams[a], kb.grams[b]
        return _masked_hsic(idx, mask, mask_t, K.gather(1, idx), L.gather(1, idx),
                            L.T.gather(1, idx), unbiased).double()

    members_x = [kx.membership(topk, a, exclude) for a in range(len(kx))]
    members_x_t = [m.T for m in members_x]
    self_x = [similarity(kx, a, kx, a, members_x[a], members_x_t[a], members_x_t[a])
              for a in range(len(kx))]
    grid = np.empty((len(kx), len(ky)))
    for b in range(len(ky)):
        member_b = ky.membership(topk, b, exclude)
        member_b_t = member_b.T
        self_y = similarity(ky, b, ky, b, member_b, member_b_t, member_b_t)
        for a in range(len(kx)):
            cross = similarity(kx, a, ky, b, member_b, member_b_t, members_x_t[a])
            grid[a, b] = cross.item() / (torch.sqrt(self_x[a] * self_y) + 1e-6).item()
    return grid


@register_grid("svcca")
def svcca_grid(kx: LayerKernels, ky: LayerKernels, cca_dim: int = 10) -> np.ndarray:
    reduced_x = [metrics.svcca_reduce(c, cca_dim) for c in kx.candidates]
    reduced_y = [metrics.svcca_reduce(c, cca_dim) for c in ky.candidates]
    return np.array([[metrics.svcca_from_reduced(u, v, cca_dim) for v in reduced_y]
                     for u in reduced_x])


def load_kernels(path: str | os.PathLike, device: str | torch.device = "cpu",
                 precise: bool = False, normalize: bool = True) -> LayerKernels:
    """One feature file (checked on load), outliers clamped as the measure stage does, as kernels."""
    loaded = load_features(path, device=device)
    try:
        feats = prepare_features(loaded.feats, exact=precise, layer_dims=loaded.meta.get("layer_dims"))
    except PlatonicError as err:
        raise PlatonicError(f"{path}: {err}") from err
    return LayerKernels(feats, normalize)


def pairwise_grid(kx: LayerKernels, ky: LayerKernels, metric: str, **kwargs: Any) -> np.ndarray:
    """Any registered metric without a fast form: its own function on every candidate pair."""
    fn = metrics.get_metric(metric).fn
    return np.array([[fn(x, y, **kwargs) for y in ky.candidates] for x in kx.candidates])


def metric_kwargs(metric: str, topk: int | None, extra: dict[str, Any]) -> dict[str, Any]:
    """The keyword arguments the original's search passed: `topk` only to kNN-style metrics."""
    spec = metrics.get_metric(metric)
    return {"topk": topk, **extra} if spec.uses_topk else dict(extra)


def score_grid(kx: LayerKernels, ky: LayerKernels, metric: str = "mutual_knn",
               topk: int | None = 10, **extra: Any) -> np.ndarray:
    """Scores of every candidate pair, [Lx + 1, Ly + 1]; index 0 is the concatenation."""
    if kx.n != ky.n:
        raise PlatonicError(f"x has {kx.n} samples but y has {ky.n}")
    kwargs = metric_kwargs(metric, topk, extra)
    if kwargs.get("topk") is not None:
        metrics.check_topk(kwargs["topk"], kx.n)
    if metric in GRID_METRICS:
        return GRID_METRICS[metric](kx, ky, **kwargs)
    return pairwise_grid(kx, ky, metric, **kwargs)


def best_of_grid(grid: np.ndarray) -> tuple[float, tuple[int, int] | None]:
    """The original loop's choice: the first maximum in (i, j) order, if above 0.

    A grid without a positive finite value has no best pair: (NaN, None), an undefined score
    (the original reported 0.0, which plots and means then took for a real score).
    """
    finite = np.where(np.isfinite(grid), grid, -np.inf)
    flat = int(np.argmax(finite))
    value = float(finite.flat[flat])
    if not value > 0:
        return math.nan, None
    a, b = np.unravel_index(flat, grid.shape)
    return value, (int(a) - 1, int(b) - 1)


def compute_score(x_feats: torch.Tensor, y_feats: torch.Tensor, metric: str = "mutual_knn",
                  topk: int | None = 10, normalize: bool = True, return_grid: bool = False,
                  **metric_kw: Any) -> tuple[Any, ...]:
    """Best score over all layer pairs and its (x layer, y layer), -1 meaning all layers.

    Same result as the original exhaustive loop, except that a grid without a positive finite
    value gives (NaN, None), not (0.0, None); with `return_grid=True` also the
    [Lx + 1, Ly + 1] grid of every pair's score (index 0 = concatenation).
    """
    check_layered(x_feats, "x_feats")
    check_layered(y_feats, "y_feats")
    if x_feats.shape[0] != y_feats.shape[0]:
        raise PlatonicError(f"x_feats has {x_feats.shape[0]} samples but y_feats has {y_feats.shape[0]}")
    metrics.get_metric(metric)
    grid = score_grid(LayerKernels(x_feats, normalize), LayerKernels(y_feats, normalize),
                      metric, topk, **metric_kw)
    score, indices = best_of_grid(grid)
    return (score, indices, grid) if return_grid else (score, indices)


def exhaustive_search(x_feats: torch.Tensor, y_feats: torch.Tensor, metric: str = "mutual_knn",
                      topk: int | None = 10, normalize: bool = True,
                      **metric_kw: Any) -> tuple[float, tuple[int, int] | None, np.ndarray]:
    """The original per-pair loop (every pair recomputed from the features): the test oracle."""
    kwargs = metric_kwargs(metric, topk, metric_kw)
    fn = metrics.get_metric(metric).fn
    grid = np.empty((x_feats.shape[1] + 1, y_feats.shape[1] + 1))
    best, best_indices = 0.0, None
    for i in range(-1, x_feats.shape[1]):
        x = candidate(x_feats, i, normalize)
        for j in range(-1, y_feats.shape[1]):
            score = fn(x, candidate(y_feats, j, normalize), **kwargs)
            grid[i + 1, j + 1] = score
            if score > best:
                best, best_indices = score, (i, j)
    return best, best_indices, grid
