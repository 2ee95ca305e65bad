"""The grid probe: each setting of the batched grid equals its own separate training
(nn.Linear + torch.optim.Adam), and the metrics equal scikit-learn's."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from sklearn.metrics import accuracy_score, f1_score

from platonic.errors import PlatonicError
from platonic.io.features import save_features
from platonic.mmimdb.dataset import Movie, Selection, read_selection, save_selection
from platonic.mmimdb.genres import GENRES
from platonic.mmimdb.layout import Layout
from platonic.mmimdb.performance import run_probe, task_labels
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


def _macro_f1(pred: np.ndarray, target: np.ndarray) -> float:
    """The published macro F1 by a plain loop: per class 2tp / (2tp + fp + fn), 0 when 0/0."""
    scores = []
    for c in range(target.shape[1]):
        tp = sum(1 for p, t in zip(pred[:, c], target[:, c], strict=True) if p and t)
        fp = sum(1 for p, t in zip(pred[:, c], target[:, c], strict=True) if p and not t)
        fn = sum(1 for p, t in zip(pred[:, c], target[:, c], strict=True) if t and not p)
        scores.append(2 * tp / (2 * tp + fp + fn) if 2 * tp + fp + fn else 0.0)
    return float(np.mean(scores))


def _synthetic_split(layout, split: str, model: str, x: np.ndarray, genres: list[list[str]]) -> None:
    """A saved selection and a one-layer language feature file of the same movies, in order."""
    movies = [Movie(f"{split}{i}", f"plot {split} {i}", tuple(g), Path("unused.jpeg"))
              for i, g in enumerate(genres)]
    selection = Selection(split, movies, 0, "sampler", None)
    save_selection(layout.selection(split), selection, Path("unused"))
    save_features(layout.features(split, model, LANGUAGE), torch.from_numpy(x)[:, None, :],
                  {"texts_sha256": selection.texts_sha256})


def test_probe_is_chosen_on_dev_not_test(tmp_path):
    """Dev labels follow the features, test labels the opposite: a probe chosen on test would be
    the worst on dev. The saved classifier's dev macro F1, computed here from its weights, is
    the result's dev figure and the best any setting reaches on dev (each trained separately)."""
    layout, model = Layout.at(tmp_path), "synthetic/lm"
    rng = np.random.default_rng(0)
    w = rng.normal(size=(8, 2))
    data = {}
    for split, n, sign in (("train", 160, 1), ("dev", 60, 1), ("test", 60, -1)):
        x = rng.normal(size=(n, 8)).astype(np.float32)
        y = sign * (x @ w) > 0
        _synthetic_split(layout, split, model, x,
                         [[g for g, on in zip(GENRES[:2], row, strict=True) if on] or [GENRES[5]]
                          for row in y])
        data[split] = torch.from_numpy(x), torch.from_numpy(task_labels(
            read_selection(layout.selection(split)), None)).float()
    config = ProbeConfig((1e-4, 5e-2), (0.0, 0.1), epochs=8, batch_size=32)
    assert run_probe(layout, model, config) is True
    perf = json.loads(layout.performance(model).read_text())
    weights = load_file(layout.weights(model))
    logits = {s: (x @ weights["weight"].T + weights["bias"]).numpy() for s, (x, _) in data.items()}
    dev_f1 = _macro_f1(logits["dev"] > 0, data["dev"][1].numpy())
    assert dev_f1 == pytest.approx(perf["dev_f1"], abs=1e-12)
    assert _macro_f1(logits["test"] > 0, data["test"][1].numpy()) == pytest.approx(perf["f1_mean"])
    best_on_dev = max(train_single(*data["train"], *data["dev"], lr, wd, config)[0]
                      for lr, wd in config.settings)
    assert dev_f1 == pytest.approx(best_on_dev, abs=1e-6)
    assert perf["f1_mean"] < dev_f1 / 2  # dev and test disagree: choosing on test would differ
