"""platonic.Alignment: scoring a user's features against reference feature files on disk."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

import platonic
from platonic.core.alignment import exhaustive_search, prepare_features
from platonic.data.datasets import load_data
from platonic.errors import PlatonicError
from platonic.io.features import feature_path, save_features
from platonic.io.fingerprints import texts_fingerprint
from platonic.io.storage import level_dir

N = 24
LEVEL = 30
MODELS = ["org/lm-a", "org/lm-b"]


def _feats(seed: int, layers: int, dim: int = 12) -> torch.Tensor:
    return torch.randn(N, layers, dim, generator=torch.Generator().manual_seed(seed))


@pytest.fixture
def template(tmp_path) -> str:
    """Two language models' features at LEVEL of the embedded set, as extract writes them."""
    template = str(tmp_path / "u={}_features")
    texts = load_data("embedded", "seed0", N).level_texts(LEVEL)
    for seed, model in enumerate(MODELS):
        path = feature_path(level_dir(template, LEVEL), "embedded", "seed0", model, "avg")
        save_features(path, _feats(seed, layers=3 + seed),
                      {"model": model, "texts_sha256": texts_fingerprint(texts)})
    return template


def _reference(template: str, **kwargs) -> platonic.Alignment:
    return platonic.Alignment(features_dir=template, models=MODELS, dataset="embedded",
                              modality="language", level=LEVEL, **kwargs)


@pytest.mark.parametrize("metric", ["mutual_knn", "cka", "cknna"])
def test_scores_equal_the_exhaustive_per_pair_loop(template, metric):
    ref = _reference(template)
    mine = _feats(seed=7, layers=4)
    scores = ref.score(mine, metric=metric, topk=5)
    for seed, model in enumerate(MODELS):
        score, layers, _ = exhaustive_search(prepare_features(_feats(seed, layers=3 + seed)),
                                             prepare_features(mine), metric, topk=5)
        assert scores[model][0] == pytest.approx(score, abs=1e-6) and scores[model][1] == layers


@pytest.mark.parametrize("bad", ["nan", "inf", N, N + 1])
def test_a_failing_call_leaves_the_reference_unchanged(template, bad):
    ref = _reference(template)
    mine = _feats(seed=7, layers=2)
    ref.score(mine, topk=5)  # the reference kernels are now cached
    broken, topk = mine.clone(), 5
    if isinstance(bad, int):
        topk = bad
    else:
        broken[3, 1, 2] = float(bad)
    with pytest.raises(PlatonicError) as err:
        ref.score(broken, topk=topk)
    assert "\n" not in str(err.value)
    assert (f"topk={bad}" if isinstance(bad, int) else "sample 3, layer 1") in str(err.value)
    for metric in ("mutual_knn", "cknna"):
        assert ref.score(mine, metric=metric, topk=5) == _reference(template).score(mine, metric=metric, topk=5)


@pytest.mark.parametrize("topk", [N, N + 1])
def test_topk_at_n_fails_before_touching_the_cached_kernels(template, topk):
    ref = _reference(template)
    kernels = ref.kernels(MODELS[0])
    grams = kernels.grams.clone()
    with pytest.raises(PlatonicError, match="topk"):
        kernels.knn(topk)
    assert torch.equal(kernels.grams, grams)


def test_two_dimensional_features_are_one_layer(template):
    ref = _reference(template)
    flat = _feats(seed=3, layers=1)
    assert ref.score(flat[:, 0].numpy(), topk=5) == ref.score(flat, topk=5)


def test_reference_kernels_are_built_once(template):
    ref = _reference(template)
    ref.score(_feats(seed=1, layers=2), topk=5)
    first = ref.kernels(MODELS[0])
    ref.score(_feats(seed=2, layers=2), topk=5)
    assert ref.kernels(MODELS[0]) is first


def test_get_data_returns_the_samples_of_the_features(template):
    ref = _reference(template)
    data = load_data("embedded", "seed0", N)
    assert ref.get_data("text") == data.level_texts(LEVEL)
    images = ref.get_data("image")
    assert len(images) == N and all(a.tobytes() == b.tobytes() for a, b in zip(images, data.images, strict=True))


def test_get_data_refuses_other_captions(template):
    level_dir(template, LEVEL).rename(level_dir(template, LEVEL + 10))
    ref = platonic.Alignment(features_dir=template, models=MODELS, dataset="embedded",
                             modality="language", level=LEVEL + 10)
    with pytest.raises(PlatonicError, match="differ from those the features of org/lm-a"):
        ref.get_data("text")


def test_an_undefined_score_has_no_p_value_and_bad_counts_are_refused(template):
    """No positive value in the grid: score, p-value and calibrated score are all undefined
    (never the smallest p-value); a bad bootstrap count is an error even without a null."""
    ref = _reference(template)
    undefined = next(feats for feats in (_feats(seed, layers=1) for seed in range(10, 300))
                     if np.isnan(ref.score(feats, metric="unbiased_cka")[MODELS[0]][0]))
    score, layers, cal = ref.score(undefined, metric="unbiased_cka", null=30)[MODELS[0]]
    assert np.isnan(score) and layers is None and np.isfinite(cal.null_mean)
    assert np.isnan(cal.p_value) and np.isnan(cal.calibrated)
    with pytest.raises(PlatonicError, match="bootstrap needs 0 or more replicates, got -1"):
        ref.score(undefined, bootstrap=-1)


def test_sample_count_mismatch_is_a_clear_error(template):
    with pytest.raises(PlatonicError, match=f"features have {N - 1} rows .* hold {N} samples"):
        _reference(template).score(np.zeros((N - 1, 8), dtype=np.float32))


def test_missing_reference_files_are_all_listed(template):
    with pytest.raises(PlatonicError, match="2 reference feature file.*missing") as err:
        platonic.Alignment(features_dir=template, models=["org/none-1", "org/none-2"],
                           dataset="embedded", modality="language", level=LEVEL)
    assert "org_none-1_pool-avg" in str(err.value) and "org_none-2_pool-avg" in str(err.value)


def test_template_without_level_is_a_clear_error(template):
    with pytest.raises(PlatonicError, match="needs a uniqueness level"):
        platonic.Alignment(features_dir=template, models=MODELS, dataset="embedded")


def test_import_platonic_stays_light():
    code = "import sys, platonic; assert 'torch' not in sys.modules; print(platonic.Alignment)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "platonic.api.Alignment" in proc.stdout
