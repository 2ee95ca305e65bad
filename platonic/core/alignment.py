"""Best alignment over all layer pairs, computed once per layer instead of once per pair.

A model's features [N, L, D] give L + 1 candidates: each layer, and all layers concatenated
(index -1). Every metric here depends on a candidate only through its row-normalised Gram matrix
G (the concatenation's is the sum of the layers', normalised: the features are never
concatenated). Each model is reduced to `LayerKernels`, which reads its features one layer at a
time (`platonic.core.layers`) and keeps what the metrics need per candidate, never an N x N matrix:
  - kNN lists [L + 1, N, k] with their similarities, from row blocks of G
    (`platonic.core.neighbours`), for mutual_knn, cycle_knn, lcs_knn, edit_distance_knn and cknna;
  - HSIC terms per candidate, from feature-space products or panels of centred kernel rows
    (`platonic.core.hsic`), for cka and unbiased_cka.
The whole (Lx + 1) x (Ly + 1) grid of scores then comes from the lists or the products.
`exhaustive_search` is the plain per-pair loop of the original, kept as the oracle the tests
compare against.

Memory model (float32; N samples, L layers of width D per model, k neighbours):
  - with N k and the layers: neighbour lists with their similarities, 12 (L + 1) N k bytes per
    model and k (N = 65,536, 13 layers, k = 10: 110 MB); their pair table, at most
    (L + 1)^2 N k / 8 bytes; list lookups at most 256 MiB at a time; for cknna, one model's
    kernel at the other's list positions, 4 (Lx + 1)(Ly + 1) N k bytes;
  - with N D: one layer of features [N, D] at a time when read from a file (a tensor given in
    memory stays whole);
  - with N alone, capped by budgets: one block of Gram rows [B, N] (`neighbours.BLOCK_BYTES`,
    256 MiB), the concatenation's panel [P, N] and the CKA family's panel of kernel rows of
    every candidate of both models (`neighbours.PANEL_BYTES`, 1 GiB); row norms, 4 (L + 1) N;
  - with D_x D_y: the feature-space product of one pair of layers, [2 D_x, 2 D_y] float64;
  - never with N^2: the dense [L + 1, N, N] stack is built only when asked for
    (`LayerKernels.grams`); the calibration keeps centred kernels whole only under
    `hsic.DENSE_BYTES` (1 GiB), where a permutation is then an indexing.
Work stays O(N^2 * sum of layer widths) for exact neighbours and kernel rows, O(N D_x D_y) per
layer pair in feature space: memory, not work, stops being the wall.
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

from platonic.core import hsic, metrics
from platonic.core.layers import LayerSource, TensorLayers, open_layers
from platonic.core.neighbours import (
    MemberTable,
    Neighbours,
    add_layers,
    gram_diagonals,
    neighbour_lists,
    one_cpu_thread,
    own_rows,
    row_entries,
    row_norms,
)
from platonic.errors import PlatonicError

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
    """One model's candidates for the layer search, index 0 = concatenation, r = layer r - 1.

    Built from prepared features: a [N, L, D] tensor, or a `LayerSource` (a feature file read
    layer by layer). What the metrics need is computed on first use and kept: row norms,
    neighbour lists per (k, self excluded), HSIC terms (`memo`).
    """

    permutation_of: tuple[LayerKernels, torch.Tensor] | None = None

    def __init__(self, feats: torch.Tensor | LayerSource, normalize: bool = True):
        if isinstance(feats, torch.Tensor):
            check_layered(feats, "features")
            feats = TensorLayers(feats)
        self.source = feats
        self.normalize = normalize
        self.n = feats.n
        self._lists: dict[tuple[int, bool], Neighbours] = {}
        self._diagonals: torch.Tensor | None = None
        self._norms: torch.Tensor | None = None
        self.memo: dict[Any, Any] = {}

    def __len__(self) -> int:
        return self.source.num_layers + 1

    @property
    def feats(self) -> torch.Tensor:
        """All features [N, L, D] in memory (for metrics without a layer-by-layer form)."""
        return self.source.whole()

    def to(self, device: str | torch.device) -> LayerKernels:
        """The same kernels (and what they keep) on `device`, without recomputing them."""
        moved = object.__new__(type(self))
        moved.__dict__.update(self.__dict__)
        moved.source = self.source.to(device)
        moved._lists = {key: lists.to(device) for key, lists in self._lists.items()}
        moved.memo = {}
        for name in ("_diagonals", "_norms", "grams"):
            if self.__dict__.get(name) is not None:
                moved.__dict__[name] = self.__dict__[name].to(device)
        moved.__dict__.pop("candidates", None)
        return moved

    def known_diagonals(self) -> torch.Tensor | None:
        return self._diagonals

    def learn_diagonals(self, diagonals: torch.Tensor) -> None:
        """Keep Gram diagonals that a pass over all rows computed anyway."""
        if self._diagonals is None:
            self._diagonals = diagonals

    @property
    def diagonals(self) -> torch.Tensor:
        """[L + 1, N]: each candidate's Gram diagonal (squared row norms) before normalising."""
        if self._diagonals is None:
            self._diagonals = gram_diagonals(self.source)
        return self._diagonals

    @property
    def norms(self) -> torch.Tensor | None:
        """[L + 1, N]: each candidate's row norms, None when rows are not normalised."""
        if self.normalize and self._norms is None:
            self._norms = row_norms(self.diagonals)
        return self._norms

    def neighbours(self, topk: int, exclude_self: bool = True) -> Neighbours:
        """Every candidate's top-k neighbour lists by similarity, nearest first."""
        key = (topk, exclude_self)
        if key not in self._lists:
            metrics.check_topk(topk, self.n)
            lists, diagonals = neighbour_lists(self.source, self.normalize, topk, exclude_self,
                                               self.known_diagonals())
            self._lists[key] = lists
            if diagonals is not None:
                self.learn_diagonals(diagonals)
        return self._lists[key]

    def knn(self, topk: int, exclude_self: bool = True) -> torch.Tensor:
        """[L + 1, N, topk] neighbour indices by inner product, nearest first."""
        return self.neighbours(topk, exclude_self).indices

    def members(self, topk: int, exclude_self: bool = True) -> MemberTable:
        """The pairs of the neighbour lists as a lookup table (kept: the null reuses it)."""
        key = ("members", topk, exclude_self)
        if key not in self.memo:
            lists = self.knn(topk, exclude_self)
            with one_cpu_thread(lists.device):
                self.memo[key] = MemberTable(lists)
        return self.memo[key]

    def entries(self, cols: torch.Tensor) -> torch.Tensor:
        """[L + 1, N, M]: every candidate's normalised Gram entries (i, cols[i, t])."""
        return row_entries(self.source, self.norms, cols)

    @cached_property
    def grams(self) -> torch.Tensor:
        """The dense [L + 1, N, N] stack of normalised Gram matrices: never used by the search,
        built only when asked for (inspection, tests)."""
        feats = self.feats
        n, num_layers, _ = feats.shape
        grams = torch.empty(num_layers + 1, n, n, dtype=feats.dtype, device=feats.device)
        for layer in range(num_layers):
            x = feats[:, layer, :]
            torch.mm(x, x.T, out=grams[layer + 1])
        grams[0] = add_layers(grams[1:])
        if self.normalize:
            norms = grams.diagonal(dim1=1, dim2=2).sqrt().clamp_min(1e-12)
            grams /= norms[:, :, None]
            grams /= norms[:, None, :]
        return grams

    @cached_property
    def candidates(self) -> list[torch.Tensor]:
        """Materialised candidate features, for metrics without a kernel form (e.g. svcca)."""
        return [self.candidate(c) for c in range(len(self))]

    def candidate(self, c: int) -> torch.Tensor:
        """Candidate c's features [N, D] (row-normalised when `normalize`); c = 0 concatenates."""
        layers = range(self.source.num_layers) if c == 0 else [c - 1]
        x = torch.cat([self.source.layer(layer) for layer in layers], dim=1)
        return F.normalize(x, p=2, dim=-1) if self.normalize else x


