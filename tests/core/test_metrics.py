"""The per-pair metrics against independent computations written from the reference notes."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import metrics as root_metrics
from platonic.core import metrics
from platonic.errors import PlatonicError


def correlated(n=200, da=48, db=32, seed=0, noise=1.0):
    g = torch.Generator().manual_seed(seed)
    shared = torch.randn(n, 6, generator=g)
    a = shared @ torch.randn(6, da, generator=g) + noise * torch.randn(n, da, generator=g)
    b = shared @ torch.randn(6, db, generator=g) + noise * torch.randn(n, db, generator=g)
    return F.normalize(a, dim=-1), F.normalize(b, dim=-1)


def argsort_knn(feats, k):
    """The original's neighbour search: full argsort with the diagonal pushed to -1e8."""
    return (feats @ feats.T).fill_diagonal_(-1e8).argsort(dim=1, descending=True)[:, :k]


def test_root_module_keeps_the_original_interface():
    a, b = correlated()
    assert root_metrics.AlignmentMetrics.SUPPORTED_METRICS == [
        "mutual_knn", "cycle_knn", "lcs_knn", "edit_distance_knn", "cka", "unbiased_cka",
        "cknna", "svcca"]
    score = root_metrics.AlignmentMetrics.measure("mutual_knn", a, b, topk=5)
    assert isinstance(score, float)
    assert root_metrics.remove_outliers(a, q=0.9).abs().max() <= a.abs().max()
    for name in root_metrics.AlignmentMetrics.SUPPORTED_METRICS:
        kwargs = {"topk": 5} if metrics.METRICS[name].uses_topk else {}
        assert isinstance(root_metrics.AlignmentMetrics.measure(name, a, b, **kwargs), float)


def test_mutual_knn_matches_mask_computation():
    a, b = correlated()
    ka, kb = argsort_knn(a, 10), argsort_knn(b, 10)
    n = a.shape[0]
    rows = torch.arange(n).unsqueeze(1)
    mask_a, mask_b = torch.zeros(n, n), torch.zeros(n, n)
    mask_a[rows, ka] = 1.0
    mask_b[rows, kb] = 1.0
    expected = ((mask_a * mask_b).sum(dim=1) / 10).mean().item()
    assert metrics.mutual_knn(a, b, topk=10) == pytest.approx(expected, abs=1e-7)


def test_cycle_lcs_edit_match_python_loops():
    a, b = correlated(n=80)
    ka, kb = argsort_knn(a, 6).tolist(), argsort_knn(b, 6).tolist()
    cycle = np.mean([any(i in ka[j] for j in kb[i]) for i in range(80)])

    def lcs(x, y):
        dp = [[0] * (len(y) + 1) for _ in range(len(x) + 1)]
        for i in range(1, len(x) + 1):
            for j in range(1, len(y) + 1):
                dp[i][j] = dp[i - 1][j - 1] + 1 if x[i - 1] == y[j - 1] else max(dp[i - 1][j], dp[i][j - 1])
        return dp[-1][-1]

    def lev(x, y):
        dp = [[i + j if i * j == 0 else 0 for j in range(len(y) + 1)] for i in range(len(x) + 1)]
        for i in range(1, len(x) + 1):
            for j in range(1, len(y) + 1):
                dp[i][j] = min(dp[i - 1][j] + 1, dp[i][j - 1] + 1, dp[i - 1][j - 1] + (x[i - 1] != y[j - 1]))
        return dp[-1][-1]

    assert metrics.cycle_knn(a, b, topk=6) == pytest.approx(cycle)
    assert metrics.lcs_knn(a, b, topk=6) == pytest.approx(np.mean([lcs(x, y) for x, y in zip(ka, kb, strict=True)]))
    assert metrics.edit_distance_knn(a, b, topk=6) == pytest.approx(
        1 - np.mean([lev(x, y) for x, y in zip(ka, kb, strict=True)]) / 6)


def numpy_hsic_unbiased(K, L):
    m = K.shape[0]
    K, L = K.copy(), L.copy()
    np.fill_diagonal(K, 0)
    np.fill_diagonal(L, 0)
    one = np.ones(m)
    return (np.trace(K @ L) + one @ K @ one * (one @ L @ one) / ((m - 1) * (m - 2))
            - 2 / (m - 2) * one @ K @ L @ one) / (m * (m - 3))


def test_cka_and_unbiased_cka_match_numpy_float64():
    a, b = correlated()
    K, L = (a @ a.T).double().numpy(), (b @ b.T).double().numpy()
    H = np.eye(len(K)) - 1 / len(K)
    hb = lambda X, Y: np.trace(X @ H @ Y @ H)  # noqa: E731
    assert metrics.cka(a, b) == pytest.approx(hb(K, L) / (np.sqrt(hb(K, K) * hb(L, L)) + 1e-6), abs=1e-5)
    hu = numpy_hsic_unbiased
    assert metrics.unbiased_cka(a, b) == pytest.approx(hu(K, L) / (np.sqrt(hu(K, K) * hu(L, L)) + 1e-6), abs=1e-5)


