"""The MM-IMDb study end to end on small fixtures in the real layout: the driver's outputs and
contract, resume, one-line errors, and a fixture where only one genre is predictable."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from interrupts import default_interrupts
from safetensors import safe_open
from safetensors.torch import load_file
from scipy import stats

from platonic import plots
from platonic.alignment import exhaustive_search, prepare_features
from platonic.errors import PlatonicError, run_cli
from platonic.features import load_features
from platonic.mmimdb import performance
from platonic.mmimdb.alignment import alignment_file
from platonic.mmimdb.cli import (
    extract_args,
    extract_main,
    measure_args,
    measure_main,
    plot_args,
    plot_main,
    probe_args,
    probe_main,
)
from platonic.mmimdb.fixture import build_fixture
from platonic.mmimdb.genres import GENRES
from platonic.mmimdb.layout import Layout
from platonic.mmimdb.performance import run_probe
from platonic.mmimdb.probe import ProbeConfig
from platonic.models import LANGUAGE, VISION, minilm_folder
from platonic.results import load_result

REPO = Path(__file__).resolve().parents[1]
SIZES = {"train": 120, "dev": 48, "test": 64}
TOPK = 5
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


def test_only_predictable_genre_wins(tmp_path, monkeypatch):
    """Plots name western (and only western) movies' genre: western, by name, has the best F1."""
    root = build_fixture(tmp_path / "root", seed=1, split_sizes={"train": 200, "dev": 60, "test": 100},
                         image_size=32, text_strength={"western": 1.0},
                         genre_weights={"western": 6.0}, distractor=0.0)
    models = tmp_path / "models.json"
    models.write_text(json.dumps([_minilm()]))
    monkeypatch.setenv("PLATONIC_CUSTOM_MODELS", str(models))
    common = ["--base_dir", str(tmp_path / "base"), "--modelset", "custom", "--device", "cpu"]
    extract_main([*common, "--root", str(root), "--modality", "language"])
    probe_main([*common, "--epochs", "30"])
    perf = json.loads(Layout.at(tmp_path / "base").performance(str(minilm_folder())).read_text())
    ranked = sorted(perf["f1_per_class"], key=perf["f1_per_class"].get, reverse=True)
    assert ranked[0] == "western" and perf["support"]["western"] >= 5
    assert perf["f1_per_class"]["western"] > perf["f1_per_class"][ranked[1]] + 0.2
    with pytest.raises(PlatonicError, match="class_idx 23 is outside 0..22"):
        probe_main([*common, "--class_idx", "23"])
    probe_main([*common, "--epochs", "30", "--class_idx", "19"])
    binary = json.loads(Layout.at(tmp_path / "base").performance(str(minilm_folder()), 19).read_text())
    assert binary["task"] == "binary" and list(binary["f1_per_class"]) == ["western"]
    assert binary["f1_positive"] > perf["f1_per_class"][ranked[1]] + 0.2


def test_encoder_without_head_gives_the_same_features(tiny_llama_dir, captions):
    from platonic.language import encode_texts, load_language_model
    from platonic.models import ModelSpec

    lm = load_language_model(ModelSpec(str(tiny_llama_dir), LANGUAGE, "Tiny", ""))
    full = encode_texts(lm, captions, batch_size=3)
    bare = encode_texts(lm, captions, batch_size=3, next_token_loss=False)
    torch.testing.assert_close(bare.feats, full.feats)
    assert "bpb" in full.extras and "bpb" not in bare.extras and "loss" not in bare.extras


# --- a small study run stage by stage, copied and changed by each test below -------------------

SMALL = {"train": 40, "dev": 12, "test": 24}
SMALL_EPOCHS = "2"


def _small_models(tiny_llama_dir: Path, tiny_gpt2_dir: Path) -> list[dict]:
    return [{"id": str(tiny_llama_dir), "modality": LANGUAGE, "family": "Tiny", "size": "llama"},
            {"id": str(tiny_gpt2_dir), "modality": LANGUAGE, "family": "Tiny", "size": "gpt2"},
            {"id": "random:test_vit", "modality": VISION, "family": "Test ViT", "size": "s1",
             "options": {"timm_name": "test_vit", "random_init_seed": 0}}]


def _flags(base: Path, *extra: str) -> list[str]:
    return ["--base_dir", str(base), "--modelset", "custom", "--device", "cpu", *extra]


