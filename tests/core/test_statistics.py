"""The generic statistics against hand computations and scipy."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from platonic.core.statistics import bootstrap_mean_rho, mean_rho, nanmean, ols_slope, spearman_rho


def test_ols_slope_is_the_hand_computed_least_squares_slope():
    x, y = np.array([1.0, 2.0, 4.0, 7.0]), np.array([2.0, 3.0, 9.0, 10.0])
    # mean x 3.5, mean y 6: sum dx*dy = 10 + 4.5 + 1.5 + 14 = 30, sum dx^2 = 21
    assert ols_slope(x, y) == pytest.approx(30 / 21, abs=1e-12)


def test_ols_slope_drops_missing_points_and_is_undefined_on_a_constant_axis():
    assert ols_slope([1, 2, np.nan, 3], [2, 4, 100, 6]) == pytest.approx(2.0)
    assert math.isnan(ols_slope([1, 1, 1], [1, 2, 3]))
    assert math.isnan(ols_slope([1], [1]))


def test_spearman_rho_is_scipys_and_undefined_where_scipy_warns():
    x, y = np.array([0, 10, 20, 30, 40.0]), np.array([0.1, 0.3, 0.2, 0.5, 0.4])
    assert spearman_rho(x, y) == pytest.approx(stats.spearmanr(x, y).statistic, abs=1e-12)
    assert spearman_rho(x, y) == pytest.approx(0.8)  # 1 - 6 * (1 + 1 + 1 + 1) / (5 * 24)
    assert math.isnan(spearman_rho(x[:2], y[:2]))  # fewer than 3 levels
    assert math.isnan(spearman_rho(x, np.full(5, 0.3)))  # a constant side
    assert math.isnan(spearman_rho(x, np.array([0.1, np.nan, 0.2, 0.5, 0.4])))


def test_mean_rho_averages_the_defined_series_only():
    levels = np.array([0, 1, 2, 3.0])
    scores = np.array([[1, 2, 3, 4.0], [4, 3, 2, 1.0], [1, 1, 1, 1.0]])  # rho 1, -1, undefined
    assert mean_rho(levels, scores[:2]) == 0.0
    assert mean_rho(levels, scores[[0, 2]]) == 1.0
    assert math.isnan(nanmean([math.nan]))


def test_bootstrap_interval_is_the_percentile_interval_of_a_plain_loop():
    levels = np.array([0, 10, 20, 30, 40, 50.0])
    scores = np.array([[0.10, 0.12, 0.11, 0.15, 0.16, 0.2], [0.3, 0.28, 0.31, 0.27, 0.33, 0.32]])
    n_boot, seed = 300, 7
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, levels.size, size=(n_boot, levels.size))
    means = []
    for draw in draws:
        if np.unique(draw).size < 3:
            continue
        rhos = [stats.spearmanr(levels[draw], row[draw]).statistic for row in scores
                if np.ptp(row[draw]) > 0]
        rhos = [r for r in rhos if not math.isnan(r)]
        if rhos:
            means.append(np.mean(rhos))
    expected = np.percentile(means, [2.5, 97.5])
    assert bootstrap_mean_rho(levels, scores, n_boot, seed) == pytest.approx(tuple(expected),
                                                                             abs=1e-12)
    assert all(map(math.isnan, bootstrap_mean_rho(levels[:2], scores[:, :2])))
