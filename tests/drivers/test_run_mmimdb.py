"""mmimdb/run_mmimdb.sh end to end on small fixtures in the real layout: the driver's outputs and
contract, resume, one-line errors, flags checked before the first stage, every stage on Ray."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from interrupts import default_interrupts
from scipy import stats

from platonic.core.alignment import exhaustive_search, prepare_features
from platonic.io.features import load_features
from platonic.io.results import load_result
from platonic.mmimdb.fixture import build_fixture
from platonic.mmimdb.genres import GENRES
from platonic.mmimdb.layout import Layout
from platonic.mmimdb.study_alignment import alignment_file
from platonic.models.registry import LANGUAGE, VISION
from platonic.models.weights import minilm_folder

REPO = Path(__file__).resolve().parents[2]
SIZES = {"train": 120, "dev": 48, "test": 64}
TOPK = 5
pytestmark = pytest.mark.driver
PERF_KEYS = {"f1_mean", "f1_weighted", "accuracy", "f1_per_class", "lr", "wd", "epoch"}


def _minilm() -> dict:
    return {"id": str(minilm_folder()), "modality": LANGUAGE, "family": "MiniLM", "size": "22m",
            "options": {"encoder": True}}


@pytest.fixture(scope="module")
def models_json(tmp_path_factory, tiny_llama_dir, tiny_gpt2_dir) -> Path:
    path = tmp_path_factory.mktemp("mmimdb_models") / "models.json"
    vision = [{"id": f"random:{name}", "modality": VISION, "family": "Test ViT", "size": size,
               "size_rank": rank, "options": {"timm_name": name, "random_init_seed": 0}}
              for rank, (name, size) in enumerate([("test_vit", "s1"), ("test_vit2", "s2"),
                                                   ("test_vit3", "s3")], start=1)]
    path.write_text(json.dumps([
        {"id": str(tiny_llama_dir), "modality": LANGUAGE, "family": "Tiny", "size": "llama"},
        {"id": str(tiny_gpt2_dir), "modality": LANGUAGE, "family": "Tiny", "size": "gpt2"},
        _minilm(), *vision]))
    return path


@pytest.fixture(scope="module")
def driver_env(models_json) -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "PLATONIC_CUSTOM_MODELS": str(models_json),
            "MODELSET": "custom", "DEVICE": "cpu", "EPOCHS": "4", "TOPK": str(TOPK),
            "BATCH_SIZE": "16"}


def _driver(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(REPO / "mmimdb" / "run_mmimdb.sh"), *args], env=env,
                          capture_output=True, text=True, timeout=900)


def _files(base: Path) -> dict[Path, tuple[int, int]]:
    return {p: (p.stat().st_mtime_ns, p.stat().st_ino) for p in base.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def study(tmp_path_factory, driver_env):
    tmp = tmp_path_factory.mktemp("mmimdb_study")
    root = build_fixture(tmp / "root", seed=2, split_sizes=SIZES, image_size=48)
    base = tmp / "base"
    proc = _driver(driver_env, "--root", str(root), "--base_dir", str(base))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return root, base, proc


def test_performance_contract(study, models_json):
    _, base, _ = study
    language = [m["id"] for m in json.loads(models_json.read_text()) if m["modality"] == LANGUAGE]
    for model in language:
        perf = json.loads(Layout.at(base).performance(model).read_text())
        assert set(perf) >= PERF_KEYS
        assert list(perf["f1_per_class"]) == list(GENRES)
        assert perf["f1_mean"] == pytest.approx(np.mean(list(perf["f1_per_class"].values())))
        best = max(perf["grid"], key=lambda s: s["best_dev_f1"])
        assert (perf["lr"], perf["wd"], perf["epoch"]) == (best["lr"], best["wd"], best["best_epoch"])
        assert len(perf["grid"]) == 20 and 1 <= perf["epoch"] <= 4
        assert Layout.at(base).weights(model).stat().st_size > 0


def test_alignment_is_the_best_layer_pair(study):
    _, base, _ = study
    layout = Layout.at(base)
    result = load_result(alignment_file(layout, "custom", "mutual_knn", TOPK))
    assert result.scores.shape == (3, 3)
    # MiniLM x test_vit, against the plain per-pair search of the original (test_vit2/3 give
    # near-constant random features whose kNN ties either search may break its own way)
    i, j = 2, 0
    x = prepare_features(load_features(layout.features("test", result.models_x[i], LANGUAGE)).feats)
    y = prepare_features(load_features(layout.features("test", result.models_y[j], VISION)).feats)
    score, (layer_y, layer_x), _ = exhaustive_search(y, x, "mutual_knn", topk=TOPK)
    assert result.scores[i, j] == pytest.approx(score, abs=1e-9)
    assert result.indices[i][j] == (layer_x, layer_y)


def test_correlation_csv_and_figures(study):
    _, base, proc = study
    plots = base / "mmimdb_plots"
    corr = pd.read_csv(plots / "correlation.csv")
    assert list(corr.columns) == ["vision_model", "family", "size", "genre", "spearman_rho", "slope"]
    assert len(corr) == 3 * (1 + len(GENRES))
    assert list(corr["genre"].iloc[:24]) == ["overall", *GENRES]
    # one row against scipy, from the files the stages wrote
    layout = Layout.at(base)
    result = load_result(alignment_file(layout, "custom", "mutual_knn", TOPK))
    f1 = [json.loads(layout.performance(m).read_text())["f1_per_class"]["comedy"]
          for m in result.models_x]
    row = corr[(corr["vision_model"] == result.models_y[2]) & (corr["genre"] == "comedy")].iloc[0]
    y = result.scores[:, 2]
    if np.ptp(f1) > 0 and np.ptp(y) > 0:
        assert row["spearman_rho"] == pytest.approx(stats.spearmanr(f1, y).statistic)
        assert row["slope"] == pytest.approx(np.polyfit(f1, y, 1)[0])
    for stem in ("test_vit_align_perf_overall", "test_vit_align_perf_per_genre",
                 "align_perf_per_genre_histograms"):
        for suffix in (".png", ".pdf"):
            assert (plots / (stem + suffix)).stat().st_size > 0
    summary = (plots / "summary.md").read_text()
    assert "## Overall (test macro F1)" in summary and "| Test ViT | 3 |" in summary
    assert "## Overall" in proc.stdout
    assert not list(base.rglob(".*.tmp"))


def test_second_run_redoes_nothing(study, driver_env):
    root, base, _ = study
    before = _files(base)
    again = _driver(driver_env, "--root", str(root), "--base_dir", str(base))
    assert again.returncode == 0, again.stderr[-3000:]
    assert "wrote 0 files" in again.stdout and "model loads {}" in again.stdout
    assert "trained 0 probes" in again.stdout and "up to date" in again.stdout
    assert "plots: up to date" in again.stdout
    assert _files(base) == before


def test_failing_stage_is_named(study, driver_env, tmp_path):
    proc = _driver(driver_env, "--root", str(tmp_path / "absent"), "--base_dir", str(tmp_path))
    assert proc.returncode == 2
    assert "stage 'flags' failed" in proc.stderr
    assert f"MM-IMDb root {tmp_path / 'absent'} does not exist" in proc.stderr
    _, base, _ = study
    proc = _driver(driver_env, "--base_dir", str(base), "--root", str(study[0]), "--layer", "99")
    assert "stage 'performance' failed" in proc.stderr and "--layer 99 is out of range" in proc.stderr


def test_interrupted_run_stops_cleanly_and_resumes(study, driver_env, tmp_path):
    root, full_base, _ = study
    base = tmp_path / "base"
    command = ["bash", str(REPO / "mmimdb" / "run_mmimdb.sh"), "--root", str(root),
               "--base_dir", str(base)]
    proc = subprocess.Popen(command, env=driver_env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, preexec_fn=default_interrupts)
    deadline = time.monotonic() + 600
    while not list(base.glob("mmimdb_feat/**/*.safetensors")):
        assert proc.poll() is None and time.monotonic() < deadline, "no feature file was written"
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "during stage 'features'" in err, err[-2000:]
    assert not list(base.rglob(".*.tmp")) and not (base / "mmimdb_performance").exists()
    resumed = _driver(driver_env, "--root", str(root), "--base_dir", str(base))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert int(resumed.stdout.split("reused ")[1].split(",")[0]) >= 1
    mine = load_result(alignment_file(Layout.at(base), "custom", "mutual_knn", TOPK))
    reference = load_result(alignment_file(Layout.at(full_base), "custom", "mutual_knn", TOPK))
    np.testing.assert_allclose(mine.scores, reference.scores, atol=0.02)


def test_bad_flags_stop_the_driver_before_the_first_stage(study, driver_env, tmp_path):
    root, base = study[0], tmp_path / "base"
    for flags, message in ((["--topk", "0"], "argument --topk: must be at least 1"),
                           (["--seed", "-1"], "argument --seed: must be at least 0"),
                           (["--epochs="], "--epochs needs a value, got an empty one"),
                           (["--ray="], "--ray needs a value, got an empty one"),
                           (["--ray_retries", "2"], "--ray_retries needs --ray"),
                           (["--ray", "--ray_retries", "-1"],
                            "argument --ray_retries: must be at least 0")):
        proc = _driver(driver_env, "--root", str(root), "--base_dir", str(base), *flags)
        assert proc.returncode == 2 and message in proc.stderr, proc.stderr[-2000:]
        assert "Traceback" not in proc.stderr and not base.exists()


def test_driver_passes_ray_to_every_stage(tmp_path, driver_env):
    """`run_mmimdb.sh --ray` (alone: a local instance per stage) runs the study end to end."""
    root = build_fixture(tmp_path / "root", seed=3, split_sizes={"train": 60, "dev": 24, "test": 40},
                         image_size=32)
    base = tmp_path / "base"
    proc = _driver({**driver_env, "EPOCHS": "2", "BATCH_SIZE": "8"}, "--root", str(root),
                   "--base_dir", str(base), "--ray", "--ray_retries", "1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stderr.count("'--ray' 'local' '--ray_retries' '1'") == 6  # 3 in the flag check, 3 stages
    for stage in ("extract on Ray", "probes on Ray", "measure on Ray"):
        assert stage in proc.stderr
    layout = Layout.at(base)
    models = json.loads(Path(driver_env["PLATONIC_CUSTOM_MODELS"]).read_text())
    languages = [m["id"] for m in models if m["modality"] == LANGUAGE]
    visions = [m for m in models if m["modality"] == VISION]
    for model in languages:
        assert json.loads(layout.performance(model).read_text())["config"]["epochs"] == 2
    result = json.loads(alignment_file(layout, "custom", "mutual_knn", TOPK).read_text())
    assert np.isfinite(result["scores"]).all()
    assert np.asarray(result["scores"]).shape == (len(languages), len(visions))
    assert f"| Test ViT | {len(visions)} |" in (layout.plot_dir / "summary.md").read_text()
