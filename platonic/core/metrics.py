"""The eight published alignment metrics, one registry by name.

Each metric takes two feature matrices [N, D_a] and [N, D_b] (rows already L2-normalised when
used by the layer search) and returns a Python float. These are the straightforward per-pair
definitions of the original code; `platonic.core.alignment` holds the fast all-layer-pairs search
and uses them as its oracle. Adding a metric is one decorated function here.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from platonic.errors import PlatonicError

MetricFn = Callable[..., float]


@dataclass(frozen=True)
class MetricSpec:
    """A registered metric: its function and what the layer search must know about it."""

    name: str
    fn: MetricFn
    uses_topk: bool
    symmetric: bool


METRICS: dict[str, MetricSpec] = {}


def register_metric(name: str, *, uses_topk: bool = False,
                    symmetric: bool = True) -> Callable[[MetricFn], MetricFn]:
    """Add a metric to the registry; `uses_topk` metrics receive the search's `topk`."""

    def add(fn: MetricFn) -> MetricFn:
        METRICS[name] = MetricSpec(name, fn, uses_topk, symmetric)
        return fn

    return add


def get_metric(name: str) -> MetricSpec:
    if name not in METRICS:
        raise PlatonicError(f"unknown metric {name!r}; known: {', '.join(METRICS)}")
    return METRICS[name]


def check_pair(feats_a: torch.Tensor, feats_b: torch.Tensor, topk: int | None = None) -> int:
    """Both inputs must be non-empty [N, D] with the same N; `topk` must be below N."""
    for name, f in (("feats_A", feats_a), ("feats_B", feats_b)):
        if f.ndim != 2 or f.numel() == 0:
            raise PlatonicError(f"{name} must be a non-empty [N, D] matrix, got {tuple(f.shape)}")
    n = feats_a.shape[0]
    if feats_b.shape[0] != n:
        raise PlatonicError(f"feats_A has {n} samples but feats_B has {feats_b.shape[0]}")
    check_topk(topk, n)
    return n


def check_topk(topk: int | None, n: int) -> None:
    if topk is not None and not 1 <= topk < n:
        raise PlatonicError(f"topk={topk} must be between 1 and N-1={n - 1} (N = {n} samples)")


def nearest_neighbors(feats: torch.Tensor, topk: int) -> torch.Tensor:
    """Indices [N, topk] of each row's nearest rows by inner product, self excluded, nearest first."""
    sim = feats @ feats.T
    sim.fill_diagonal_(float("-inf"))
    return sim.topk(topk, dim=1).indices


def _knn_pair(feats_a: torch.Tensor, feats_b: torch.Tensor, topk: int) -> tuple[torch.Tensor, torch.Tensor]:
    check_pair(feats_a, feats_b, topk)
    return nearest_neighbors(feats_a, topk), nearest_neighbors(feats_b, topk)


def knn_membership(knn: torch.Tensor, n: int) -> torch.Tensor:
    """Boolean [N, N] matrix with True at (i, j) when j is among i's neighbours."""
    member = torch.zeros(n, n, dtype=torch.bool, device=knn.device)
    return member.scatter_(1, knn, True)


@register_metric("mutual_knn", uses_topk=True)
def mutual_knn(feats_A: torch.Tensor, feats_B: torch.Tensor, topk: int) -> float:
    """Mean over rows of |kNN_A(i) ∩ kNN_B(i)| / k."""
    knn_a, knn_b = _knn_pair(feats_A, feats_B, topk)
    hits = knn_membership(knn_b, knn_b.shape[0]).gather(1, knn_a)
    return hits.sum().item() / knn_a.numel()


@register_metric("cycle_knn", uses_topk=True, symmetric=False)
def cycle_knn(feats_A: torch.Tensor, feats_B: torch.Tensor, topk: int) -> float:
    """Fraction of rows i that are among the A-neighbours of some B-neighbour of i."""
    knn_a, knn_b = _knn_pair(feats_A, feats_B, topk)
    n = knn_a.shape[0]
    back = knn_a[knn_b] == torch.arange(n, device=knn_a.device).view(n, 1, 1)
    return back.flatten(1).any(dim=1).float().mean().item()


