"""measure_alignment.py on small feature files written by the test."""

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from platonic.core import alignment
from platonic.errors import PlatonicError
from platonic.io.features import feature_path, load_features, save_features
from platonic.io.results import IncompleteResult, csv_path, grids_path, load_result
from platonic.run.measure_alignment import main

ROOT = Path(__file__).resolve().parents[2]
LANG = ["org/lm-a", "org/lm-b"]
VIS = ["vit_x", "vit_y", "vit_z"]
N = 40


def write_models(root: Path, level=None, seed=0, n=N, models=None):
    g = torch.Generator().manual_seed(seed)
    shared = torch.randn(n, 6, generator=g)
    specs = models or [(m, "language", "avg") for m in LANG] + [(m, "vision", "cls") for m in VIS]
    for i, (model, modality, pool) in enumerate(specs):
        feats = torch.randn(n, 3 + i % 2, 16, generator=g)
        feats[:, 1, :6] += (1 + i) * shared
        extras = {"bpb": torch.rand(n, generator=g)} if modality == "language" else {}
        save_features(feature_path(root, "toy", "s", model, pool), feats,
                      {"model": model, "modality": modality, "pool": pool, "level": level},
                      extras)


def run(tmp_path, *extra):
    args = ["--dataset", "toy", "--subset", "s", "--models_x", *LANG, "--models_y", *VIS,
            "--input_dir", str(tmp_path / "feats"), "--output_dir", str(tmp_path / "align"),
            "--topk", "5", *extra]
    main(args)
    return tmp_path / "align/toy/s/val/language_pool-avg_prompt-False_vision_pool-cls_prompt-False/mutual_knn_k5.json"


def test_cli_writes_json_csv_grids_matching_the_search(tmp_path):
    write_models(tmp_path / "feats")
    out = run(tmp_path)
    result = load_result(out, with_grids=True)
    assert result.models_x == LANG and result.models_y == VIS
    assert csv_path(out).read_text().count("\n") == 1 + len(LANG) * len(VIS)
    assert grids_path(out).exists()
    from platonic.io.features import load_features
    for i, mx in enumerate(LANG):
        for j, my in enumerate(VIS):
            x = alignment.prepare_features(load_features(feature_path(tmp_path / "feats", "toy", "s", mx, "avg")).feats)
            y = alignment.prepare_features(load_features(feature_path(tmp_path / "feats", "toy", "s", my, "cls")).feats)
            score, (jy, ix), grid = alignment.exhaustive_search(y, x, "mutual_knn", topk=5)
            assert result.scores[i, j] == score
            assert result.indices[i][j] == (ix, jy)
            np.testing.assert_array_equal(result.grids[(i, j)], grid.T)
    data = json.loads(out.read_text())
    assert "x layer, y layer" in data["indices_layout"]
    assert len(data["fingerprints_x"]) == 2


def test_rerun_reuses_and_a_changed_file_is_remade(tmp_path, capsys, monkeypatch):
    write_models(tmp_path / "feats")
    out = run(tmp_path)
    first = load_result(out)
    capsys.readouterr()
    run(tmp_path)
    assert "up to date" in capsys.readouterr().out
    calls = []
    real = alignment.score_grid
    monkeypatch.setattr("platonic.stages.measure.score_grid", lambda *a, **k: calls.append(1) or real(*a, **k))
    write_models(tmp_path / "feats", seed=1, models=[("vit_y", "vision", "cls")])
    run(tmp_path)
    assert len(calls) == len(LANG)  # only vit_y's column
    second = load_result(out)
    assert np.array_equal(first.scores[:, [0, 2]], second.scores[:, [0, 2]])
    calls.clear()
    run(tmp_path, "--force_remake")
    assert len(calls) == len(LANG) * len(VIS)


def test_levels_templates(tmp_path):
    for level in (0, 50):
        write_models(Path(str(tmp_path / "u={}_feats").format(level)), level=level, seed=level)
    main(["--dataset", "toy", "--subset", "s", "--models_x", *LANG, "--models_y", *VIS,
          "--input_dir", str(tmp_path / "u={}_feats"), "--output_dir", str(tmp_path / "u={}_align"),
          "--levels", "0,50"])
    for level in (0, 50):
        found = list((tmp_path / f"u={level}_align").rglob("mutual_knn_k10.json"))
        assert len(found) == 1 and load_result(found[0]).level == level


