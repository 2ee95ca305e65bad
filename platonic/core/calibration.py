"""Calibrated alignment: a score set against chance, and a confidence interval over samples.

Null distribution: N random pairings of the samples (a permutation of one side's rows), each
scored through the same best-over-layer-pairs search as the score itself. The max over layer
pairs inflates chance (many pairs, one maximum), so a null without it would be too low. A null
value is that maximum whatever its sign: for metrics whose chance level is near 0
(unbiased_cka) about as many permutations fall below 0 as above, and dropping or voiding them
would bias (or void) the whole null. Only the observed score follows the published rule: no
positive value in its grid, no score (NaN); an undefined score has an undefined p-value and
calibrated score, so it is never significant.

No neighbour list is recomputed: permuting y's rows by pi turns its lists into
knn'[i] = pi^-1(knn[pi(i)]), an index operation, and no N x N matrix is made per permutation.
- mutual_knn: x's lists are turned once into a table of their pairs (`neighbours.MemberTable`);
  a permutation's whole grid is then one lookup of y's lists, read through the inverse
  permutation, in it, counted as a histogram of the candidates' packed bits (cost
  (Ly + 1) N k log(N k), or (Ly + 1) N k with the table's N x N form at small N;
  O((Lx + 1) N k) memory);
- every other metric: the grid of the metric's own fast form on a permuted view of y
  (`PermutedKernels`: neighbour lists indexed, features read in the permuted row order). For
  the CKA family, each candidate's HSIC(K, K) is kept across permutations, and the centred
  kernels are kept whole when they fit (`hsic.DENSE_BYTES`), so that a permutation is an
  indexing; otherwise it costs the feature-space cross products (or the kernel rows) again.

Reported: null mean, its 95th percentile, the permutation p-value (1 + #{null >= score}) /
(N + 1) (ties count against the score, so it is never below its true level), and the calibrated
score (score - null mean) / (1 - null mean): 0 at chance, 1 at the maximum score of 1.

Bootstrap CI (95% percentile interval) of the score at the chosen layer pair, resampling samples
with replacement: for the kNN metrics, whose score is a mean of per-sample terms (mutual_knn's
|kNN_x(i) & kNN_y(i)| / k, ...), those terms are resampled (neighbour lists from the full sample,
so no duplicate becomes its own neighbour); for cka and unbiased_cka the metric runs on the
resampled rows of the two chosen layers (in feature space, with the draw's counts as weights, when
that is cheaper than its N x N kernels). cknna and svcca get no CI (NaN, shown as undefined):
duplicated rows would be each other's nearest neighbours, or inflate canonical correlations.
"""

from __future__ import annotations

import math
from functools import cached_property
from typing import Any

import numpy as np
import torch

from platonic.core import hsic, metrics
from platonic.core.alignment import LayerKernels, best_of_grid, mutual_counts, score_grid
from platonic.core.neighbours import (
    MemberTable,
    Neighbours,
    inverse_permutation,
    one_cpu_thread,
    own_rows,
)
from platonic.errors import PlatonicError
from platonic.io.results import Calibration

N_BOOTSTRAP = 1000
# 2: a null value is the max over layer pairs whatever its sign (was NaN when <= 0), and an
# undefined score gets an undefined p-value (was 1 / (N + 1)). Part of a result's settings.
NULL_VERSION = 2
FAST_NULL_METRICS = ("mutual_knn",)
PER_SAMPLE_METRICS = ("mutual_knn", "cycle_knn", "lcs_knn", "edit_distance_knn")
RESAMPLED_METRICS = ("cka", "unbiased_cka")