def _knn_grid(kx: LayerKernels, ky: LayerKernels, topk: int,
              pair_score: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> np.ndarray:
    """Fill the grid column by column; `pair_score(knn_x [Lx+1,N,k], knn_yb [N,k])` gives the
    scores of every x candidate against y candidate b."""
    metrics.check_topk(topk, kx.n)
    grid = np.empty((len(kx), len(ky)))
    knn_x, knn_y = kx.knn(topk), ky.knn(topk)
    with one_cpu_thread(knn_x.device):
        for b in range(len(ky)):
            grid[:, b] = pair_score(knn_x, knn_y[b]).double().cpu().numpy()
    return grid


def mutual_counts(members_x: MemberTable, knn_y: torch.Tensor,
                  inverse: torch.Tensor | None = None) -> torch.Tensor:
    """[Lx + 1, Ly + 1] int64: Σ_i |kNN_x,a(i) ∩ kNN_y,b(i)| for every candidate pair, from
    lookups of y's lists in x's table (a few y candidates at a time: 256 MiB of hits at most).

    `inverse`: of a permutation pi of y's rows; the counts are then those of y's permuted lists
    (row i holds pi^-1 of row pi(i)'s list), summed over j = pi(i): each pair (j, c) of y's
    lists is looked up as (pi^-1(j), pi^-1(c)), so no list is permuted."""
    counts = torch.empty(members_x.count, len(knn_y), dtype=torch.int64, device=knn_y.device)
    step = max(1, (256 << 20) // (knn_y[0].numel() * members_x.count))
    rows = torch.arange(knn_y.shape[1], device=knn_y.device)[:, None]
    if inverse is not None:
        rows = inverse[rows]
    for start in range(0, len(knn_y), step):
        cols = knn_y[start:start + step]
        if inverse is not None:
            cols = inverse[cols]
        counts[:, start:start + step] = members_x.pair_counts(rows, cols)
    return counts


def cycle_hits(members_x: MemberTable, knn_yb: torch.Tensor) -> torch.Tensor:
    """[N, Lx + 1] bool: whether i is among the x-neighbours of one of its y-neighbours."""
    return members_x.lookup(knn_yb, own_rows(knn_yb)).amax(dim=1).bool()


@register_grid("mutual_knn")
def mutual_knn_grid(kx: LayerKernels, ky: LayerKernels, topk: int) -> np.ndarray:
    metrics.check_topk(topk, kx.n)
    members_x, knn_y = kx.members(topk), ky.knn(topk)
    with one_cpu_thread(knn_y.device):
        counts = mutual_counts(members_x, knn_y)
    return (counts.double() / (kx.n * topk)).cpu().numpy()


@register_grid("cycle_knn")
def cycle_knn_grid(kx: LayerKernels, ky: LayerKernels, topk: int) -> np.ndarray:
    metrics.check_topk(topk, kx.n)
    members_x = kx.members(topk)
    return _knn_grid(kx, ky, topk,
                     lambda knn_x, knn_yb: cycle_hits(members_x, knn_yb).float().mean(dim=0))


@register_grid("lcs_knn")
def lcs_knn_grid(kx: LayerKernels, ky: LayerKernels, topk: int) -> np.ndarray:
    def score(knn_x: torch.Tensor, knn_yb: torch.Tensor) -> torch.Tensor:
        return metrics.lcs_lengths(knn_x, knn_yb.expand_as(knn_x)).float().mean(dim=1)

    return _knn_grid(kx, ky, topk, score)


@register_grid("edit_distance_knn")
def edit_distance_knn_grid(kx: LayerKernels, ky: LayerKernels, topk: int) -> np.ndarray:
    def score(knn_x: torch.Tensor, knn_yb: torch.Tensor) -> torch.Tensor:
        dist = metrics.edit_distances(knn_x, knn_yb.expand_as(knn_x)).float().mean(dim=1)
        return 1.0 - dist.double() / topk

    return _knn_grid(kx, ky, topk, score)


@register_grid("cka")
def cka_grid(kx: LayerKernels, ky: LayerKernels, kernel_metric: str = "ip",
             rbf_sigma: float = 1.0, unbiased: bool = False) -> np.ndarray:
    return hsic.cka_grid(kx, ky, hsic.Kind.of(unbiased, kernel_metric, rbf_sigma))


@register_grid("unbiased_cka")
def unbiased_cka_grid(kx: LayerKernels, ky: LayerKernels, kernel_metric: str = "ip",
                      rbf_sigma: float = 1.0) -> np.ndarray:
    return cka_grid(kx, ky, kernel_metric=kernel_metric, rbf_sigma=rbf_sigma, unbiased=True)


def _masked_hsic(idx: torch.Tensor, mask: torch.Tensor, mask_t: torch.Tensor,
                 k_ij: torch.Tensor, l_ij: torch.Tensor, l_ji: torch.Tensor,
                 unbiased: bool) -> torch.Tensor:
    """HSIC of the masked kernels A = mask ∘ K, B = mask ∘ L from their entries at the
    sparse positions (i, idx[i, t]), for a batch of B masks and kernels L at once (last axis):
    `mask`/`mask_t` [N, k, B] say whether (i, j) and (j, i) are in the mask, `k_ij` [N, k] and
    `l_ij`, `l_ji` [N, k, B] are K[i, j], L[i, j], L[j, i] there. No N x N tensor is made."""
    n = idx.shape[0]
    a, b = k_ij.unsqueeze(-1) * mask, l_ij * mask
    a_dot_bt = (a * l_ji * mask_t).sum(dim=(0, 1))
    flat = idx.flatten()
    a_col = torch.zeros(n, a.shape[-1], dtype=a.dtype, device=a.device).index_add_(0, flat, a.flatten(0, 1))
    b_col = torch.zeros(n, b.shape[-1], dtype=b.dtype, device=b.device).index_add_(0, flat, b.flatten(0, 1))
    a_row, b_row = a.sum(dim=1), b.sum(dim=1)
    a_sum, b_sum = a.sum(dim=(0, 1)), b.sum(dim=(0, 1))
    if unbiased:  # the mask excludes the diagonal, so A and B already have a zero diagonal
        return (a_dot_bt + a_sum * b_sum / ((n - 1) * (n - 2))
                - 2 * (a_col * b_row).sum(dim=0) / (n - 2)) / (n * (n - 3))
    return a_dot_bt - ((a_row * b_col).sum(dim=0) + (a_col * b_row).sum(dim=0)) / n + a_sum * b_sum / n**2


@register_grid("cknna")
def cknna_grid(kx: LayerKernels, ky: LayerKernels, topk: int | None = None,
               distance_agnostic: bool = False, unbiased: bool = True) -> np.ndarray:
    """CKNNA from the neighbour lists: the mutual-neighbour mask is sparse (N k entries), the
    kernels are needed only there (own lists' similarities, the other side's entries there)."""
    topk = kx.n - 1 if topk is None else topk
    metrics.check_topk(topk, kx.n)
    if topk < 2:
        raise PlatonicError("cknna needs topk >= 2")
    lists_x, lists_y = kx.neighbours(topk, unbiased), ky.neighbours(topk, unbiased)
    # y's kernels at the positions of every x candidate's lists: [Ly + 1, N, Lx + 1, k]
    at_x = None if distance_agnostic else ky.entries(
        lists_x.indices.permute(1, 0, 2).flatten(1)).view(len(ky), kx.n, len(kx), topk)
    members_x, members_y = kx.members(topk, unbiased), ky.members(topk, unbiased)
    with one_cpu_thread(lists_x.indices.device):
        return _cknna_from_lists(lists_x, lists_y, members_x, members_y, at_x,
                                 distance_agnostic, unbiased)


def _cknna_from_lists(lists_x: Neighbours, lists_y: Neighbours, members_x: MemberTable,
                      members_y: MemberTable, at_x: torch.Tensor | None, distance_agnostic: bool,
                      unbiased: bool) -> np.ndarray:

    def similarity(idx: torch.Tensor, mask: torch.Tensor, mask_t: torch.Tensor,
                   k_ij: torch.Tensor, l_ij: torch.Tensor | None) -> torch.Tensor:
        """[B]: the masked HSIC (or mask size) for each of B masks and kernels (last axis)."""
        if distance_agnostic:
            return mask.sum(dim=(0, 1)).double()
        return _masked_hsic(idx, mask, mask_t, k_ij, l_ij, l_ij, unbiased).double()

    def self_similarity(lists: Neighbours, members: MemberTable) -> torch.Tensor:
        rows = own_rows(lists.indices).expand_as(lists.indices)
        back = members.lookup(lists.indices, rows)  # [C, N, k, C]: (j, i) in each's lists
        out = []
        for c, idx in enumerate(lists.indices):
            mask = torch.ones(*idx.shape, 1, dtype=torch.bool, device=idx.device)
            values = lists.values[c].unsqueeze(-1)
            out.append(similarity(idx, mask, back[c, ..., c:c + 1].bool(), lists.values[c], values))
        return torch.cat(out)

    self_x, self_y = self_similarity(lists_x, members_x), self_similarity(lists_y, members_y)
    grid = torch.empty(len(lists_x.indices), len(lists_y.indices), dtype=torch.float64)
    for a, idx in enumerate(lists_x.indices):
        rows = own_rows(idx)
        mask = members_y.lookup(rows, idx).bool()  # [N, k, Ly + 1]: (i, j) in y's lists
        mask_t = (members_x.lookup(idx, rows)[..., a:a + 1] & members_y.lookup(idx, rows)).bool()
        l_ij = None if at_x is None else at_x[:, :, a].permute(1, 2, 0)
        cross = similarity(idx, mask, mask_t, lists_x.values[a], l_ij)
        grid[a] = cross.cpu() / (torch.sqrt(self_x[a] * self_y) + 1e-6).cpu()
    return grid.numpy()


@register_grid("svcca")
def svcca_grid(kx: LayerKernels, ky: LayerKernels, cca_dim: int = 10) -> np.ndarray:
    """Each candidate reduced once (one candidate's features in memory at a time)."""
    reduced_x = [metrics.svcca_reduce(kx.candidate(c), cca_dim) for c in range(len(kx))]
    reduced_y = [metrics.svcca_reduce(ky.candidate(c), cca_dim) for c in range(len(ky))]
    return np.array([[metrics.svcca_from_reduced(u, v, cca_dim) for v in reduced_y]
                     for u in reduced_x])


def load_kernels(path: str | os.PathLike, device: str | torch.device = "cpu",
                 precise: bool = False, normalize: bool = True) -> LayerKernels:
    """One feature file (checked on opening), outliers clamped as the measure stage does, read
    layer by layer: the file is never loaded whole."""
    return LayerKernels(open_layers(path, device, precise), normalize)


KNN_LIST_METRICS = ("mutual_knn", "cycle_knn", "lcs_knn", "edit_distance_knn")


def precompute(kernels: LayerKernels, metric: str, topk: int | None) -> LayerKernels:
    """Compute now what every score of this model with `metric` reuses (row norms, and the kNN
    lists of the kNN metrics), e.g. once in a task whose result other tasks share."""
    if metric in KNN_LIST_METRICS and topk is not None:
        kernels.neighbours(topk)
    elif metric == "cknna":
        kernels.neighbours(kernels.n - 1 if topk is None else topk)
    if kernels.normalize:
        kernels.norms  # noqa: B018 (computed and kept)
    return kernels


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