def test_legacy_pt_files_are_imported(tmp_path):
    g = torch.Generator().manual_seed(0)
    for model, pool in [(m, "avg") for m in LANG] + [(m, "cls") for m in VIS]:
        path = feature_path(tmp_path / "feats", "toy", "s", model, pool).with_suffix(".pt")
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"feats": torch.randn(N, 3, 8, generator=g), "num_params": 123}, path)
    out = run(tmp_path)
    assert load_result(out).scores.shape == (2, 3)


def test_missing_files_are_listed_together(tmp_path):
    write_models(tmp_path / "feats", models=[("org/lm-a", "language", "avg")])
    with pytest.raises(PlatonicError, match="4 feature file") as err:
        run(tmp_path)
    assert "lm-b" in str(err.value) and "vit_z" in str(err.value)


def test_sample_count_mismatch_names_both_files(tmp_path):
    write_models(tmp_path / "feats")
    write_models(tmp_path / "feats", n=N - 1, models=[("vit_z", "vision", "cls")])
    with pytest.raises(PlatonicError, match="org_lm-a_pool-avg.safetensors.*vit_z_pool-cls.safetensors"):
        run(tmp_path)


def test_topk_must_be_below_n(tmp_path):
    write_models(tmp_path / "feats")
    with pytest.raises(PlatonicError, match="topk"):
        run(tmp_path, "--topk", str(N))


def test_nan_names_file_and_layer_with_one_line_and_exit_2(tmp_path):
    write_models(tmp_path / "feats")
    path = feature_path(tmp_path / "feats", "toy", "s", "vit_y", "cls")
    feats = torch.randn(N, 3, 16)
    feats[4, 2, 0] = float("nan")
    save_features(path, feats, {"model": "vit_y"})
    proc = subprocess.run(
        [sys.executable, str(ROOT / "measure_alignment.py"), "--dataset", "toy", "--subset", "s",
         "--models_x", *LANG, "--models_y", *VIS, "--input_dir", str(tmp_path / "feats"),
         "--output_dir", str(tmp_path / "align")], capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 2
    last = proc.stderr.strip().splitlines()[-1]
    assert "Traceback" not in proc.stderr
    assert last.startswith("error: ") and "vit_y_pool-cls.safetensors" in last and "layer(s) [2]" in last


def test_unknown_metric_is_rejected_by_the_cli(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "measure_alignment.py"), "--metric", "nope",
                           "--input_dir", str(tmp_path / "feats"), "--output_dir", str(tmp_path / "align")],
                          capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "argument --metric: invalid choice: 'nope'" in proc.stderr
    assert not (tmp_path / "align").exists()


def count_score_grids(monkeypatch) -> list[int]:
    calls: list[int] = []
    real = alignment.score_grid
    monkeypatch.setattr("platonic.stages.measure.score_grid", lambda *a, **k: calls.append(1) or real(*a, **k))
    return calls


def test_a_result_holds_exactly_the_requested_models_in_order(tmp_path, monkeypatch):
    write_models(tmp_path / "feats")
    out = run(tmp_path)
    first = load_result(out, with_grids=True)
    calls = count_score_grids(monkeypatch)
    # lm-a's pairs are recomputed once, after the one-model result dropped them; the rest is reused
    for models, computed in ((["org/lm-b"], 0), (["org/lm-b", "org/lm-a"], len(VIS)), (LANG, 0)):
        calls.clear()
        main(["--dataset", "toy", "--subset", "s", "--models_x", *models, "--models_y", *VIS,
              "--input_dir", str(tmp_path / "feats"), "--output_dir", str(tmp_path / "align"),
              "--topk", "5"])
        result = load_result(out, with_grids=True)
        assert result.models_x == models
        rows = [LANG.index(m) for m in models]
        np.testing.assert_array_equal(result.scores, first.scores[rows])
        assert result.indices == [first.indices[r] for r in rows]
        for i, r in enumerate(rows):
            for j in range(len(VIS)):
                np.testing.assert_array_equal(result.grids[(i, j)], first.grids[(r, j)])
        csv_models = [row["model_x"] for row in csv.DictReader(csv_path(out).open())]
        assert csv_models == [m for m in models for _ in VIS]
        assert len(calls) == computed


