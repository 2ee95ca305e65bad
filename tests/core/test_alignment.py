"""The fast layer search must give exactly what the plain per-pair loop (the oracle) gives."""

import numpy as np
import pytest
import torch

import measure_alignment
from platonic.core import alignment, metrics
from platonic.errors import PlatonicError

N = 96


def layered(n_layers_x=5, n_layers_y=4, winner=None, concat=False, seed=0):
    """Random features where one middle layer pair shares structure (or, with `concat`, where
    every layer carries a weak share of it, so that only their concatenation aligns best)."""
    g = torch.Generator().manual_seed(seed)
    shared = torch.randn(N, 8, generator=g)
    x = torch.randn(N, n_layers_x, 24, generator=g)
    y = torch.randn(N, n_layers_y, 20, generator=g)
    if concat:
        for layer in range(n_layers_x):
            x[:, layer, :8] += 0.6 * shared
        for layer in range(n_layers_y):
            y[:, layer, :8] += 0.6 * shared
    else:
        winner = winner or (n_layers_x // 2, n_layers_y // 2 - 1 if n_layers_y > 1 else 0)
        x[:, winner[0]] += 2.5 * shared @ torch.randn(8, 24, generator=g)
        y[:, winner[1]] += 2.5 * shared @ torch.randn(8, 20, generator=g)
    return alignment.prepare_features(x), alignment.prepare_features(y)


CASES = [
    ("mutual_knn", {}), ("cycle_knn", {}), ("lcs_knn", {}), ("edit_distance_knn", {}),
    ("cka", {}), ("cka", {"kernel_metric": "rbf"}), ("unbiased_cka", {}),
    ("cknna", {}), ("cknna", {"unbiased": False}), ("cknna", {"distance_agnostic": True}),
]


@pytest.mark.parametrize("concat", [False, True], ids=["middle-pair-wins", "concat-wins"])
@pytest.mark.parametrize(("metric", "extra"), CASES, ids=[f"{m}{e}" for m, e in CASES])
def test_fast_search_equals_exhaustive_loop(metric, extra, concat):
    x, y = layered(concat=concat)
    fast_score, fast_idx, fast_grid = alignment.compute_score(x, y, metric, topk=8,
                                                              return_grid=True, **extra)
    oracle_score, oracle_idx, oracle_grid = alignment.exhaustive_search(x, y, metric, topk=8, **extra)
    exact = "knn" in metric and metric != "cknna"
    assert fast_idx == oracle_idx
    if exact:
        assert fast_score == oracle_score
        np.testing.assert_array_equal(fast_grid, oracle_grid)
    else:
        assert fast_score == pytest.approx(oracle_score, abs=1e-5)
        np.testing.assert_allclose(fast_grid, oracle_grid, atol=1e-5)


def test_planted_structure_is_found():
    x, y = layered(winner=(3, 0))
    assert alignment.compute_score(x, y, "mutual_knn", topk=8)[1] == (3, 0)
    x, y = layered(concat=True)
    assert alignment.compute_score(x, y, "mutual_knn", topk=8)[1] == (-1, -1)


def test_svcca_search_is_reproducible_and_matches_the_loop():
    x, y = layered(n_layers_x=2, n_layers_y=2)
    first = alignment.compute_score(x, y, "svcca", return_grid=True)
    second = alignment.compute_score(x, y, "svcca", return_grid=True)
    np.testing.assert_array_equal(first[2], second[2])
    np.testing.assert_allclose(first[2], alignment.exhaustive_search(x, y, "svcca")[2], atol=1e-6)


def test_ties_go_to_the_first_pair_in_loop_order():
    grid = np.array([[0.1, 0.5], [0.5, 0.2]])
    assert alignment.best_of_grid(grid) == (0.5, (-1, 0))
    assert alignment.best_of_grid(np.array([[np.nan, 0.2]])) == (0.2, (-1, 0))
    assert alignment.best_of_grid(np.array([[np.inf, 0.2]])) == (0.2, (-1, 0))


@pytest.mark.parametrize("grid", [np.full((2, 2), -0.3), np.zeros((2, 3)), np.full((1, 2), np.nan),
                                  np.array([[np.nan, -np.inf]])])
def test_a_grid_without_positive_finite_value_has_an_undefined_score(grid):
    score, layers = alignment.best_of_grid(grid)
    assert np.isnan(score) and layers is None


def test_a_registered_metric_without_fast_form_uses_its_own_function():
    @metrics.register_metric("test_mean_cosine")
    def mean_cosine(a, b):
        return float((a[:, :4] * b[:, :4]).sum(dim=1).mean())

    try:
        x, y = layered(n_layers_x=2, n_layers_y=2)
        fast = alignment.compute_score(x, y, "test_mean_cosine", return_grid=True)
        oracle = alignment.exhaustive_search(x, y, "test_mean_cosine")
        np.testing.assert_allclose(fast[2], oracle[2], atol=1e-6)
    finally:
        del metrics.METRICS["test_mean_cosine"]


def test_root_script_exposes_original_functions():
    feats = torch.randn(20, 3, 8) * 5
    prepared = measure_alignment.prepare_features(feats, q=0.95, exact=False)
    assert prepared.dtype == torch.float32 and prepared.device == feats.device
    assert prepared.abs().max() < feats.abs().max()
    score, idx = measure_alignment.compute_score(prepared, prepared, "mutual_knn", topk=5)
    assert score == 1.0 and idx == (-1, -1)


@pytest.mark.parametrize("bad", [
    lambda x, y: alignment.compute_score(x, y, "mutual_knn", topk=N),
    lambda x, y: alignment.compute_score(x, y, "not_a_metric"),
    lambda x, y: alignment.compute_score(x[:, 0], y),
    lambda x, y: alignment.compute_score(x[:0], y[:0]),
    lambda x, y: alignment.compute_score(x, y[:-1]),
])
def test_bad_search_input_is_one_clear_error(bad):
    x, y = layered(n_layers_x=2, n_layers_y=2)
    with pytest.raises(PlatonicError):
        bad(x, y)
