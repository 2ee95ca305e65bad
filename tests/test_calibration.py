"""Calibrated alignment: permutation null through the layer search, p-values, bootstrap CI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from scipy import stats

from platonic.alignment import LayerKernels, compute_score, prepare_features
from platonic.calibration import (
    PermutedKernels,
    bootstrap_ci,
    calibrate,
    permutation_null,
    permutations,
)
from platonic.errors import PlatonicError


def _pair(seed: int, n: int = 120, shared_weight: float = 0.0, layers=(3, 2)):
    """Two layered feature sets; `shared_weight` > 0 plants a common 6-dim structure."""
    g = torch.Generator().manual_seed(seed)
    shared = torch.randn(n, 6, generator=g)
    out = []
    for num_layers, dim in zip(layers, (16, 12), strict=True):
        feats = torch.randn(n, num_layers, dim, generator=g)
        feats[:, -1, :6] += shared_weight * shared
        out.append(feats)
    return out


@pytest.mark.parametrize("metric", ["mutual_knn", "cycle_knn", "lcs_knn", "cka", "cknna"])
def test_null_equals_scores_recomputed_on_permuted_features(metric):
    """Each null value is the full search on y's rows shuffled, computed from scratch."""
    x, y = _pair(0, n=60, shared_weight=1.0)
    kx, ky = LayerKernels(x), LayerKernels(y)
    perms = permutations(60, 6, seed=3)
    null, _ = permutation_null(kx, ky, metric, 5, perms)
    oracle = [compute_score(x, y[perm], metric, 5)[0] for perm in perms]
    np.testing.assert_allclose(null, oracle, rtol=1e-6, atol=1e-9)


def test_permuted_view_indexes_kernels_and_neighbour_lists():
    x, _ = _pair(1, n=30)
    base = LayerKernels(x)
    perm = permutations(30, 1, seed=0)[0]
    view, fresh = PermutedKernels(base, perm), LayerKernels(x[perm])
    torch.testing.assert_close(view.grams, fresh.grams)
    assert torch.equal(view.knn(4), fresh.knn(4))


def test_planted_structure_is_significant():
    x, y = _pair(2, shared_weight=3.0)
    cal = calibrate(LayerKernels(x), LayerKernels(y), "mutual_knn", 5, n_null=200, n_boot=200)
    assert cal.p_value < 0.01 and cal.p_value == pytest.approx(1 / 201)
    assert cal.score > cal.null_p95 > cal.null_mean and cal.calibrated > 0.2
    assert cal.ci_low <= cal.score <= cal.ci_high


def test_independent_features_give_uniform_p_values_and_zero_calibrated_score():
    """Over many seeds: p-values spread evenly over (0, 1] (KS test and deciles), the
    calibrated score averages 0, and the null sits above the single-pair chance k/(N-1)
    (the max over layer pairs inflates chance)."""
    p_values, calibrated, null_means = [], [], []
    for seed in range(200):
        x, y = _pair(100 + seed, n=100)
        cal = calibrate(LayerKernels(x), LayerKernels(y), "mutual_knn", 10, n_null=99, n_boot=0,
                        seed=seed)
        p_values.append(cal.p_value)
        calibrated.append(cal.calibrated)
        null_means.append(cal.null_mean)
    assert stats.kstest(p_values, "uniform").pvalue > 0.01
    deciles = np.histogram(p_values, bins=10, range=(0, 1))[0]
    assert deciles.min() >= 8 and deciles.max() <= 36  # 20 expected per decile
    assert abs(np.mean(calibrated)) < 0.005 and np.std(calibrated) < 0.02
    assert np.mean(null_means) > 10 / 99


def test_bootstrap_ci_resamples_per_sample_overlaps():
    """mutual_knn CI against a plain loop over samples with sets, on the same draws."""
    x, y = _pair(4, n=50, shared_weight=2.0)
    kx, ky = LayerKernels(x), LayerKernels(y)
    low, high = bootstrap_ci(kx, ky, "mutual_knn", 5, (2, 1), n_boot=300, seed=9)
    xa, yb = torch.nn.functional.normalize(x[:, 2], dim=-1), torch.nn.functional.normalize(y[:, 1], dim=-1)
    overlaps = []
    for i in range(50):
        sx, sy = xa @ xa[i], yb @ yb[i]
        sx[i] = sy[i] = -np.inf
        overlaps.append(len(set(sx.topk(5).indices.tolist()) & set(sy.topk(5).indices.tolist())) / 5)
    draws = np.random.default_rng(9).integers(0, 50, size=(300, 50))
    expected = np.percentile(np.asarray(overlaps)[draws].mean(axis=1), [2.5, 97.5])
    np.testing.assert_allclose([low, high], expected)
    assert np.mean(overlaps) == pytest.approx(compute_score(x[:, 2:3], y[:, 1:2], "mutual_knn", 5)[0])


