"""The grid probe: each setting of the batched grid equals its own separate training
(nn.Linear + torch.optim.Adam), and the metrics equal scikit-learn's."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from sklearn.metrics import accuracy_score, f1_score

from platonic.errors import PlatonicError
from platonic.mmimdb.commands import extract_main, probe_main
from platonic.mmimdb.fixture import build_fixture
from platonic.mmimdb.layout import Layout
from platonic.mmimdb.probe import (
    ProbeConfig,
    binary_metrics,
    f1_per_class,
    multilabel_metrics,
    pos_weight,
    train_grid,
    train_single,
)
from platonic.models.registry import LANGUAGE
from platonic.models.weights import minilm_folder


def toy(n: int, dim: int = 12, classes: int = 4, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, dim, generator=g)
    w = torch.randn(dim, classes, generator=g)
    y = ((x @ w + torch.randn(n, classes, generator=g)) > 1.0).float()
    return x, y


@pytest.mark.parametrize("batch_size", [16, None])
def test_grid_equals_separate_trainings(batch_size):
    x, y = toy(80)
    xd, yd = toy(30, seed=1)
    config = ProbeConfig((1e-3, 5e-2), (0.0, 0.1, 1e-3), epochs=6, batch_size=batch_size, seed=3)
    grid = train_grid(x, y, xd, yd, config)
    assert grid.settings == [(1e-3, 0.0), (1e-3, 0.1), (1e-3, 1e-3), (5e-2, 0.0), (5e-2, 0.1),
                             (5e-2, 1e-3)]
    for s, (lr, wd) in enumerate(grid.settings):
        f1, epoch, model = train_single(x, y, xd, yd, lr, wd, config)
        assert grid.best_dev_f1[s] == pytest.approx(f1, abs=1e-12)
        assert grid.best_epoch[s] == epoch
        torch.testing.assert_close(grid.weight[s], model.weight.detach().T, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(grid.bias[s], model.bias.detach(), atol=1e-5, rtol=1e-4)
    assert grid.chosen == int(np.argmax(grid.best_dev_f1))


def test_chosen_setting_is_first_best():
    x, y = toy(40)
    config = ProbeConfig((1e-3,), (0.0, 0.0, 0.0), epochs=2)  # three identical settings
    grid = train_grid(x, y, x, y, config)
    assert len(set(grid.best_dev_f1.tolist())) == 1 and grid.chosen == 0


def test_pos_weight_is_negatives_over_positives():
    y = torch.tensor([[1, 0, 0], [1, 1, 0], [0, 1, 0], [1, 0, 0]], dtype=torch.float32)
    expected = [(4 - p) / (p + 1e-6) for p in (3, 2, 0)]
    torch.testing.assert_close(pos_weight(y), torch.tensor(expected))


def test_multilabel_metrics_equal_sklearn():
    rng = np.random.default_rng(0)
    target = rng.random((50, 5)) < 0.3
    target[:, 4] = False  # a class without positives
    pred = rng.random((50, 5)) < 0.4
    names = ["a", "b", "c", "d", "e"]
    got = multilabel_metrics(pred, target, names)
    per_class = f1_score(target, pred, average=None, zero_division=0)
    assert list(got["f1_per_class"]) == names
    np.testing.assert_allclose(list(got["f1_per_class"].values()), per_class)
    assert got["f1_mean"] == pytest.approx(f1_score(target, pred, average="macro", zero_division=0))
    assert got["f1_weighted"] == pytest.approx(
        f1_score(target, pred, average="weighted", zero_division=0))
    assert got["accuracy"] == pytest.approx(accuracy_score(target, pred))  # subset accuracy
    assert got["label_accuracy"] == pytest.approx((pred == target).mean())
    assert got["classes_without_positives"] == ["e"]


def test_binary_metrics_equal_sklearn():
    rng = np.random.default_rng(1)
    target, pred = rng.random(40) < 0.3, rng.random(40) < 0.5
    got = binary_metrics(pred, target, "western")
    assert got["f1_positive"] == pytest.approx(f1_score(target, pred))
    assert got["f1_mean"] == pytest.approx(f1_score(target, pred, average="macro"))
    assert got["f1_per_class"] == {"western": pytest.approx(f1_score(target, pred))}
    assert got["accuracy"] == pytest.approx(accuracy_score(target, pred))


def test_f1_batched_over_settings():
    rng = np.random.default_rng(2)
    target = rng.random((30, 3)) < 0.5
    preds = rng.random((4, 30, 3)) < 0.5
    got = f1_per_class(torch.from_numpy(preds), torch.from_numpy(target).expand(4, 30, 3))
    for s in range(4):
        np.testing.assert_allclose(got[s].numpy(), f1_score(target, preds[s], average=None,
                                                            zero_division=0))


@pytest.mark.parametrize("kwargs", [{"epochs": 0}, {"batch_size": 0}, {"learning_rates": ()},
                                    {"learning_rates": (0.0,)}, {"weight_decays": (-1.0,)}])
def test_bad_config_is_one_line(kwargs):
    with pytest.raises(PlatonicError) as err:
        ProbeConfig(**kwargs)
    assert "\n" not in str(err.value)


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
    probe_main([*common, "--epochs", "30", "--class_idx", "19", "--force_remake"])
    binary = json.loads(Layout.at(tmp_path / "base").performance(str(minilm_folder())).read_text())
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