def plain_cknna(a: np.ndarray, b: np.ndarray, k: int, unbiased: bool = True) -> float:
    """CKNNA as published (Huh et al. 2024), one loop per row: HSIC of the kernels restricted
    to pairs that are top-k neighbours in both spaces (self excluded when unbiased)."""
    n = len(a)
    K, L = a @ a.T, b @ b.T

    def neighbours(M):
        mask = np.zeros((n, n))
        for i in range(n):
            others = [j for j in range(n) if not (unbiased and j == i)]
            for j in sorted(others, key=lambda j: -M[i, j])[:k]:
                mask[i, j] = 1.0
        return mask

    H = np.eye(n) - 1 / n
    hsic = numpy_hsic_unbiased if unbiased else (lambda X, Y: np.trace(X @ H @ Y @ H))
    mk, ml = neighbours(K), neighbours(L)

    def similarity(A, mask_a, B, mask_b):
        mask = mask_a * mask_b
        return hsic(mask * A, mask * B)

    return similarity(K, mk, L, ml) / (np.sqrt(similarity(K, mk, K, mk) * similarity(L, ml, L, ml)) + 1e-6)


@pytest.mark.parametrize("unbiased", [True, False])
@pytest.mark.parametrize("k", [2, 5, 17])
def test_cknna_with_few_neighbours_matches_a_plain_loop(k, unbiased):
    from platonic.core.alignment import LayerKernels, score_grid

    a, b = correlated(n=40, noise=0.7)
    expected = plain_cknna(a.double().numpy(), b.double().numpy(), k, unbiased)
    assert metrics.cknna(a, b, topk=k, unbiased=unbiased) == pytest.approx(expected, abs=1e-5)
    grid = score_grid(LayerKernels(a[:, None]), LayerKernels(b[:, None]), "cknna", topk=k, unbiased=unbiased)
    assert grid[1, 1] == pytest.approx(expected, abs=1e-5)


def test_cknna_topk_none_means_all_neighbours():
    a, b = correlated(n=60)
    assert metrics.cknna(a, b, topk=None) == pytest.approx(metrics.cknna(a, b, topk=59), abs=1e-7)
    assert metrics.cknna(a, b, topk=None) == pytest.approx(metrics.unbiased_cka(a, b), abs=1e-4)


def test_identical_inputs_score_one():
    a, _ = correlated()
    assert metrics.mutual_knn(a, a, topk=10) == 1.0
    assert metrics.cka(a, a) == pytest.approx(1.0, abs=1e-5)
    assert metrics.unbiased_cka(a, a) == pytest.approx(1.0, abs=1e-5)
    # CKNNA's HSIC of masked kernels is small, so the +1e-6 of its denominator shows
    assert metrics.cknna(a, a, topk=10) == pytest.approx(1.0, abs=1e-3)


@pytest.mark.parametrize("name", [n for n, s in metrics.METRICS.items() if s.symmetric])
def test_symmetric_metrics_are_symmetric(name):
    a, b = correlated(n=100, da=32, db=32)
    kwargs = {"topk": 7} if metrics.METRICS[name].uses_topk else {}
    ab = metrics.METRICS[name].fn(a, b, **kwargs)
    ba = metrics.METRICS[name].fn(b, a, **kwargs)
    assert ab == pytest.approx(ba, abs=1e-5)


def test_independent_inputs_give_chance_mutual_knn():
    g = torch.Generator().manual_seed(3)
    n, k = 1000, 10
    a = F.normalize(torch.randn(n, 64, generator=g), dim=-1)
    b = F.normalize(torch.randn(n, 64, generator=g), dim=-1)
    assert metrics.mutual_knn(a, b, topk=k) == pytest.approx(k / (n - 1), abs=0.005)


def closed_form_svcca(a: np.ndarray, b: np.ndarray, cca_dim: int) -> float:
    """SVCCA by the published formula, computed exactly: standardise, exact SVD to `cca_dim`
    directions, then the canonical correlations of two orthonormal bases are the singular
    values of U1^T U2 (Raghu et al. 2017); their mean."""
    def reduce(x):
        x = x - x.mean(axis=0)
        x = x / (x.std(axis=0, ddof=1) + 1e-8)
        return np.linalg.svd(x, full_matrices=False)[0][:, :cca_dim]

    return float(np.linalg.svd(reduce(a).T @ reduce(b), compute_uv=False).mean())