@pytest.fixture(scope="module")
def small_study(tmp_path_factory, tiny_llama_dir, tiny_gpt2_dir):
    """(root, base, models file): every stage of a small study, run in this process."""
    tmp = tmp_path_factory.mktemp("mmimdb_small")
    root = build_fixture(tmp / "root", seed=4, split_sizes=SMALL, image_size=32)
    models = tmp / "models.json"
    models.write_text(json.dumps(_small_models(tiny_llama_dir, tiny_gpt2_dir)))
    base = tmp / "base"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PLATONIC_CUSTOM_MODELS", str(models))
        extract_main(_flags(base, "--root", str(root), "--batch_size", "8"))
        probe_main(_flags(base, "--epochs", SMALL_EPOCHS))
        measure_main(_flags(base, "--topk", "3"))
        plot_main(_flags(base, "--topk", "3"))
    return root, base, models


@pytest.fixture
def small(small_study, tmp_path, monkeypatch):
    """A copy of the small study's base folder to change: (root, base, language ids, vision ids)."""
    root, base, models = small_study
    monkeypatch.setenv("PLATONIC_CUSTOM_MODELS", str(models))
    copy = Path(shutil.copytree(base, tmp_path / "base"))
    specs = json.loads(models.read_text())
    return (root, copy, [m["id"] for m in specs if m["modality"] == LANGUAGE],
            [m["id"] for m in specs if m["modality"] == VISION])


def test_alignment_refuses_features_of_another_movie_order(small):
    root, base, language, vision = small
    layout = Layout.at(base)
    before = json.loads(layout.selection("test").read_text())["ids"]
    extract_main(_flags(base, "--root", str(root), "--modality", "language", "--seed", "1"))
    assert sorted(json.loads(layout.selection("test").read_text())["ids"]) == sorted(before)
    assert json.loads(layout.selection("test").read_text())["ids"] != before  # same movies, new order
    with pytest.raises(PlatonicError) as err:
        measure_main(_flags(base, "--topk", "3"))
    message = str(err.value)
    assert str(layout.features("test", vision[0], VISION)) in message
    assert str(layout.selection("test")) in message and "\n" not in message
    assert not any(str(layout.features("test", m, LANGUAGE)) in message for m in language)
    extract_main(_flags(base, "--root", str(root), "--modality", "vision", "--seed", "1"))
    measure_main(_flags(base, "--topk", "3"))


def test_plots_refuse_probes_and_alignment_of_other_features(small):
    root, base, language, _ = small
    layout = Layout.at(base)
    extract_main(_flags(base, "--root", str(root), "--seed", "1"))
    probe_main(_flags(base, "--epochs", SMALL_EPOCHS))  # retrains on the new features
    with pytest.raises(PlatonicError) as err:  # the alignment result still pairs the old ones
        plot_main(_flags(base, "--topk", "3"))
    assert all(str(layout.performance(m)) in str(err.value) for m in language)
    assert str(alignment_file(layout, "custom", "mutual_knn", 3)) in str(err.value)
    measure_main(_flags(base, "--topk", "3"))
    plot_main(_flags(base, "--topk", "3"))


def test_plots_refuse_probes_of_mixed_settings(small):
    _, base, language, _ = small
    layout = Layout.at(base)
    run_probe(layout, language[1], ProbeConfig(epochs=3), layer=-1)
    with pytest.raises(PlatonicError) as err:
        plot_main(_flags(base, "--topk", "3"))
    message = str(err.value)
    assert str(layout.performance(language[1])) in message and "epochs 3 not 2" in message
    assert str(layout.performance(language[0])) not in message and "\n" not in message
    run_probe(layout, language[1], ProbeConfig(epochs=2), layer=0)
    with pytest.raises(PlatonicError, match="layer 0 not -1"):
        plot_main(_flags(base, "--topk", "3"))


def test_binary_probe_is_kept_beside_the_multilabel_one(small):
    _, base, language, _ = small
    layout = Layout.at(base)
    before = {p: p.read_bytes() for m in language for p in (layout.performance(m), layout.weights(m))}
    probe_main(_flags(base, "--epochs", SMALL_EPOCHS, "--class_idx", "0"))
    assert {p: p.read_bytes() for p in before} == before
    for model in language:
        binary = json.loads(layout.performance(model, 0).read_text())
        assert binary["task"] == "binary" and binary["genres"] == [GENRES[0]]
        assert load_file(layout.weights(model, 0))["weight"].shape[0] == 1
        assert layout.performance(model, 0).parent == layout.performance(model).parent
    plot_main(_flags(base, "--topk", "3"))
    with pytest.raises(PlatonicError, match="class_idx 0, not of the 23 genres"):
        shutil.copy(layout.performance(language[0], 0), layout.performance(language[0]))
        plot_main(_flags(base, "--topk", "3", "--force_remake"))