class PermutedKernels(LayerKernels):
    """`base` with its samples reordered (row i = base row order[i]), by indexing only.

    Neighbour lists are translated from the base's when `order` is a permutation, and what does
    not change under a permutation (HSIC(K, K)) is shared with the base; features are read in
    the new row order. `order` with repeats (a bootstrap draw) is fine for metrics that need
    only the features: its lists are then computed from them.
    """

    def __init__(self, base: LayerKernels, order: torch.Tensor):
        order = order.to(base.source.device)
        super().__init__(base.source.reordered(order), base.normalize)
        self.base, self.order = base, order
        is_permutation = len(order) == base.n and bool(
            torch.equal(order.sort().values, torch.arange(base.n, device=order.device)))
        self.permutation_of = (base, order) if is_permutation else None

    def known_diagonals(self) -> torch.Tensor | None:
        known = self.base.known_diagonals()
        return None if known is None else known[:, self.order]

    @property
    def diagonals(self) -> torch.Tensor:  # type: ignore[override]
        return self.base.diagonals[:, self.order]

    @cached_property
    def grams(self) -> torch.Tensor:  # type: ignore[override]
        return self.base.grams[:, self.order][:, :, self.order]

    def neighbours(self, topk: int, exclude_self: bool = True) -> Neighbours:
        if self.permutation_of is None:
            return super().neighbours(topk, exclude_self)
        key = (topk, exclude_self)
        if key not in self._lists:
            self._lists[key] = self.base.neighbours(topk, exclude_self).reordered(self.order)
        return self._lists[key]


def permutations(n_samples: int, count: int, seed: int) -> torch.Tensor:
    """[count, N] independent uniform random permutations, from numpy's seeded generator."""
    rng = np.random.default_rng(seed)
    return torch.from_numpy(np.stack([rng.permutation(n_samples) for _ in range(count)]))


def mutual_knn_null(kx: LayerKernels, ky: LayerKernels, topk: int,
                    perms: torch.Tensor) -> np.ndarray:
    """Best-over-layer-pairs mutual kNN of x against each row-permuted y: one table lookup of
    y's permuted lists each."""
    metrics.check_topk(topk, kx.n)
    members = kx.members(topk)
    knn_y = ky.knn(topk)  # [Ly+1, N, k]
    out = np.empty(len(perms))
    with one_cpu_thread(knn_y.device):
        for p, perm in enumerate(perms.to(knn_y.device)):
            counts = mutual_counts(members, knn_y, inverse_permutation(perm))
            out[p] = grid_max((counts.double() / (kx.n * topk)).cpu().numpy())
    return out


def grid_max(grid: np.ndarray) -> float:
    """A permutation's null value: the largest finite score of its grid, whatever its sign
    (NaN only when no score is finite)."""
    finite = grid[np.isfinite(grid)]
    return float(finite.max()) if finite.size else math.nan


def permutation_null(kx: LayerKernels, ky: LayerKernels, metric: str, topk: int | None,
                     perms: torch.Tensor, **extra: Any) -> tuple[np.ndarray, str]:
    """The best score over layer pairs for each permutation of y's samples, and how it was made."""
    if metric in FAST_NULL_METRICS and not extra:
        return mutual_knn_null(kx, ky, topk, perms), "permuted kNN lists (one lookup per permutation)"
    if metric in RESAMPLED_METRICS:
        kind = hsic_kind(metric, extra)
        hsic.keep_centred(kx, kind)
        hsic.keep_centred(ky, kind)
    null = np.array([grid_max(score_grid(kx, PermutedKernels(ky, perm), metric, topk, **extra))
                     for perm in perms])
    return null, "permuted kernels (the metric's grid per permutation)"


def per_sample_terms(kx: LayerKernels, ky: LayerKernels, metric: str, topk: int, a: int,
                     b: int) -> np.ndarray:
    """The per-sample terms whose mean is a kNN metric's score, at candidates (a, b)."""
    knn_a, knn_b = kx.knn(topk)[a], ky.knn(topk)[b]
    if metric == "mutual_knn":
        hits = MemberTable(knn_a[None]).lookup(own_rows(knn_b), knn_b)[..., 0]
        terms = hits.sum(dim=1, dtype=torch.float64) / topk
    elif metric == "cycle_knn":
        own = torch.arange(kx.n, device=knn_a.device).view(-1, 1, 1)
        terms = (knn_a[knn_b] == own).flatten(1).any(dim=1).double()
    elif metric == "lcs_knn":
        terms = metrics.lcs_lengths(knn_a, knn_b).double()
    else:
        terms = 1.0 - metrics.edit_distances(knn_a, knn_b).double() / topk
    return terms.cpu().numpy()


