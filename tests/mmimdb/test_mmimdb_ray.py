"""The MM-IMDb stages through a local Ray instance (`--ray`) give the local run's files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from safetensors.torch import load_file

pytest.importorskip("ray")

from platonic.errors import PlatonicError  # noqa: E402
from platonic.io.features import load_features  # noqa: E402
from platonic.io.results import grids_path  # noqa: E402
from platonic.mmimdb.commands import extract_main, measure_main, probe_main  # noqa: E402
from platonic.mmimdb.fixture import build_fixture  # noqa: E402
from platonic.mmimdb.layout import Layout  # noqa: E402
from platonic.mmimdb.study_alignment import alignment_file  # noqa: E402
from platonic.models.registry import LANGUAGE, VISION  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
TOPK = 5
# What a probe result records about where and how long it ran, not what it found.
RUN_FIELDS = ("seconds", "feature_files")


@pytest.fixture
def study_models(tmp_path, monkeypatch, tiny_llama_dir, tiny_gpt2_dir) -> list[tuple[str, str]]:
    models = [(str(tiny_llama_dir), LANGUAGE), (str(tiny_gpt2_dir), LANGUAGE),
              ("random:test_vit", VISION), ("random:test_vit2", VISION)]
    path = tmp_path / "models.json"
    path.write_text(json.dumps([
        {"id": model, "modality": modality, "family": "Tiny" if modality == LANGUAGE else "Test ViT",
         "size": f"s{i}", "size_rank": i,
         **({} if modality == LANGUAGE else
            {"options": {"timm_name": model.split(":")[1], "random_init_seed": 0}})}
        for i, (model, modality) in enumerate(models)]))
    monkeypatch.setenv("PLATONIC_CUSTOM_MODELS", str(path))
    return models


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return build_fixture(tmp_path_factory.mktemp("mmimdb_ray") / "root", seed=3,
                         split_sizes={"train": 60, "dev": 24, "test": 40}, image_size=32)


def run_stages(root: Path, base: Path, *extra: str) -> None:
    common = ["--base_dir", str(base), "--modelset", "custom", "--device", "cpu", *extra]
    assert extract_main([*common, "--root", str(root), "--batch_size", "8"]) == 0
    assert probe_main([*common, "--epochs", "3"]) == 0
    assert measure_main([*common, "--topk", str(TOPK)]) == 0


def assert_same_features(ours: Layout, theirs: Layout, models: list[tuple[str, str]]) -> None:
    splits = {LANGUAGE: ("train", "dev", "test"), VISION: ("test",)}
    for model, modality in models:
        for split in splits[modality]:
            mine = load_features(ours.features(split, model, modality))
            local = load_features(theirs.features(split, model, modality))
            assert mine.feats.equal(local.feats) and mine.meta == local.meta, (model, split)
        assert not ours.features("train", model, modality).exists() or modality == LANGUAGE


def assert_same_probes(ours: Layout, theirs: Layout, models: list[tuple[str, str]]) -> None:
    for model, modality in models:
        if modality != LANGUAGE:
            continue
        mine, local = (json.loads(layout.performance(model).read_text()) for layout in (ours, theirs))
        for name in RUN_FIELDS:
            mine.pop(name), local.pop(name)
        assert mine == local, model
        weights_mine, weights_local = load_file(ours.weights(model)), load_file(theirs.weights(model))
        assert all(weights_mine[k].equal(weights_local[k]) for k in ("weight", "bias")), model


def assert_same_alignment(ours: Layout, theirs: Layout) -> None:
    mine, local = (alignment_file(layout, "custom", "mutual_knn", TOPK) for layout in (ours, theirs))
    ja, jb = json.loads(mine.read_text()), json.loads(local.read_text())
    assert ja["scores"] == jb["scores"] and ja["indices"] == jb["indices"]
    assert np.asarray(ja["scores"]).shape == (2, 2)
    ga, gb = np.load(grids_path(mine)), np.load(grids_path(local))
    assert sorted(ga.files) == sorted(gb.files)
    for name in ga.files:
        np.testing.assert_array_equal(ga[name], gb[name])


def test_stages_through_ray_equal_a_local_run(tmp_path, root, local_ray, study_models, capsys,
                                              ray_submissions):
    local, on_ray = Layout.at(tmp_path / "local"), Layout.at(tmp_path / "ray")
    run_stages(root, local.base)
    capsys.readouterr()
    run_stages(root, on_ray.base, "--ray", "--ray_retries", "1")
    # every task of every kind was submitted with the --ray_retries given
    kinds = {name.split()[0] for name, _ in ray_submissions}
    assert kinds == {"extract", "probe", "kernels", "align"}
    assert {retries for _, retries in ray_submissions} == {1}
    out = capsys.readouterr().out
    assert "features: wrote 8 files, reused 0" in out and "trained 2 probes, reused 0" in out
    assert_same_features(on_ray, local, study_models)
    assert_same_probes(on_ray, local, study_models)
    assert_same_alignment(on_ray, local)
    assert not list(on_ray.base.rglob("*.tmp"))
    # A rerun through Ray redoes nothing.
    run_stages(root, on_ray.base, "--ray")
    out = capsys.readouterr().out
    assert "features: wrote 0 files, reused 8, model loads {}" in out
    assert "trained 0 probes, reused 2" in out and "up to date:" in out


def test_a_failed_probe_task_is_named(tmp_path, root, local_ray, study_models):
    """A model whose features are gone fails its task: the stage names it and fails (exit 2),
    and the other model's result is written whole."""
    layout = Layout.at(tmp_path)
    common = ["--base_dir", str(tmp_path), "--modelset", "custom", "--device", "cpu"]
    extract_main([*common, "--root", str(root), "--modality", "language"])
    broken, fine = study_models[0][0], study_models[1][0]
    layout.features("dev", broken, LANGUAGE).unlink()
    with pytest.raises(PlatonicError, match=rf"1 of 2 Ray task\(s\) failed after retries: "
                                            rf"model {broken}: model {broken}: dev features"):
        probe_main([*common, "--epochs", "2", "--ray"])
    assert json.loads(layout.performance(fine).read_text())["model"] == fine
    assert not layout.performance(broken).exists() and not list(tmp_path.rglob("*.tmp"))