def lcs_lengths(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Longest common subsequence length of each row pair of x, y [..., k] (dynamic programme
    vectorised over the leading dimensions)."""
    k_x, k_y = x.shape[-1], y.shape[-1]
    prev = torch.zeros(*x.shape[:-1], k_y + 1, dtype=torch.long, device=x.device)
    for i in range(k_x):
        cur = torch.zeros_like(prev)
        for j in range(k_y):
            match = x[..., i] == y[..., j]
            cur[..., j + 1] = torch.where(match, prev[..., j] + 1,
                                          torch.maximum(prev[..., j + 1], cur[..., j]))
        prev = cur
    return prev[..., k_y]


def edit_distances(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Levenshtein distance of each row pair of x, y [..., k] (vectorised dynamic programme)."""
    k_x, k_y = x.shape[-1], y.shape[-1]
    prev = torch.arange(k_y + 1, device=x.device).expand(*x.shape[:-1], k_y + 1).clone()
    for i in range(k_x):
        cur = torch.empty_like(prev)
        cur[..., 0] = i + 1
        for j in range(k_y):
            substitute = prev[..., j] + (x[..., i] != y[..., j]).long()
            cur[..., j + 1] = torch.minimum(substitute,
                                            torch.minimum(prev[..., j + 1], cur[..., j]) + 1)
        prev = cur
    return prev[..., k_y]


@register_metric("lcs_knn", uses_topk=True)
def lcs_knn(feats_A: torch.Tensor, feats_B: torch.Tensor, topk: int) -> float:
    """Mean length (0..k) of the longest common subsequence of the two ordered kNN lists."""
    knn_a, knn_b = _knn_pair(feats_A, feats_B, topk)
    return lcs_lengths(knn_a, knn_b).float().mean().item()


@register_metric("edit_distance_knn", uses_topk=True)
def edit_distance_knn(feats_A: torch.Tensor, feats_B: torch.Tensor, topk: int) -> float:
    """1 - mean Levenshtein distance of the two ordered kNN lists / k."""
    knn_a, knn_b = _knn_pair(feats_A, feats_B, topk)
    return 1.0 - edit_distances(knn_a, knn_b).float().mean().item() / topk


def hsic_biased(K: torch.Tensor, L: torch.Tensor) -> torch.Tensor:
    """tr(K H L H) with the centring matrix H."""
    n = K.shape[0]
    H = torch.eye(n, dtype=K.dtype, device=K.device) - 1.0 / n
    return torch.trace(K @ H @ L @ H)


def hsic_unbiased(K: torch.Tensor, L: torch.Tensor) -> torch.Tensor:
    """Unbiased HSIC estimator (Song et al. 2012, eq. 5), written with sum(K̃ ∘ L̃ᵀ) as the
    original, so that it also applies to the non-symmetric masked kernels of CKNNA."""
    m = K.shape[0]
    K_t = K.clone().fill_diagonal_(0)
    L_t = L.clone().fill_diagonal_(0)
    value = (
        torch.sum(K_t * L_t.T)
        + torch.sum(K_t) * torch.sum(L_t) / ((m - 1) * (m - 2))
        - 2 * torch.sum(K_t @ L_t) / (m - 2)
    )
    return value / (m * (m - 3))


def kernel_matrix(feats: torch.Tensor, kernel_metric: str = "ip", rbf_sigma: float = 1.0) -> torch.Tensor:
    kernel_metric = kernel_metric.lower()
    if kernel_metric == "ip":
        return feats @ feats.T
    if kernel_metric == "rbf":
        return torch.exp(-torch.cdist(feats, feats) ** 2 / (2 * rbf_sigma**2))
    raise PlatonicError(f"unknown kernel_metric {kernel_metric!r}; use 'ip' or 'rbf'")


@register_metric("cka")
def cka(feats_A: torch.Tensor, feats_B: torch.Tensor, kernel_metric: str = "ip",
        rbf_sigma: float = 1.0, unbiased: bool = False) -> float:
    """Centred kernel alignment: HSIC(K, L) / (sqrt(HSIC(K, K) HSIC(L, L)) + 1e-6)."""
    check_pair(feats_A, feats_B)
    K = kernel_matrix(feats_A, kernel_metric, rbf_sigma)
    L = kernel_matrix(feats_B, kernel_metric, rbf_sigma)
    hsic = hsic_unbiased if unbiased else hsic_biased
    return (hsic(K, L) / (torch.sqrt(hsic(K, K) * hsic(L, L)) + 1e-6)).item()


@register_metric("unbiased_cka")
def unbiased_cka(feats_A: torch.Tensor, feats_B: torch.Tensor, kernel_metric: str = "ip",
                 rbf_sigma: float = 1.0) -> float:
    """CKA with the unbiased HSIC estimator."""
    return cka(feats_A, feats_B, kernel_metric=kernel_metric, rbf_sigma=rbf_sigma, unbiased=True)


def cknna_topk_mask(K: torch.Tensor, topk: int, unbiased: bool) -> torch.Tensor:
    """Float mask of each row's top-k kernel entries (the diagonal excluded when unbiased)."""
    K_hat = K.clone().fill_diagonal_(float("-inf")) if unbiased else K
    idx = K_hat.topk(topk, dim=1).indices
    return torch.zeros_like(K).scatter_(1, idx, 1.0)


@register_metric("cknna", uses_topk=True, symmetric=False)
def cknna(feats_A: torch.Tensor, feats_B: torch.Tensor, topk: int | None = None,
          distance_agnostic: bool = False, unbiased: bool = True) -> float:
    """CKA restricted to mutual top-k neighbours; `topk=None` means all N-1 neighbours.

    With `distance_agnostic` the kernels are dropped and the score is the mutual-neighbour count
    normalised the same way (the original crashed there).
    """
    n = check_pair(feats_A, feats_B)
    topk = n - 1 if topk is None else topk
    check_topk(topk, n)
    if topk < 2:
        raise PlatonicError("cknna needs topk >= 2")
    K, L = feats_A @ feats_A.T, feats_B @ feats_B.T
    mask_k, mask_l = cknna_topk_mask(K, topk, unbiased), cknna_topk_mask(L, topk, unbiased)
    hsic = hsic_unbiased if unbiased else hsic_biased

    def similarity(A: torch.Tensor, mask_a: torch.Tensor, B: torch.Tensor, mask_b: torch.Tensor) -> torch.Tensor:
        mask = mask_a * mask_b
        return mask.sum() if distance_agnostic else hsic(mask * A, mask * B)

    sim_kl = similarity(K, mask_k, L, mask_l)
    sim_kk = similarity(K, mask_k, K, mask_k)
    sim_ll = similarity(L, mask_l, L, mask_l)
    return sim_kl.item() / (torch.sqrt(sim_kk * sim_ll) + 1e-6).item()


SVCCA_SEED = 0


def svcca_reduce(feats: torch.Tensor, cca_dim: int) -> np.ndarray:
    """Standardise columns, then the top `cca_dim` left singular vectors (seeded low-rank SVD)."""
    feats = feats - feats.mean(dim=0)
    feats = feats / (feats.std(dim=0) + 1e-8)
    with torch.random.fork_rng(devices=[feats.device] if feats.is_cuda else []):
        torch.manual_seed(SVCCA_SEED)
        U, _, _ = torch.svd_lowrank(feats, q=cca_dim)
    return U.cpu().double().numpy()


def svcca_from_reduced(U1: np.ndarray, U2: np.ndarray, cca_dim: int) -> float:
    """Mean canonical correlation of two SVD-reduced views (sklearn CCA)."""
    from sklearn.cross_decomposition import CCA  # here, not at the top: 2-5 s of every measure run

    cca = CCA(n_components=cca_dim)
    cca.fit(U1, U2)
    U1_c, U2_c = cca.transform(U1, U2)
    rng = np.random.default_rng(SVCCA_SEED)
    U1_c = U1_c + 1e-10 * rng.standard_normal(U1_c.shape)  # keeps corrcoef defined on constant columns
    U2_c = U2_c + 1e-10 * rng.standard_normal(U2_c.shape)
    return float(np.mean([np.corrcoef(U1_c[:, i], U2_c[:, i])[0, 1] for i in range(cca_dim)]))


@register_metric("svcca")
def svcca(feats_A: torch.Tensor, feats_B: torch.Tensor, cca_dim: int = 10) -> float:
    """SVCCA: standardise, low-rank SVD to `cca_dim`, CCA, mean canonical correlation. Seeded."""
    check_pair(feats_A, feats_B)
    return svcca_from_reduced(svcca_reduce(feats_A, cca_dim), svcca_reduce(feats_B, cca_dim), cca_dim)


def remove_outliers(feats: torch.Tensor, q: float, exact: bool = False,
                    max_threshold: float | None = None,
                    layer_dims: list[int] | None = None) -> torch.Tensor:
    """Clamp to ±q_val, q_val the q-quantile of |x| (one threshold for all layers, as the original).

    `exact=True`: one global order statistic (the original's sort of the whole tensor);
    `exact=False`: the mean of per-sample quantiles over all other dimensions.
    `layer_dims`: each layer's true width when narrower layers are zero-padded to the widest
    (CNN stages); the quantiles are then taken over the real entries only, never the pads.
    """
    if q == 1:
        return feats
    values = real_entries(feats, layer_dims)
    q_val = global_abs_quantile(values, q) if exact else mean_sample_abs_quantile(values, q)
    if max_threshold is not None:
        q_val = max(max_threshold, q_val)
    return feats.clamp(-q_val, q_val)


def real_entries(feats: torch.Tensor, layer_dims: list[int] | None) -> torch.Tensor:
    """[N, L, D] features without their padding: [N, sum(layer_dims)] (or as given if unpadded)."""
    if layer_dims is None:
        return feats
    num_layers, width = feats.shape[1], feats.shape[2]
    if len(layer_dims) != num_layers or not all(1 <= int(d) <= width for d in layer_dims):
        raise PlatonicError(f"layer widths {list(layer_dims)} do not fit features of "
                            f"{num_layers} layers of width {width}")
    if all(int(d) == width for d in layer_dims):
        return feats
    real = torch.arange(width, device=feats.device)[None, :] < torch.tensor(
        [int(d) for d in layer_dims], device=feats.device)[:, None]
    return feats[:, real]


def global_abs_quantile(feats: torch.Tensor, q: float) -> float:
    """The original's `sort(|x|)[int(q * numel)]`, computed with kthvalue (no full sort)."""
    flat = feats.reshape(-1).abs()
    return flat.kthvalue(int(q * flat.numel()) + 1).values.item()


def mean_sample_abs_quantile(feats: torch.Tensor, q: float, chunk: int = 64) -> float:
    """Mean over samples of `torch.quantile(|x_i|, q)` (linear interpolation), in chunks of rows
    so that no sorted copy of the whole tensor is held."""
    rows = feats.reshape(feats.shape[0], -1)
    total = torch.zeros((), dtype=torch.float64, device=feats.device)
    for start in range(0, rows.shape[0], chunk):
        block = rows[start:start + chunk].abs().float()
        total += torch.quantile(block, q, dim=1).double().sum()
    return (total / rows.shape[0]).float().item()


class AlignmentMetrics:
    """The original's entry point: `AlignmentMetrics.measure(name, feats_A, feats_B, **kwargs)`."""

    SUPPORTED_METRICS = list(METRICS)

    @staticmethod
    def measure(metric: str, *args: Any, **kwargs: Any) -> float:
        return get_metric(metric).fn(*args, **kwargs)


for _spec in METRICS.values():
    setattr(AlignmentMetrics, _spec.name, staticmethod(_spec.fn))


def self_check(n: int = 1024, dim_a: int = 512, dim_b: int = 256, topk: int = 10, seed: int = 0) -> list[tuple[str, float, float]]:
    """Each metric's value and time on random correlated features: (name, score, seconds)."""
    gen = torch.Generator().manual_seed(seed)
    shared = torch.randn(n, 64, generator=gen)
    feats_a = torch.nn.functional.normalize(
        shared @ torch.randn(64, dim_a, generator=gen) + torch.randn(n, dim_a, generator=gen), dim=-1)
    feats_b = torch.nn.functional.normalize(
        shared @ torch.randn(64, dim_b, generator=gen) + torch.randn(n, dim_b, generator=gen), dim=-1)
    rows = []
    for spec in METRICS.values():
        kwargs = {"topk": topk} if spec.uses_topk else {}
        start = time.perf_counter()
        score = spec.fn(feats_a, feats_b, **kwargs)
        rows.append((spec.name, score, time.perf_counter() - start))
    return rows