@pytest.mark.parametrize("seed", [0, 1])
def test_svcca_matches_the_closed_form(seed):
    """Features of rank about `cca_dim` (plus faint noise), so that the seeded randomised SVD
    finds the same subspace as the exact one and sklearn's iterative CCA converges."""
    g = torch.Generator().manual_seed(seed)
    n, cca_dim = 300, 6
    shared = torch.randn(n, 3, generator=g, dtype=torch.float64)
    a = torch.cat([shared, torch.randn(n, 3, generator=g, dtype=torch.float64)], 1) @ torch.randn(6, 40, generator=g, dtype=torch.float64)
    b = torch.cat([shared + 0.5 * torch.randn(n, 3, generator=g, dtype=torch.float64),
                   torch.randn(n, 3, generator=g, dtype=torch.float64)], 1) @ torch.randn(6, 30, generator=g, dtype=torch.float64)
    a, b = a + 1e-4 * torch.randn(a.shape, generator=g, dtype=torch.float64), b + 1e-4 * torch.randn(b.shape, generator=g, dtype=torch.float64)
    expected = closed_form_svcca(a.numpy(), b.numpy(), cca_dim)
    assert 0.3 < expected < 0.9  # neither trivial nor degenerate
    assert metrics.svcca(a.float(), b.float(), cca_dim=cca_dim) == pytest.approx(expected, abs=1e-4)
    assert metrics.svcca(a.float(), b.float(), cca_dim=cca_dim) == metrics.svcca(a.float(), b.float(), cca_dim=cca_dim)


def test_remove_outliers_matches_original_formulas():
    g = torch.Generator().manual_seed(1)
    feats = torch.randn(50, 3, 40, generator=g) ** 3
    q_exact = feats.view(-1).abs().sort().values[int(0.95 * feats.numel())]
    assert torch.equal(metrics.remove_outliers(feats, 0.95, exact=True), feats.clamp(-q_exact, q_exact))
    q_mean = torch.quantile(feats.abs().flatten(start_dim=1), q=0.95, dim=1).mean()
    out = metrics.remove_outliers(feats, 0.95, exact=False)
    assert torch.allclose(out, feats.clamp(-q_mean, q_mean), atol=1e-6)
    assert metrics.remove_outliers(feats, 1) is feats


@pytest.mark.parametrize("bad", [
    lambda a, b: metrics.mutual_knn(a, b, topk=a.shape[0]),
    lambda a, b: metrics.mutual_knn(a[:, 0], b, topk=5),
    lambda a, b: metrics.cka(a[:0], b[:0]),
    lambda a, b: metrics.cka(a, b[:-1]),
    lambda a, b: metrics.AlignmentMetrics.measure("no_such_metric", a, b),
])
def test_bad_input_is_one_clear_error(bad):
    a, b = correlated(n=30)
    with pytest.raises(PlatonicError):
        bad(a, b)


def _mean_quantile_of_real_entries(feats: np.ndarray, dims: list[int], q: float) -> float:
    """The original's threshold over each sample's real entries only: a plain numpy loop."""
    per_sample = [np.quantile(np.abs(np.concatenate([row[layer, :d] for layer, d in enumerate(dims)])), q)
                  for row in feats]
    return float(np.mean(per_sample))


def test_outlier_threshold_ignores_zero_padding():
    g = torch.Generator().manual_seed(2)
    dims = [3, 8, 20]
    feats = torch.zeros(30, len(dims), 20)
    for layer, d in enumerate(dims):
        feats[:, layer, :d] = torch.randn(30, d, generator=g) * (layer + 1)
    threshold = _mean_quantile_of_real_entries(feats.double().numpy(), dims, 0.95)
    out = metrics.remove_outliers(feats, 0.95, layer_dims=dims)
    torch.testing.assert_close(out, feats.clamp(-threshold, threshold), atol=1e-5, rtol=0)
    real = torch.cat([feats[:, layer, :d].flatten() for layer, d in enumerate(dims)]).abs()
    exact = real.sort().values[int(0.95 * real.numel())]
    torch.testing.assert_close(metrics.remove_outliers(feats, 0.95, exact=True, layer_dims=dims),
                               feats.clamp(-exact, exact))


def test_equal_widths_clamp_as_the_original():
    g = torch.Generator().manual_seed(3)
    feats = torch.randn(20, 4, 10, generator=g) ** 3
    threshold = _mean_quantile_of_real_entries(feats.double().numpy(), [10] * 4, 0.95)
    for dims in (None, [10] * 4):
        out = metrics.remove_outliers(feats, 0.95, layer_dims=dims)
        torch.testing.assert_close(out, feats.clamp(-threshold, threshold), atol=1e-5, rtol=0)


@pytest.mark.parametrize("dims", [[3, 8], [3, 8, 21], [0, 8, 20]])
def test_bad_layer_widths_are_one_clear_error(dims):
    with pytest.raises(PlatonicError, match="layer widths"):
        metrics.remove_outliers(torch.ones(4, 3, 20), 0.95, layer_dims=dims)
