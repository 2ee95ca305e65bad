"""The large-N engine: row blocks, panels, feature-space products and files read layer by layer
must give what the dense computation and the published per-pair metrics give."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from platonic.core import hsic, metrics, neighbours
from platonic.core.alignment import (
    LayerKernels,
    exhaustive_search,
    load_kernels,
    prepare_features,
    score_grid,
)
from platonic.core.calibration import bootstrap_ci, calibrate, permutation_null, permutations
from platonic.core.layers import FileLayers, OutlierThreshold
from platonic.io import features
from platonic.io.features import feature_path, save_features

KNN_METRICS = ["mutual_knn", "cycle_knn", "lcs_knn", "edit_distance_knn"]


def inputs(kind: str, n: int, layers=(3, 2), dims=(24, 16), seed=0):
    """[N, L, D] features of x and y: random, clustered (few tight groups), or with duplicated
    rows (the same samples repeated in both models, so neighbour ties are exact)."""
    g = torch.Generator().manual_seed(seed)
    shared = torch.randn(n, 6, generator=g)
    out = []
    for num_layers, dim in zip(layers, dims, strict=True):
        feats = torch.randn(n, num_layers, dim, generator=g)
        feats[:, -1, :6] += 2 * shared
        out.append(feats)
    if kind == "clustered":
        centres = torch.randn(5, 1, 1, generator=g) * 4
        group = torch.randint(0, 5, (n,), generator=g)
        out = [f * 0.2 + centres[group] for f in out]
    elif kind == "duplicated":
        source = torch.randint(0, n // 3, (n,), generator=g)
        keep = torch.rand(n, generator=g) < 0.5
        source[keep] = torch.arange(n)[keep]
        out = [f[source] for f in out]
    return [prepare_features(f) for f in out]


def dense_knn(feats: torch.Tensor, topk: int) -> torch.Tensor:
    """The dense path, written out: the [L + 1, N, N] stack (concatenation: the layers'
    products added in layer order), normalised by its diagonal, own entry excluded, topk."""
    grams = torch.stack([feats[:, i] @ feats[:, i].T for i in range(feats.shape[1])])
    concat = torch.zeros_like(grams[0])
    for g in grams:
        concat += g
    grams = torch.cat([concat[None], grams])
    norms = grams.diagonal(dim1=1, dim2=2).sqrt().clamp_min(1e-12)
    grams = grams / norms[:, :, None] / norms[:, None, :]
    for g in grams:
        g.fill_diagonal_(float("-inf"))
    return grams.topk(topk, dim=2).indices


@pytest.fixture
def small_blocks(monkeypatch):
    """Budgets that force 64-row blocks and 128-row panels (several of each at N >= 200)."""
    monkeypatch.setattr(neighbours, "BLOCK_BYTES", 1)
    monkeypatch.setattr(neighbours, "PANEL_BYTES", 1)
    monkeypatch.setattr(hsic, "PANEL_BYTES", 1)


@pytest.mark.parametrize("n", [97, 200, 777])
@pytest.mark.parametrize("kind", ["random", "clustered", "duplicated"])
def test_blocked_lists_are_bitwise_the_dense_stacks(kind, n, monkeypatch):
    x, _ = inputs(kind, n, layers=(18, 1), dims=(12, 6))  # 18 layers: the layer sum has 2 levels
    expected = dense_knn(x, 7)
    assert torch.equal(LayerKernels(x).knn(7), expected)
    monkeypatch.setattr(neighbours, "BLOCK_BYTES", 1)
    monkeypatch.setattr(neighbours, "PANEL_BYTES", 1)
    assert torch.equal(LayerKernels(x).knn(7), expected)


@pytest.mark.parametrize("by_products", [True, False])
def test_kernel_entries_at_list_positions_are_the_dense_stacks(by_products, small_blocks):
    """cknna's kernel entries (i, j) at neighbour positions: from row blocks (the very bits of
    the dense stack) or from dot products of the gathered rows (within float32 rounding)."""
    x, _ = inputs("duplicated", 200)
    kx = LayerKernels(x)
    cols = torch.randint(0, 200, (200, 9), generator=torch.Generator().manual_seed(0))
    entries = neighbours.row_entries(kx.source, kx.norms, cols, by_products)
    expected = kx.grams.gather(2, cols.expand(len(kx), -1, -1))
    if by_products:
        assert torch.equal(entries, expected)
    else:
        torch.testing.assert_close(entries, expected, rtol=0, atol=1e-6)


CASES = [("mutual_knn", {}), ("cycle_knn", {}), ("lcs_knn", {}), ("edit_distance_knn", {}),
         ("cka", {}), ("unbiased_cka", {}), ("cka", {"kernel_metric": "rbf"}),
         ("cknna", {}), ("cknna", {"unbiased": False}), ("cknna", {"distance_agnostic": True})]


@pytest.mark.parametrize("kind", ["random", "clustered", "duplicated"])
@pytest.mark.parametrize(("metric", "extra"), CASES, ids=[f"{m}{e}" for m, e in CASES])
def test_blocked_grids_equal_the_per_pair_loop(metric, extra, kind, small_blocks):
    """kNN metrics: the very grid of the loop (same lists, ties included); cknna (float32
    kernel entries, as the loop's): within 1e-6 of the loop; linear CKA (feature space here):
    within 1e-6 of the loop run in float64 (the float32 loop itself is off by up to 4e-6 on
    clustered rows, whose kernel entries all lie near 1); the rbf kernel (float32 kernel rows,
    as the dense path, which is off by 2e-6 there too): within 1e-6, 1e-5 on clustered rows."""
    x, y = inputs(kind, 200)
    grid = score_grid(LayerKernels(x), LayerKernels(y), metric, 6, **extra)
    if metric in KNN_METRICS:
        np.testing.assert_array_equal(grid, exhaustive_search(x, y, metric, topk=6)[2])
    elif metric == "cknna" or extra.get("kernel_metric") == "rbf":
        tolerance = 1e-5 if kind == "clustered" and metric == "cka" else 1e-6
        np.testing.assert_allclose(grid, exhaustive_search(x, y, metric, topk=6, **extra)[2],
                                   atol=tolerance)
    else:
        oracle = exhaustive_search(x.double(), y.double(), metric, topk=6, **extra)[2]
        np.testing.assert_allclose(grid, oracle, atol=1e-6)


@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("unbiased", [False, True])
@pytest.mark.parametrize("kind", ["random", "clustered", "duplicated"])
def test_both_cka_paths_equal_the_published_metric(kind, unbiased, normalize, small_blocks):
    """Both ways against the published metric run in float64: feature space within 1e-6
    everywhere; kernel rows (the float32 arithmetic of the dense path) within 1e-6 but on
    clustered rows, where float32 kernel entries near 1 cost it (as the dense path) 4e-6."""
    x, y = inputs(kind, 150, layers=(3, 2))
    metric = "unbiased_cka" if unbiased else "cka"
    oracle = exhaustive_search(x.double(), y.double(), metric, normalize=normalize)[2]
    for path in (hsic.feature_hsic, hsic.gram_hsic):
        kx, ky = LayerKernels(x, normalize), LayerKernels(y, normalize)
        cross, self_x, self_y = path(kx, ky, hsic.Kind(unbiased))
        grid = (cross / (torch.sqrt(torch.outer(self_x, self_y)) + 1e-6)).numpy()
        tolerance = 1e-5 if path is hsic.gram_hsic and kind == "clustered" else 1e-6
        np.testing.assert_allclose(grid, oracle, atol=tolerance, err_msg=path.__name__)


def test_the_cheaper_cka_path_is_chosen():
    wide = LayerKernels(torch.randn(64, 2, 512))
    narrow = LayerKernels(torch.randn(4096, 2, 8))
    kind = hsic.Kind(True)
    assert hsic.gram_cost(wide, wide, kind) < hsic.feature_cost(wide, wide, kind)
    assert hsic.feature_cost(narrow, narrow, kind) < hsic.gram_cost(narrow, narrow, kind)


@pytest.mark.parametrize("metric", ["mutual_knn", "cycle_knn", "unbiased_cka", "cknna"])
def test_blocked_null_equals_scores_on_permuted_features(metric, small_blocks, monkeypatch):
    """Each null value is the per-pair loop on y's rows shuffled; the CKA family in feature
    space (the kernels not kept whole) and from kernel rows."""
    x, y = inputs("random", 130)
    perms = permutations(130, 3, seed=1)
    oracle = [np.nanmax(exhaustive_search(x, y[perm], metric, topk=5)[2]) for perm in perms]
    monkeypatch.setattr(hsic, "DENSE_BYTES", 0)
    null, _ = permutation_null(LayerKernels(x), LayerKernels(y), metric, 5, perms)
    np.testing.assert_allclose(null, oracle, atol=1e-6)
    if metric == "unbiased_cka":
        monkeypatch.setattr(hsic, "feature_cost", lambda *a: float("inf"))
        null, _ = permutation_null(LayerKernels(x), LayerKernels(y), metric, 5, perms)
        np.testing.assert_allclose(null, oracle, atol=1e-6)


@pytest.mark.parametrize("metric", ["cka", "unbiased_cka"])
def test_feature_space_bootstrap_equals_the_metric_on_resampled_rows(metric):
    x, y = inputs("random", 400, layers=(2, 2), dims=(8, 6))
    kx, ky = LayerKernels(x), LayerKernels(y)
    low, high = bootstrap_ci(kx, ky, metric, None, (1, -1), n_boot=40, seed=3)
    draws = np.random.default_rng(3).integers(0, 400, size=(40, 400))
    fn = metrics.get_metric(metric).fn
    a, b = kx.candidate(2), ky.candidate(0)
    values = [fn(a[d], b[d]) for d in torch.from_numpy(draws)]
    np.testing.assert_allclose([low, high], np.percentile(values, [2.5, 97.5]), atol=1e-6)


def test_calibration_at_several_blocks_equals_the_dense_default(small_blocks, monkeypatch):
    x, y = inputs("duplicated", 200)
    blocked = calibrate(LayerKernels(x), LayerKernels(y), "mutual_knn", 5, n_null=20, n_boot=50)
    monkeypatch.setattr(neighbours, "BLOCK_BYTES", 1 << 30)
    monkeypatch.setattr(neighbours, "PANEL_BYTES", 1 << 30)
    assert calibrate(LayerKernels(x), LayerKernels(y), "mutual_knn", 5, n_null=20, n_boot=50) == blocked


# ---- feature files read layer by layer --------------------------------------------------------

def raw_feats(n=150, layers=3, dim=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    feats = torch.randn(n, layers, dim, generator=g) ** 3  # heavy tails: the clamp matters
    feats[:5] = 0.0  # ties at zero
    return feats


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("exact", [False, True])
@pytest.mark.parametrize("layer_dims", [None, [4, 10, 7]])
def test_streamed_threshold_equals_remove_outliers(exact, layer_dims, dtype):
    feats = raw_feats().to(dtype)
    if layer_dims:
        for layer, d in enumerate(layer_dims):
            feats[:, layer, d:] = 0
    whole = metrics.remove_outliers(feats.float(), 0.95, exact=exact, layer_dims=layer_dims)
    threshold = OutlierThreshold(len(feats), layer_dims, exact=exact)
    for start in range(0, len(feats), 64):
        threshold.add(feats[start:start + 64])
    for start in range(0, len(feats), 64):
        if threshold.needs_refine:
            threshold.refine(feats[start:start + 64])
    assert torch.equal(feats.float().clamp(-threshold.value(), threshold.value()), whole)


@pytest.mark.parametrize("precise", [False, True])
def test_a_file_read_layer_by_layer_scores_as_the_file_loaded_whole(tmp_path, monkeypatch, precise):
    monkeypatch.setattr(features, "CHUNK_BYTES", 1)  # 64-row chunks: 3 of them
    paths = []
    for i, dims in enumerate(([7, 10, 10], [5, 10])):
        feats = raw_feats(layers=len(dims), seed=i).bfloat16()
        path = feature_path(tmp_path, "toy", "s", f"m{i}", "avg")
        save_features(path, feats, {"model": f"m{i}", "layer_dims": dims})
        paths.append(path)
    streamed = [load_kernels(p, precise=precise) for p in paths]
    assert all(isinstance(k.source, FileLayers) for k in streamed)
    whole = [LayerKernels(prepare_features(features.load_features(p).feats, exact=precise,
                                           layer_dims=features.read_meta(p)["layer_dims"]))
             for p in paths]
    assert torch.equal(streamed[0].source.layer(1), whole[0].source.layer(1))
    for metric in ("mutual_knn", "unbiased_cka"):
        np.testing.assert_array_equal(score_grid(*streamed, metric, 5), score_grid(*whole, metric, 5))


def test_a_streamed_file_with_nan_or_changed_bytes_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(features, "CHUNK_BYTES", 1)
    feats = raw_feats()
    path = tmp_path / "m.safetensors"
    save_features(path, feats, {"model": "m"})
    bad = feats.clone()
    bad[100, 2, 3] = float("nan")
    meta = features.read_meta(path)
    save_file({"feats": bad}, str(path), metadata={"platonic": __import__("json").dumps(
        {**meta, "content_sha256": features.tensors_sha256({"feats": bad})})})
    with pytest.raises(metrics.PlatonicError, match=r"NaN or inf in layer\(s\) \[2\]"):
        load_kernels(path)
    save_file({"feats": feats * 2}, str(path), metadata={"platonic": __import__("json").dumps(meta)})
    with pytest.raises(metrics.PlatonicError, match="do not match their recorded SHA-256"):
        load_kernels(path)
    with pytest.raises(metrics.PlatonicError, match="do not match their recorded SHA-256"):
        features.verified_fingerprint(path)


@pytest.mark.parametrize("dense_bytes", [0, 64 << 20], ids=["searched", "table"])
def test_member_table_lookups_against_plain_sets(monkeypatch, dense_bytes):
    """Both ways of looking pairs up (binary search of the sorted keys; an N x N table of bits
    for small N) say, per candidate, exactly whether (i, j) is in that candidate's lists, also
    for pairs that are in no list; checked against Python sets."""
    monkeypatch.setattr(neighbours, "DENSE_TABLE_BYTES", dense_bytes)
    gen = torch.Generator().manual_seed(3)
    count, n, k = 11, 40, 5  # 11 candidates: the bits span two bytes
    knn = torch.stack([torch.stack([torch.randperm(n, generator=gen)[:k] for _ in range(n)])
                       for _ in range(count)])
    table = neighbours.MemberTable(knn)
    assert (table.dense is not None) == (dense_bytes > 0)
    rows = torch.randint(0, n, (300,), generator=gen)
    cols = torch.randint(0, n, (300,), generator=gen)
    got = table.lookup(rows, cols)
    pairs = [{(i, int(j)) for i in range(n) for j in knn[c, i]} for c in range(count)]
    expected = torch.tensor([[int((int(r), int(q)) in pairs[c]) for c in range(count)]
                             for r, q in zip(rows, cols, strict=True)], dtype=torch.uint8)
    assert torch.equal(got, expected) and 0 < int(expected.sum()) < expected.numel()


@pytest.mark.parametrize("dense_bytes", [0, 64 << 20], ids=["searched", "table"])
def test_member_table_pair_counts_against_plain_sets(monkeypatch, dense_bytes):
    """The histogram count of each group's pairs held by each candidate equals a count over
    Python sets: 11 candidates, so a bit read from the wrong byte or shift, or a group's pairs
    counted in another group's column, changes some count."""
    monkeypatch.setattr(neighbours, "DENSE_TABLE_BYTES", dense_bytes)
    gen = torch.Generator().manual_seed(5)
    count, n, k, groups = 11, 30, 4, 3
    knn = torch.stack([torch.stack([torch.randperm(n, generator=gen)[:k] for _ in range(n)])
                       for _ in range(count)])
    table = neighbours.MemberTable(knn)
    rows = torch.randint(0, n, (groups, 50, 2), generator=gen)
    cols = torch.where(torch.rand(groups, 50, 2, generator=gen) < 0.5,
                       knn[torch.randint(0, count, (groups, 50, 2), generator=gen), rows,
                           torch.randint(0, k, (groups, 50, 2), generator=gen)],
                       torch.randint(0, n, (groups, 50, 2), generator=gen))
    pairs = [{(i, int(j)) for i in range(n) for j in knn[c, i]} for c in range(count)]
    expected = torch.tensor([[sum((int(r), int(q)) in pairs[c]
                                  for r, q in zip(rows[g].flatten(), cols[g].flatten(), strict=True))
                              for g in range(groups)] for c in range(count)])
    got = table.pair_counts(rows, cols)
    assert got.dtype == torch.int64 and torch.equal(got, expected)
    assert len(set(expected.flatten().tolist())) > 5