def test_bad_counts_are_clear_errors():
    x, y = _pair(5, n=20)
    with pytest.raises(PlatonicError, match="at least 1 permutation"):
        calibrate(LayerKernels(x), LayerKernels(y), n_null=0)
    with pytest.raises(PlatonicError, match="0 or more replicates"):
        calibrate(LayerKernels(x), LayerKernels(y), topk=3, n_null=5, n_boot=-1)


def test_measure_null_writes_reuses_and_recomputes(tmp_path):
    from platonic.features import feature_path, load_features
    from platonic.results import csv_path, load_result
    from tests.test_measure import LANG, VIS, run, write_models

    write_models(tmp_path / "feats")
    out = run(tmp_path, "--null", "50", "--bootstrap", "100")
    result = load_result(out)
    assert set(result.calibration) == {(i, j) for i in range(len(LANG)) for j in range(len(VIS))}
    header = csv_path(out).read_text().splitlines()[0].split(",")
    assert {"null_mean", "null_p95", "p_value", "calibrated", "ci_low", "ci_high"} <= set(header)
    cal = result.calibration[(0, 1)]
    assert cal.score == result.scores[0, 1] and cal.n_null == 50 and cal.n_bootstrap == 100
    assert 1 / 51 <= cal.p_value <= 1

    def load(model, pool):
        path = feature_path(tmp_path / "feats", "toy", "s", model, pool)
        return LayerKernels(prepare_features(load_features(path).feats))

    # the stored null is the API's calibrate on the same pair and seed: metric(y, x), x permuted
    from platonic.features import verified_fingerprint as fp
    from platonic.measure import pair_seed

    px = feature_path(tmp_path / "feats", "toy", "s", LANG[0], "avg")
    py = feature_path(tmp_path / "feats", "toy", "s", VIS[1], "cls")
    again = calibrate(load(VIS[1], "cls"), load(LANG[0], "avg"), "mutual_knn", 5, 50, 100,
                      pair_seed(0, fp(px), fp(py)))
    assert again == cal

    stamp = out.stat().st_mtime_ns
    run(tmp_path, "--null", "50", "--bootstrap", "100")
    assert out.stat().st_mtime_ns == stamp  # up to date: nothing recomputed
    run(tmp_path, "--null", "20", "--bootstrap", "100")
    assert load_result(out).calibration[(0, 1)].n_null == 20
    run(tmp_path)
    assert "calibration" not in json.loads(out.read_text())


def test_measure_bad_null_is_one_line_error(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, str(root / "measure_alignment.py"), "--null", "-3"],
                          capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "at least 1 permutation" in proc.stderr.strip().splitlines()[-1]


@pytest.mark.parametrize("metric", ["mutual_knn", "cycle_knn", "lcs_knn", "edit_distance_knn"])
def test_per_sample_terms_average_to_the_metric(metric):
    """The terms the bootstrap resamples: their mean is the published metric on that layer pair."""
    from platonic.calibration import per_sample_terms
    from platonic.metrics import get_metric

    x, y = _pair(6, n=40, shared_weight=2.0)
    terms = per_sample_terms(LayerKernels(x), LayerKernels(y), metric, 4, 3, 1)
    xa = torch.nn.functional.normalize(x[:, 2], dim=-1)
    yb = torch.nn.functional.normalize(y[:, 0], dim=-1)
    assert terms.shape == (40,)
    assert terms.mean() == pytest.approx(get_metric(metric).fn(xa, yb, topk=4))


def test_bootstrap_ci_of_cka_and_none_for_cknna():
    x, y = _pair(7, n=40, shared_weight=2.0)
    kx, ky = LayerKernels(x), LayerKernels(y)
    low, high = bootstrap_ci(kx, ky, "cka", None, (2, 1), n_boot=50, seed=0)
    score = compute_score(x[:, 2:3], y[:, 1:2], "cka")[0]
    assert low <= score <= high
    assert all(np.isnan(bootstrap_ci(kx, ky, "cknna", 5, (2, 1), n_boot=50, seed=0)))