def test_probe_reuses_only_the_classifier_of_its_own_key(small, monkeypatch):
    _, base, language, _ = small
    layout = Layout.at(base)
    model, config = language[0], ProbeConfig(epochs=int(SMALL_EPOCHS))
    assert run_probe(layout, model, config) is False  # current
    # a rerun with other settings dies between writing its classifier and its result
    monkeypatch.setattr(performance, "write_json", lambda *_: (_ for _ in ()).throw(OSError("full")))
    with pytest.raises(OSError):
        run_probe(layout, model, ProbeConfig(epochs=3))
    monkeypatch.undo()
    key = json.loads(layout.performance(model).read_text())["cache_key"]
    assert run_probe(layout, model, config) is True  # not the other run's classifier
    with safe_open(str(layout.weights(model)), framework="pt") as f:
        assert json.loads(f.metadata()["platonic"])["cache_key"] == key


def test_genre_without_positives_is_noted(small, capsys):
    _, base, language, _ = small
    layout = Layout.at(base)
    dev = np.array([[g in [x.lower() for x in m["genres"]] for g in GENRES]
                    for m in json.loads(layout.selection("dev").read_text())["movies"]])
    absent = [g for g, any_positive in zip(GENRES, dev.any(axis=0), strict=True) if not any_positive]
    assert absent, "the small fixture's dev split has every genre: make it smaller"
    perf = json.loads(layout.performance(language[0]).read_text())
    assert perf["dev_classes_without_positives"] == absent
    capsys.readouterr()
    probe_main(_flags(base, "--epochs", SMALL_EPOCHS, "--class_idx", str(GENRES.index(absent[0]))))
    binary = json.loads(layout.performance(language[0], GENRES.index(absent[0])).read_text())
    assert binary["dev_classes_without_positives"] == [absent[0]]
    assert f"note: no dev movie has genre {absent[0]}" in capsys.readouterr().out
    summary = (base / "mmimdb_plots" / "summary.md").read_text()
    assert f"no dev positives for {', '.join(absent)}" in summary


def test_error_after_a_progress_bar_starts_a_line(small, capsys):
    _, base, _, _ = small
    with pytest.raises(SystemExit):
        run_cli(probe_main, _flags(base, "--layer", "99"))
    err = capsys.readouterr().err
    assert "probes:" in err  # the bar was drawn before the error
    assert any(line.startswith("error: ") and "--layer 99" in line for line in err.split("\n"))


@pytest.mark.parametrize("stage", [extract_args, probe_args, measure_args, plot_args])
def test_a_file_as_base_dir_is_refused_before_work(stage, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("")
    for folder in (blocker, blocker / "below"):
        with pytest.raises(SystemExit):
            stage(["--base_dir", str(folder)])
        assert f"{blocker} is a file, not a folder" in capsys.readouterr().err
    if stage is plot_args:
        with pytest.raises(SystemExit):
            stage(["--base_dir", str(tmp_path), "--plot_dir", str(blocker)])
        assert "--plot_dir" in capsys.readouterr().err
    assert sorted(tmp_path.iterdir()) == [blocker]


def test_main_study_plot_dir_that_is_a_file_is_refused(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(SystemExit):
        plots.build_parser().parse_args(["--align_dir", str(tmp_path), "--plot_dir", str(blocker)])
    assert f"{blocker} is a file, not a folder" in capsys.readouterr().err


def test_bad_flags_stop_the_driver_before_the_first_stage(small_study, driver_env, tmp_path):
    root, base = small_study[0], tmp_path / "base"
    for flags, message in ((["--topk", "0"], "argument --topk: must be at least 1"),
                           (["--seed", "-1"], "argument --seed: must be at least 0"),
                           (["--epochs="], "--epochs needs a value, got an empty one"),
                           (["--ray="], "--ray needs a value, got an empty one")):
        proc = _driver(driver_env, "--root", str(root), "--base_dir", str(base), *flags)
        assert proc.returncode == 2 and message in proc.stderr, proc.stderr[-2000:]
        assert "Traceback" not in proc.stderr and not base.exists()