def bootstrap_ci(kx: LayerKernels, ky: LayerKernels, metric: str, topk: int | None,
                 layers: tuple[int, int], n_boot: int, seed: int,
                 **extra: Any) -> tuple[float, float]:
    """95% percentile interval of the score at x layer `layers[0]`, y layer `layers[1]` (-1: all
    layers), resampling samples with replacement."""
    a, b = layers[0] + 1, layers[1] + 1
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, kx.n, size=(n_boot, kx.n))
    if metric in PER_SAMPLE_METRICS:
        values = per_sample_terms(kx, ky, metric, topk, a, b)[draws].mean(axis=1)
    elif metric in RESAMPLED_METRICS:
        values = resampled_cka(kx.candidate(a), ky.candidate(b), metric, draws, extra)
    else:
        return math.nan, math.nan
    low, high = np.percentile(values, [2.5, 97.5])
    return float(low), float(high)


def hsic_kind(metric: str, extra: dict[str, Any]) -> hsic.Kind:
    """The HSIC a CKA-family metric computes with these keyword arguments."""
    unbiased = metric == "unbiased_cka" or bool(extra.get("unbiased", False))
    return hsic.Kind.of(unbiased, extra.get("kernel_metric", "ip"), extra.get("rbf_sigma", 1.0))


def resampled_cka(x: torch.Tensor, y: torch.Tensor, metric: str, draws: np.ndarray,
                  extra: dict[str, Any]) -> np.ndarray:
    """The metric on the rows of each draw: in feature space with the draw's counts as row
    weights (linear kernel, when cheaper than the N x N kernels), else the metric itself."""
    kind = hsic_kind(metric, extra)
    n, dx, dy = len(x), x.shape[1], y.shape[1]
    if kind.kernel == "ip" and dx * dy + dx * dx + dy * dy < n * (dx + dy):
        return np.array([hsic.weighted_cka(x, y, torch.bincount(d, minlength=n), kind.unbiased)
                         for d in torch.from_numpy(draws).to(x.device)])
    fn = metrics.get_metric(metric).fn
    return np.array([fn(x[d], y[d], **extra) for d in torch.from_numpy(draws)])


def calibrate(kx: LayerKernels, ky: LayerKernels, metric: str = "mutual_knn",
              topk: int | None = 10, n_null: int = 1000, n_boot: int = N_BOOTSTRAP,
              seed: int = 0, grid: np.ndarray | None = None, **extra: Any) -> Calibration:
    """Score of x against y (best over layer pairs) with its permutation null and bootstrap CI.

    `grid`: the score grid of (kx, ky) when already computed (it is not computed again).
    """
    check_counts(n_null, n_boot)
    if grid is None:
        grid = score_grid(kx, ky, metric, topk, **extra)
    score, best = best_of_grid(grid)
    null, method = permutation_null(kx, ky, metric, topk, permutations(kx.n, n_null, seed), **extra)
    return summarise_null(score, null, method, *(
        bootstrap_ci(kx, ky, metric, topk, best, n_boot, seed + 1, **extra)
        if best is not None and n_boot > 0 else (math.nan, math.nan)), n_boot=n_boot)


def check_counts(n_null: int, n_boot: int, null_optional: bool = False) -> None:
    """Permutations (at least 1; with `null_optional` also 0: no null) and bootstrap replicates
    (0 or more), checked whether or not a null is asked for."""
    if n_null < 1 and not (null_optional and n_null == 0):
        raise PlatonicError(f"the null needs at least 1 permutation, got {n_null}"
                            + (" (0: no null)" if null_optional else ""))
    if n_boot < 0:
        raise PlatonicError(f"the bootstrap needs 0 or more replicates, got {n_boot}")


def summarise_null(score: float, null: np.ndarray, method: str, ci_low: float = math.nan,
                   ci_high: float = math.nan, n_boot: int = 0) -> Calibration:
    """Null mean, 95th percentile, permutation p-value and calibrated score of `score`; the last
    two are undefined (NaN) with the score (or the null: a permutation without a finite score)."""
    mean = float(null.mean())
    defined = math.isfinite(score) and math.isfinite(mean)
    p_value = (1 + int(np.count_nonzero(null >= score))) / (len(null) + 1) if defined else math.nan
    calibrated = (score - mean) / (1 - mean) if defined and mean < 1 else math.nan
    return Calibration(score, mean, float(np.percentile(null, 95)), p_value, calibrated,
                       len(null), ci_low, ci_high, n_boot, method)