def test_a_pair_without_positive_score_is_stored_as_undefined(tmp_path, monkeypatch):
    write_models(tmp_path / "feats")
    real = alignment.score_grid

    def negative_for_vit_y(ky, kx, *args, **kwargs):
        grid = real(ky, kx, *args, **kwargs)
        return -np.abs(grid) if ky.n == N and len(ky) == 4 and kx.grams.shape[0] == 4 else grid

    monkeypatch.setattr("platonic.stages.measure.score_grid", negative_for_vit_y)
    out = run(tmp_path)
    data = json.loads(out.read_text())
    result = load_result(out)
    undefined = [(i, j) for i in range(len(LANG)) for j in range(len(VIS)) if data["scores"][i][j] is None]
    assert undefined, "the planted pair must be undefined"
    for i, j in undefined:
        assert np.isnan(result.scores[i, j]) and result.indices[i][j] is None
    rows = list(csv.DictReader(csv_path(out).open()))
    for row in rows:
        i, j = LANG.index(row["model_x"]), VIS.index(row["model_y"])
        assert (row["score"] == "") == ((i, j) in undefined)
        if row["score"]:
            assert float(row["score"]) == result.scores[i, j]


def test_a_half_written_result_is_detected_and_remade(tmp_path, monkeypatch):
    write_models(tmp_path / "feats")
    out = run(tmp_path)
    first = load_result(out, with_grids=True)
    # a run killed after renaming its new grids but before its JSON: grids of another run
    np.savez_compressed(grids_path(out), grid_0_0=np.zeros((2, 2)))
    with pytest.raises(IncompleteResult, match="incomplete"):
        load_result(out)
    calls = count_score_grids(monkeypatch)
    run(tmp_path)
    assert len(calls) == len(LANG) * len(VIS)
    again = load_result(out, with_grids=True)
    np.testing.assert_array_equal(again.scores, first.scores)
    csv_path(out).write_text("level,model_x\n")
    with pytest.raises(IncompleteResult):
        load_result(out)


def test_padded_layers_are_clamped_over_their_real_entries(tmp_path):
    """A CNN-like file (layers zero-padded to the widest) against the search on features
    clamped by an independent numpy computation over the real entries only."""
    write_models(tmp_path / "feats")
    g = torch.Generator().manual_seed(5)
    dims = [4, 9, 16]
    feats = torch.zeros(N, 3, 16)
    for layer, d in enumerate(dims):
        feats[:, layer, :d] = torch.randn(N, d, generator=g) ** 3
    save_features(feature_path(tmp_path / "feats", "toy", "s", "vit_x", "cls"), feats,
                  {"model": "vit_x", "layer_dims": dims})
    out = run(tmp_path, "--metric", "cka").with_name("cka_k5.json")
    result = load_result(out)
    real = [np.concatenate([row[layer, :d] for layer, d in enumerate(dims)]) for row in feats.numpy()]
    threshold = float(np.mean([np.quantile(np.abs(r), 0.95) for r in real]))
    y = feats.clamp(-threshold, threshold)
    x = alignment.prepare_features(load_features(feature_path(tmp_path / "feats", "toy", "s", LANG[0], "avg")).feats)
    score, _, _ = alignment.exhaustive_search(y, x, "cka")
    assert result.scores[0, 0] == pytest.approx(score, abs=1e-6)
    wrong, _, _ = alignment.exhaustive_search(alignment.prepare_features(feats), x, "cka")
    assert abs(wrong - score) > 1e-4  # the padding-blind clamp gives another score


def test_a_damaged_feature_file_is_an_error_even_when_the_result_is_reused(tmp_path):
    write_models(tmp_path / "feats")
    run(tmp_path)
    path = feature_path(tmp_path / "feats", "toy", "s", "vit_z", "cls")
    data = bytearray(path.read_bytes())
    data[-3] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(PlatonicError, match="vit_z_pool-cls.safetensors: its tensors do not match"):
        run(tmp_path)
