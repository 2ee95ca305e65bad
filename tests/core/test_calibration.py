"""Calibrated alignment: permutation null through the layer search, p-values, bootstrap CI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from scipy import stats

from platonic.core.alignment import LayerKernels, compute_score, exhaustive_search, prepare_features
from platonic.core.calibration import (
    PermutedKernels,
    bootstrap_ci,
    calibrate,
    one_cpu_thread,
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


def best_over_grid(x: torch.Tensor, y: torch.Tensor, metric: str, topk: int | None) -> float:
    """The largest score over every layer pair, whatever its sign: the plain per-pair loop."""
    return float(np.max(exhaustive_search(x, y, metric, topk)[2]))


@pytest.mark.parametrize("metric, topk, shared, layers", [
    ("mutual_knn", 5, 1.0, (3, 2)), ("cycle_knn", 5, 1.0, (3, 2)), ("lcs_knn", 5, 1.0, (3, 2)),
    ("cka", 5, 1.0, (3, 2)), ("cknna", 5, 1.0, (3, 2)),
    # unrelated features: many permutations whose best value is 0 (no shared neighbour at all)
    # or negative (unbiased CKA), which are null values like any other
    ("mutual_knn", 1, 0.0, (1, 1)), ("unbiased_cka", None, 0.0, (1, 1))])
def test_null_equals_scores_recomputed_on_permuted_features(metric, topk, shared, layers):
    """Each null value is the full search on y's rows shuffled, computed from scratch: the best
    score over layer pairs, whatever its sign."""
    x, y = _pair(0, n=60, shared_weight=shared, layers=layers)
    kx, ky = LayerKernels(x), LayerKernels(y)
    perms = permutations(60, 12, seed=3)
    null, _ = permutation_null(kx, ky, metric, topk, perms)
    oracle = [best_over_grid(x, y[perm], metric, topk) for perm in perms]
    np.testing.assert_allclose(null, oracle, rtol=1e-6, atol=1e-7)
    if not shared:
        assert min(oracle) <= 0  # the case a null of positive maxima only would get wrong


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


def test_calibration_is_the_published_formulas_on_the_null():
    """Null mean, 95th percentile, p-value and calibrated score against the null recomputed from
    scratch (the per-pair loop on y's shuffled rows): a chance level well above 0 makes a wrong
    denominator (1 + null mean) or a p-value without its +1 differ."""
    x, y = _pair(8, n=40, shared_weight=0.8, layers=(2, 2))
    cal = calibrate(LayerKernels(x), LayerKernels(y), "mutual_knn", 5, n_null=30, n_boot=0, seed=4)
    null = np.array([best_over_grid(x, y[perm], "mutual_knn", 5)
                     for perm in permutations(40, 30, seed=4)])
    score = compute_score(x, y, "mutual_knn", 5)[0]
    mean = null.mean()
    assert 0.1 < mean < score < 1 and (null >= score).sum() > 0  # the formulas' terms all matter
    assert cal.score == score and cal.n_null == 30
    assert cal.null_mean == pytest.approx(mean, abs=1e-12)
    assert cal.null_p95 == pytest.approx(np.percentile(null, 95), abs=1e-12)
    assert cal.p_value == (1 + (null >= score).sum()) / 31
    assert cal.calibrated == pytest.approx((score - mean) / (1 - mean), abs=1e-12)


def _undefined_pair(metric: str = "unbiased_cka") -> tuple[torch.Tensor, torch.Tensor]:
    """Unrelated one-layer features whose grid has no positive value: an undefined score."""
    for seed in range(100):
        x, y = _pair(300 + seed, n=30, layers=(1, 1))
        if np.isnan(compute_score(x, y, metric)[0]):
            return x, y
    raise AssertionError("no undefined pair among 100 seeds")


def test_undefined_score_has_undefined_p_value_and_calibrated_score():
    """No positive value in the layer grid: the score, its p-value and calibrated score are
    undefined (null in JSON), never the smallest p-value; the null itself is still defined."""
    x, y = _undefined_pair()
    cal = calibrate(LayerKernels(x), LayerKernels(y), "unbiased_cka", None, n_null=50, n_boot=10)
    assert np.isnan(cal.score) and np.isnan(cal.p_value) and np.isnan(cal.calibrated)
    assert np.isfinite(cal.null_mean) and np.isfinite(cal.null_p95)
    stored = cal.to_json()
    assert stored["score"] is None and stored["p_value"] is None and stored["calibrated"] is None
    assert stored["null_mean"] == cal.null_mean


def test_unbiased_cka_null_is_finite_near_zero_and_p_values_uniform():
    """unbiased_cka's chance level is 0: permutations whose best layer pair is <= 0 are part of
    the null. 1000 permutations of one unrelated one-layer pair (a grid of one value, whose
    permutation mean is exactly 0) give a finite null mean near 0; over many unrelated pairs the
    p-values are uniform (an undefined score, p undefined, counts as 1)."""
    with one_cpu_thread(torch.device("cpu")):  # thousands of tiny grids: threads cost more
        x, y = _pair(400, n=30, layers=(1, 1))
        cal = calibrate(LayerKernels(x), LayerKernels(y), "unbiased_cka", None, n_null=1000,
                        n_boot=0)
        assert np.isfinite([cal.null_mean, cal.null_p95]).all()
        assert abs(cal.null_mean) < 0.005 and cal.null_p95 > 0
        p_values = []
        for seed in range(80):
            x, y = _pair(500 + seed, n=16, layers=(2, 2))
            cal = calibrate(LayerKernels(x), LayerKernels(y), "unbiased_cka", None, n_null=39,
                            n_boot=0, seed=seed)
            assert np.isfinite(cal.null_mean)
            p_values.append(1.0 if np.isnan(cal.p_value) else cal.p_value)
    assert stats.kstest(p_values, "uniform").pvalue > 0.01
    assert 0.1 < np.mean(np.asarray(p_values) <= 0.25) < 0.4


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
    from platonic.io.features import feature_path, load_features
    from platonic.io.results import csv_path, load_result
    from tests.stages.test_measure import LANG, VIS, run, write_models

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
    from platonic.io.features import verified_fingerprint as fp
    from platonic.stages.measure import pair_seed

    px = feature_path(tmp_path / "feats", "toy", "s", LANG[0], "avg")
    py = feature_path(tmp_path / "feats", "toy", "s", VIS[1], "cls")
    again = calibrate(load(VIS[1], "cls"), load(LANG[0], "avg"), "mutual_knn", 5, 50, 100,
                      pair_seed(0, fp(px), fp(py)))
    assert again == cal

    stamp = out.stat().st_mtime_ns
    run(tmp_path, "--null", "50", "--bootstrap", "100")
    assert out.stat().st_mtime_ns == stamp  # up to date: nothing recomputed
    # a result whose null was made by the rules before NULL_VERSION 2 is remade
    data = json.loads(out.read_text())
    assert data["settings"]["null"].pop("version") == 2
    out.write_text(json.dumps(data))
    run(tmp_path, "--null", "50", "--bootstrap", "100")
    assert json.loads(out.read_text())["settings"]["null"]["version"] == 2
    run(tmp_path, "--null", "20", "--bootstrap", "100")
    assert load_result(out).calibration[(0, 1)].n_null == 20
    run(tmp_path)
    assert "calibration" not in json.loads(out.read_text())


@pytest.mark.parametrize("flags, message", [
    (("--bootstrap", "-1"), "the bootstrap needs 0 or more replicates, got -1"),
    (("--null", "-1"), "the null needs at least 1 permutation, got -1 (0: no null)")])
def test_bad_counts_are_refused_with_or_without_null(tmp_path, flags, message):
    """Checked before any work, also when they would not be used: a calibrated result stays."""
    from tests.stages.test_measure import run, write_models

    write_models(tmp_path / "feats")
    out = run(tmp_path, "--null", "5", "--bootstrap", "10")
    before = out.read_bytes()
    with pytest.raises(PlatonicError) as err:
        run(tmp_path, *flags)
    assert str(err.value) == message and out.read_bytes() == before


def test_measure_bad_null_is_one_line_error(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    proc = subprocess.run([sys.executable, str(root / "measure_alignment.py"), "--null", "-3"],
                          capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "at least 1 permutation" in proc.stderr.strip().splitlines()[-1]


@pytest.mark.parametrize("metric", ["mutual_knn", "cycle_knn", "lcs_knn", "edit_distance_knn"])
def test_per_sample_terms_average_to_the_metric(metric):
    """The terms the bootstrap resamples: their mean is the published metric on that layer pair."""
    from platonic.core.calibration import per_sample_terms
    from platonic.core.metrics import get_metric

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
