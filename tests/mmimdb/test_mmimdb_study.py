"""The MM-IMDb stages in this process on small fixtures: a fixture where only one genre is
predictable, and a small study whose copies each test changes (pairing checks, binary probes,
reuse, notes, one-line errors)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from platonic.errors import PlatonicError
from platonic.mmimdb import performance
from platonic.mmimdb.commands import (
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
from platonic.mmimdb.study_alignment import alignment_file
from platonic.models.registry import LANGUAGE, VISION
from platonic.models.weights import minilm_folder
from platonic.run import plot_alignment
from platonic.run.exit_codes import run_cli


def _minilm() -> dict:
    return {"id": str(minilm_folder()), "modality": LANGUAGE, "family": "MiniLM", "size": "22m",
            "options": {"encoder": True}}


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
    from platonic.models.language import encode_texts, load_language_model
    from platonic.models.registry import ModelSpec

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
        plot_alignment.build_parser().parse_args(["--align_dir", str(tmp_path), "--plot_dir", str(blocker)])
    assert f"{blocker} is a file, not a folder" in capsys.readouterr().err


