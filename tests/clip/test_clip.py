"""CLIP finetuning: loss, schedule, towers, settings checks, and small runs on the fixture."""

from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from sklearn.metrics import f1_score

from platonic.clip.loss import MAX_LOGIT_SCALE, combined_loss, contrastive_loss
from platonic.clip.module import (
    CLIPSup,
    binary_f1,
    effective_warmup,
    no_decay,
    warmup_cosine_factor,
)
from platonic.clip.towers import build_image_tower, build_text_tower
from platonic.errors import PlatonicError

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "configs"
SCRIPT = REPO / "mmimdb" / "clip_finetune_binary.py"


def compose_cfg(*overrides: str):
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        return compose(config_name="train_mmimdb", overrides=list(overrides))


def small_run_overrides(root: Path, *extra: str) -> list[str]:
    """Tiny random towers, 2 epochs of 2 batches: seconds on 2 CPU cores."""
    return ["+model=clip_tiny", "+data=mmimdb", "+class_idx=19", "trainer.max_epochs=2",
            "+trainer.limit_train_batches=2", "+trainer.limit_val_batches=2",
            "+trainer.limit_test_batches=1", "+trainer.enable_progress_bar=false",
            "data.batch_size=16", "data.align_samples=32", f"trainer.default_root_dir={root}",
            *extra]


@pytest.fixture(scope="module")
def tiny_towers():
    return build_text_tower("tiny_bert", 32), build_image_tower("tiny_vit", 32)


def _batch(size: int = 6):
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(size, 3, 32, 32, generator=generator)
    texts = [f"a movie about cowboys number {i} and horses" for i in range(size)]
    labels = torch.tensor([1.0, 0.0] * (size // 2))
    return images, texts, labels


# ---- loss ---------------------------------------------------------------------------------------

def _infonce_loop(text: torch.Tensor, image: torch.Tensor, scale: float) -> float:
    """InfoNCE by the formula, one row at a time."""
    t, v = F.normalize(text, dim=-1), F.normalize(image, dim=-1)
    n = t.shape[0]
    total = 0.0
    for i in range(n):
        row = [scale * float(t[i] @ v[j]) for j in range(n)]
        col = [scale * float(t[j] @ v[i]) for j in range(n)]
        total += -row[i] + math.log(sum(math.exp(x) for x in row))
        total += -col[i] + math.log(sum(math.exp(x) for x in col))
    return total / (2 * n)


def test_contrastive_loss_matched_is_zero_and_shuffled_is_log_batch():
    batch = 16
    eye = torch.eye(batch, 32)  # matched pairs, orthogonal to every other pair
    matched, accuracy = contrastive_loss(eye, eye.clone(), torch.tensor(MAX_LOGIT_SCALE))
    assert float(matched) < 1e-6 and float(accuracy) == 1.0
    generator = torch.Generator().manual_seed(0)
    text = torch.randn(batch, 4096, generator=generator)
    image = torch.randn(batch, 4096, generator=generator)[torch.randperm(batch, generator=generator)]
    shuffled, _ = contrastive_loss(text, image, torch.tensor(0.0))  # scale exp(0) = 1
    assert abs(float(shuffled) - math.log(batch)) < 0.05
    assert float(shuffled) == pytest.approx(_infonce_loop(text, image, 1.0), rel=1e-5)


def test_logit_scale_is_clamped_to_100():
    generator = torch.Generator().manual_seed(1)
    text, image = torch.randn(5, 8, generator=generator), torch.randn(5, 8, generator=generator)
    clamped, _ = contrastive_loss(text, image, torch.tensor(9.0))
    assert float(clamped) == pytest.approx(_infonce_loop(text, image, 100.0), rel=1e-5)
    low, _ = contrastive_loss(text, image, torch.tensor(-3.0))
    assert float(low) == pytest.approx(_infonce_loop(text, image, 1.0), rel=1e-5)


def test_zero_weight_loss_is_supervised_alone_and_image_tower_gets_no_gradient(tiny_towers):
    text_tower, image_tower = tiny_towers
    module = CLIPSup(text_tower, image_tower, clip_weight=0.0)
    images, texts, labels = _batch()
    parts, logits, _, image = module.loss_parts((images, texts, labels), with_images=False)
    assert image is None
    p = torch.sigmoid(logits.detach())
    by_hand = -(labels * torch.log(p) + (1 - labels) * torch.log(1 - p)).mean()
    assert float(parts.total.detach()) == pytest.approx(float(by_hand), rel=1e-5)
    module.zero_grad(set_to_none=True)
    module.training_step((images, texts, labels), 0).backward()
    assert all(p.grad is None for p in module.image_tower.parameters())
    assert all(p.grad is not None for p in module.head.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in module.text_tower.parameters())

    weighted = CLIPSup(text_tower, image_tower, clip_weight=2.0)
    weighted.zero_grad(set_to_none=True)
    parts, *_ = weighted.loss_parts((images, texts, labels), with_images=True)
    assert float(parts.total.detach()) == pytest.approx(float(2.0 * parts.contrastive + parts.supervised))
    parts.total.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0
               for p in weighted.image_tower.parameters())


def test_pos_weight_multiplies_the_positive_term():
    from platonic.clip.loss import balanced_pos_weight, supervised_loss

    logits, labels = torch.tensor([0.3, -1.2, 2.0, 0.1]), torch.tensor([1.0, 0.0, 1.0, 0.0])
    p = torch.sigmoid(logits)
    by_hand = -(3.0 * labels * torch.log(p) + (1 - labels) * torch.log(1 - p)).mean()
    assert float(supervised_loss(logits, labels, 3.0)) == pytest.approx(float(by_hand), rel=1e-6)
    assert balanced_pos_weight([1.0, 0.0, 0.0, 0.0, 1.0, 0.0]) == 2.0


def test_combined_loss_needs_images_above_zero_weight():
    logits, labels = torch.zeros(2), torch.ones(2)
    with pytest.raises(ValueError):
        combined_loss(0.5, logits, labels, torch.randn(2, 4), None, torch.tensor(0.0))


# ---- optimiser, schedule, F1 --------------------------------------------------------------------

def test_warmup_cosine_schedule_matches_the_closed_form():
    base, start, eta_min, warmup, epochs = 1e-4, 1e-6, 1e-6, 10, 30
    lrs = [base * warmup_cosine_factor(e, warmup, epochs, base, start, eta_min) for e in range(epochs + 1)]
    assert lrs[0] == pytest.approx(start)
    assert lrs[9] == pytest.approx(base)  # end of warmup (pl_bolts reaches base at warmup - 1)
    assert lrs[10] == pytest.approx(base)  # cosine starts at base
    assert lrs[20] == pytest.approx(eta_min + (base - eta_min) / 2)
    assert lrs[30] == pytest.approx(eta_min)
    assert lrs[5] == pytest.approx(start + 5 * (base - start) / 9)
    assert effective_warmup(10, 2) == 1 and effective_warmup(10, 30) == 10


def test_no_weight_decay_on_norms_biases_and_temperature(tiny_towers):
    module = CLIPSup(*tiny_towers, clip_weight=1.0)
    names = {name: no_decay(name, p) for name, p in module.named_parameters()}
    assert names["logit_scale"] and names["head.bias"] and not names["head.weight"]
    norm = [n for n in names if "norm" in n and n.endswith("weight")]
    assert norm and all(names[n] for n in norm)
    optimizer_groups = [p for p in module.parameters() if p.ndim >= 2]
    assert all(not names[n] for n, p in module.named_parameters()
               if p.ndim >= 2 and not any(k in n for k in ("bn", "ln", "bias")))
    assert optimizer_groups


def test_binary_f1_is_positive_class_and_macro():
    labels = [1, 0, 0, 1, 0, 0]
    predictions = [1, 1, 0, 0, 0, 0]
    scores = binary_f1(labels, predictions)
    assert scores["f1"] == pytest.approx(0.5)  # tp 1, fp 1, fn 1
    assert scores["f1_macro"] == pytest.approx((0.5 + f1_score(labels, predictions, pos_label=0)) / 2)


# ---- settings and one-line errors ---------------------------------------------------------------

def test_class_idx_with_and_without_plus_and_paper_launcher_overrides():
    plus = compose_cfg("+model=clip_sup", "+data=mmimdb", "+class_idx=19")
    plain = compose_cfg("+model=clip_sup", "+data=mmimdb", "class_idx=19")
    assert plus.class_idx == plain.class_idx == 19
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        cfg = compose("train_mmimdb", overrides=[
            "hydra/launcher=ray", "+hydra.launcher.ray.max_concurrent_tasks=8",
            "+hydra.launcher.ray.remote.num_cpus=8", "+hydra.launcher.ray.remote.num_gpus=0.25",
            "+model=clip_sup", "+data=mmimdb", "mode=train", "trainer.max_epochs=30",
            "+class_idx=19"], return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("BoundedRayLauncher")
    assert launcher.ray.max_concurrent_tasks == 8
    assert dict(launcher.ray.remote) == {"num_cpus": 8, "num_gpus": 0.25}
    assert cfg.model.model.text_tower == "clip-ViT-B-32-multilingual-v1"
    assert cfg.model.model.image_tower == "vit_base_patch32_clip_224.openai"


@pytest.fixture
def no_model_loads(monkeypatch):
    """Loading a tower fails the test: the checks must come first."""
    import platonic.clip.train as train

    def loaded(*args, **kwargs):
        raise AssertionError("a model was loaded before the settings were checked")

    monkeypatch.setattr(train, "build_text_tower", loaded)
    monkeypatch.setattr(train, "build_image_tower", loaded)


@pytest.mark.parametrize("override, message", [
    ("class_idx=23", "class_idx 23 is outside 0..22"),
    ("class_idx=-1", "class_idx -1 is outside 0..22"),
    ("class_idx=abc", "class_idx 'abc' is not an integer"),
    ("class_idx=2.5", "class_idx 2.5 is not an integer"),
    ("model.model.clip_weight=-0.5", "clip_weight must be a finite number >= 0, got -0.5"),
    ("model.model.clip_weight=inf", "clip_weight must be a finite number >= 0, got inf"),
    ("model.model.clip_weight=nan", "clip_weight must be a finite number >= 0, got nan"),
    ("model.model.text_tower=bert_huge", "unknown text tower 'bert_huge'"),
    ("model.model.image_tower=resnet_9000", "unknown image tower 'resnet_9000'"),
    ("data.root=/nonexistent/mmimdb", "MM-IMDb root /nonexistent/mmimdb does not exist"),
    ("trainer.max_epochs=0", "trainer.max_epochs must be a whole number >= 1, got 0"),
    ("trainer.max_epochs=-1", "trainer.max_epochs must be a whole number >= 1, got -1"),
    ("data.batch_size=0", "data.batch_size must be a whole number >= 1, got 0"),
    ("data.num_workers=-2", "data.num_workers must be a whole number >= 0, got -2"),
    ("data.align_samples=1", "data.align_samples must be a whole number >= 2, got 1"),
    ("data.sample_seed=-1", "data.sample_seed must be a whole number in 0..4294967295, got -1"),
    ("seed=-1", "seed must be a whole number in 0..4294967295, got -1"),
    ("loss.pos_weight=-2", "loss.pos_weight must be 'balanced', a number > 0 or null, got -2"),
    ("alignment.metric=bogus", "alignment.metric: unknown metric 'bogus'"),
    ("alignment.topk=0", "alignment.topk must be a whole number >= 1, got 0"),
    ("alignment.topk=ten", "alignment.topk must be a whole number >= 1, got 'ten'"),
    ("alignment.topk=32", "topk=32 must be between 1 and N-1=31 (N = 32 samples)"),  # 32 aligned
])
def test_bad_settings_are_one_line_errors_before_any_model_loads(tmp_path, no_model_loads,
                                                                  override, message):
    from platonic.clip.train import run

    cfg = compose_cfg(*small_run_overrides(tmp_path), override)
    with pytest.raises(PlatonicError, match=re.escape(message)) as err:
        run(cfg)
    assert "\n" not in str(err.value)
    assert not any(tmp_path.iterdir())  # nothing written


def test_run_folder_is_named_by_the_exact_weight_and_equal_weights_are_one_run(tmp_path):
    from platonic.clip.settings import check_settings, fingerprints, run_settings

    def folder_and_fingerprint(weight: str) -> tuple[str, str]:
        cfg = compose_cfg(*small_run_overrides(tmp_path, f"model.model.clip_weight={weight}"))
        settings = check_settings(cfg)
        return settings.run_dir.name, fingerprints(run_settings(cfg), {}, settings.clip_weight)[0]

    names = {w: folder_and_fingerprint(w) for w in ("1", "1.0", "0.1234567", "0.1234568", "0",
                                                    "0.0", "-0.0", "0.25", "1e-05")}
    assert names["1"] == names["1.0"] and names["1"][0] == "clip-weight_1"  # as named so far
    assert names["0"] == names["0.0"] == names["-0.0"] and names["0"][0] == "clip-weight_0"
    assert names["0.25"][0] == "clip-weight_0.25" and names["1e-05"][0] == "clip-weight_1e-05"
    assert names["0.1234567"][0] == "clip-weight_0.1234567"
    assert names["0.1234568"][0] == "clip-weight_0.1234568"
    assert names["0.1234567"][1] != names["0.1234568"][1]
    # every name reads back as exactly its weight, so different weights never share a folder
    from platonic.clip.settings import weight_folder_name

    for weight in (0.1, 1 / 3, 2.5e-7, 123456.75, 1e22, 0.30000000000000004):
        assert float(weight_folder_name(weight).removeprefix("clip-weight_")) == weight


def test_missing_class_idx_model_or_data_are_named():
    from platonic.clip.train import check_settings

    with pytest.raises(PlatonicError, match=r"\+class_idx"):
        check_settings(compose_cfg("+model=clip_demo", "+data=mmimdb"))
    with pytest.raises(PlatonicError, match=r"\+model=clip_demo"):
        check_settings(compose_cfg("+data=mmimdb", "+class_idx=3"))
    with pytest.raises(PlatonicError, match=r"\+data=mmimdb"):
        check_settings(compose_cfg("+model=clip_demo", "+class_idx=3"))


def test_paper_towers_offline_are_one_line_errors(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(PlatonicError, match="image tower 'vit_base_patch32_clip_224.openai'.*clip_demo") as err:
        build_image_tower("vit_base_patch32_clip_224.openai", None)
    assert "\n" not in str(err.value)


def test_command_line_error_is_one_line_and_exit_status_2(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, str(SCRIPT), "+model=clip_demo", "+data=mmimdb",
                           "+class_idx=23", f"trainer.default_root_dir={tmp_path}"],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == \
        "error: class_idx 23 is outside 0..22 (0 = drama, 22 = film-noir)"
    assert "Traceback" not in proc.stderr


# ---- sweep summary ------------------------------------------------------------------------------

def _plant_run(folder: Path, weight: float, max_epochs: int, test_f1: float, written_at: int,
               name: str | None = None, metric: str = "mutual_knn") -> dict:
    """A finished run's metrics.json as `run` writes it (only what the summary reads)."""
    from platonic.clip.settings import fingerprints, weight_folder_name

    settings = {"trainer": {"max_epochs": max_epochs}, "optim": {"lr": 1e-4}}
    data = {"root": "/data/mmimdb", "splits": {}}
    whole, shared = fingerprints(settings, data, weight)
    run_dir = folder / (name or weight_folder_name(weight))
    metrics = {"clip_weight": weight, "class_idx": 19, "genre": "western", "seed": 42,
               "model": "CLIPSup-demo", "max_epochs": max_epochs, "best_epoch": 1,
               "num_align": 159, "dev": {"f1": 0.1, "f1_macro": 0.5},
               "test": {"f1": test_f1, "f1_macro": 0.5},
               "alignment": {"metric": metric, "score": 0.07, "topk": 10, "text_layer": "all",
                             "image_layer": "all"},
               "checkpoint": str(run_dir / "best.ckpt"), "run_dir": str(run_dir),
               "settings": settings, "data": data,
               "config_sha256": whole, "settings_sha256": shared}
    run_dir.mkdir(parents=True)
    (run_dir / "metrics.json").write_text(json.dumps(metrics))
    os.utime(run_dir / "metrics.json", (written_at, written_at))
    return metrics


def test_sweep_summary_holds_runs_of_one_settings_and_lists_the_others(tmp_path, caplog):
    """Weights 0 and 1 trained for 2 epochs, then 0.5 rerun for 30: one curve per settings."""
    from platonic.clip.sweep_summary import write_summary

    two = [_plant_run(tmp_path, w, 2, f1, 1000) for w, f1 in ((0.0, 0.1), (1.0, 0.3))]
    thirty = _plant_run(tmp_path, 0.5, 30, 0.9, 2000)
    legacy = _plant_run(tmp_path, 0.1234567, 2, 0.2, 1000, name="clip-weight_0.123457")

    def table(name: str) -> list[dict[str, str]]:
        with open(tmp_path / name) as f:
            return list(csv.DictReader(f))

    with caplog.at_level("WARNING"):
        write_summary(tmp_path, two[0]["settings_sha256"])
    assert [(float(r["clip_weight"]), float(r["test_f1"])) for r in table("sweep.csv")] == \
        [(0.0, 0.1), (1.0, 0.3)]
    left_out = {float(r["clip_weight"]): r["reason"] for r in table("sweep_left_out.csv")}
    assert left_out == {
        0.5: "other settings: trainer.max_epochs=30 (summary: 2)",
        0.1234567: "its folder name is not its exact clip_weight (clip-weight_0.1234567)"}
    assert f"{thirty['run_dir']}: left out of the sweep summary: other settings: " \
           "trainer.max_epochs=30 (summary: 2)" in caplog.text
    assert f"{legacy['run_dir']}: left out" in caplog.text

    write_summary(tmp_path)  # no sweep named: the newest run's settings
    assert [float(r["clip_weight"]) for r in table("sweep.csv")] == [0.5]
    assert sorted(float(r["clip_weight"]) for r in table("sweep_left_out.csv")) == \
        [0.0, 0.1234567, 1.0]

    for run in (thirty, legacy):
        shutil.rmtree(run["run_dir"])
    write_summary(tmp_path)
    assert [float(r["clip_weight"]) for r in table("sweep.csv")] == [0.0, 1.0]
    assert not (tmp_path / "sweep_left_out.csv").exists()  # none left out: no stale list


@pytest.mark.parametrize("metric", ["mutual_knn", "cka"])
def test_sweep_plot_names_the_runs_metric_and_draws_chance_only_for_mutual_knn(tmp_path, metric):
    """The alignment axis says which metric the runs used (it was fixed to mutual kNN, k=10);
    k / (N - 1) is mutual kNN's chance level only, so no other metric gets that line."""
    from platonic.clip.sweep_summary import plot_sweep, sweep_runs, sweep_table

    for weight in (0.0, 1.0):
        _plant_run(tmp_path, weight, 2, 0.3, 1000, metric=metric)
    table = sweep_table(sweep_runs(tmp_path))
    ax = plot_sweep(table).axes[1]
    lines = [line.get_label() for line in ax.get_lines()]
    if metric == "mutual_knn":
        assert ax.get_ylabel() == "alignment (mutual_knn, k=10)"
        assert table["alignment_chance"].tolist() == [10 / 158] * 2
        assert "chance, k / (N - 1)" in lines
    else:
        assert ax.get_ylabel() == "alignment (cka)"
        assert table["alignment_chance"].isna().all() and "chance, k / (N - 1)" not in lines


# ---- small runs on the embedded fixture ---------------------------------------------------------

VARYING_DEV_F1 = ["class_idx=0", "trainer.max_epochs=4", "optim.lr=1e-3"]


def varying_run_overrides(root: Path, *extra: str) -> list[str]:
    """Genre 0 (drama, half the movies), 4 epochs at a high learning rate: dev F1 changes from
    epoch to epoch (0.270, 0.278, 0.276, 0.222 here), best at neither end, worst at the last."""
    return small_run_overrides(root, "model.model.clip_weight=0.5", *VARYING_DEV_F1, *extra)


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    """The same setting twice (same seed) in two folders."""
    from platonic.clip.train import run

    roots = [tmp_path_factory.mktemp(f"run{i}") for i in range(2)]
    return [run(compose_cfg(*varying_run_overrides(root))) for root in roots]


def test_same_seed_gives_same_metrics(two_runs):
    first, second = two_runs
    for key in ("dev", "test", "alignment", "best_epoch", "config_sha256", "settings_sha256"):
        assert first[key] == second[key], key
    assert first["run_dir"] != second["run_dir"]


def _logged_dev_f1(metrics: dict) -> list[dict[str, str]]:
    with open(Path(metrics["run_dir"]) / "logs" / "version_0" / "metrics.csv") as f:
        return [r for r in csv.DictReader(f) if r.get("val_f1")]


def test_checkpoint_is_the_epoch_of_the_highest_dev_f1(two_runs):
    metrics = two_runs[0]
    assert metrics["selected_on"] == "val_f1"
    rows = _logged_dev_f1(metrics)
    epochs = metrics["max_epochs"]
    assert len(rows) == epochs + 1  # one per training epoch, then the best checkpoint again
    assert [int(r["epoch"]) for r in rows[:epochs]] == list(range(epochs))
    dev_f1 = [float(r["val_f1"]) for r in rows[:epochs]]
    best = dev_f1.index(max(dev_f1))  # the first epoch with the highest dev F1
    assert dev_f1.index(min(dev_f1)) != best and best not in (0, epochs - 1)  # the choice matters
    assert metrics["best_epoch"] == best
    assert float(rows[epochs]["val_f1"]) == pytest.approx(max(dev_f1))
    assert metrics["dev"]["f1"] == pytest.approx(max(dev_f1))
    assert Path(metrics["checkpoint"]).is_file()
    assert f"epoch={best}-" in Path(metrics["checkpoint"]).name


def test_exported_features_are_the_sampled_test_movies(two_runs):
    """The rows of the exported features are test movies (by split.json itself, not by the
    data module), listed in features/selection.json, and are those movies' embeddings under
    the best checkpoint."""
    from platonic.io.features import load_features
    from platonic.mmimdb.dataset import ensure_fixture

    metrics = two_runs[0]
    assert metrics["data"]["root"] == str(ensure_fixture())
    split = json.loads((ensure_fixture() / "split.json").read_text())
    features = Path(metrics["features"]["text"]).parent
    selection = json.loads((features / "selection.json").read_text())
    ids = selection["ids"]
    assert len(set(ids)) == len(ids) == metrics["num_align"] == 32
    assert set(ids) <= set(split["test"]) and not set(ids) & (set(split["train"]) | set(split["dev"]))
    text = load_features(metrics["features"]["text"])
    assert text.meta["ids_sha256"] == hashlib.sha256("\n".join(ids).encode()).hexdigest()
    assert load_features(metrics["features"]["image"]).meta["ids_sha256"] == text.meta["ids_sha256"]

    checkpoint = torch.load(metrics["checkpoint"], map_location="cpu", weights_only=True)
    module = CLIPSup(build_text_tower("tiny_bert", 32), build_image_tower("tiny_vit", 32), 0.5)
    module.load_state_dict(checkpoint["state_dict"])
    module.eval()
    with torch.no_grad():
        _, embedding = module.embed_text([m["text"] for m in selection["movies"]])
    assert torch.allclose(text.feats[:, 1, :32], embedding, atol=1e-5)


def test_alignment_is_the_engines_score_of_the_exported_features(two_runs):
    from platonic.core.alignment import compute_score, exhaustive_search, prepare_features
    from platonic.io.features import load_features

    metrics = two_runs[0]
    text = load_features(metrics["features"]["text"])
    image = load_features(metrics["features"]["image"])
    assert text.feats.shape[:2] == image.feats.shape[:2] == (32, 2)
    assert text.meta["layer_dims"] == [32, 32] and image.meta["layer_dims"] == [192, 32]
    # the image tower's two layers differ in width (zero-padded): clamp over real entries only
    x = prepare_features(text.feats, layer_dims=text.meta["layer_dims"])
    y = prepare_features(image.feats, layer_dims=image.meta["layer_dims"])
    assert metrics["alignment"]["score"] == compute_score(x, y, "mutual_knn", topk=10)[0]
    # the plain per-pair loop agrees up to one near-tied neighbour (1 / (N k))
    oracle, _, _ = exhaustive_search(x, y, "mutual_knn", topk=10)
    assert abs(metrics["alignment"]["score"] - oracle) <= 1 / (32 * 10) + 1e-9
    assert metrics["alignment"]["topk"] == 10


def test_finished_run_is_reused(two_runs, tmp_path):
    from platonic.clip.train import run

    metrics = two_runs[0]
    root = Path(metrics["run_dir"]).parents[3]
    again = run(compose_cfg(*varying_run_overrides(root)))
    assert again == metrics
    assert len(list(Path(metrics["run_dir"]).glob("logs/version_*"))) == 1


def _fixture_copy(tmp_path: Path) -> Path:
    from platonic.mmimdb.dataset import ensure_fixture

    copy = tmp_path / "mmimdb"
    shutil.copytree(ensure_fixture(), copy)
    return copy


def test_data_identity_follows_the_movies_read(tmp_path):
    """Same movies in another folder: same ids and content; one changed plot, genre list or
    poster byte: another content hash for that split only."""
    from platonic.clip.datamodule import RunMovies
    from platonic.mmimdb.dataset import ensure_fixture

    def identity(root: Path) -> dict:
        return RunMovies.select(root, 32, 0).identity()

    original = identity(ensure_fixture())
    copy = _fixture_copy(tmp_path)
    assert identity(copy)["splits"] == original["splits"]
    assert identity(copy)["root"] == str(copy) != original["root"]
    movies = RunMovies.select(copy, 32, 0).selections
    changes = [(("train",), lambda m: _edit_json(copy, m.id, "plot", [m.text + " again"])),
               (("dev",), lambda m: _edit_json(copy, m.id, "genres", [*m.genres, "Western"])),
               (("test", "align"), _repaint_poster)]
    for splits, change in changes:
        change(movies[splits[-1]].movies[0])
        changed = identity(copy)["splits"]
        for split in splits:
            assert changed[split]["ids_sha256"] == original["splits"][split]["ids_sha256"]
            assert changed[split]["content_sha256"] != original["splits"][split]["content_sha256"]
            original["splits"][split] = changed[split]
        assert changed == original["splits"]  # nothing else moved


def _repaint_poster(movie) -> None:
    from PIL import Image

    with Image.open(movie.image_path) as image:
        poster = image.convert("RGB")
    poster.putpixel((0, 0), tuple(255 - c for c in poster.getpixel((0, 0))))
    poster.save(movie.image_path, "JPEG")


def _edit_json(root: Path, movie_id: str, key: str, value: object) -> None:
    path = root / "dataset" / f"{movie_id}.json"
    record = json.loads(path.read_text())
    record[key] = value
    path.write_text(json.dumps(record))


def test_finished_run_is_not_reused_for_another_dataset(two_runs, tmp_path, monkeypatch,
                                                        no_model_loads):
    """`data.root: null` with $MMIMDB_ROOT naming another dataset: the settings are the same,
    the movies are not, so the run is redone (here: stopped where the towers would load)."""
    from platonic.clip.train import run

    copy = _fixture_copy(tmp_path)
    first_train = json.loads((copy / "split.json").read_text())["train"][0]
    _edit_json(copy, first_train, "genres", ["Drama"])
    monkeypatch.setenv("MMIMDB_ROOT", str(copy))
    root = Path(two_runs[0]["run_dir"]).parents[3]
    with pytest.raises(AssertionError, match="a model was loaded"):
        run(compose_cfg(*varying_run_overrides(root)))


def test_a_failed_rerun_with_other_settings_leaves_the_previous_run_whole(two_runs, monkeypatch):
    """A rerun with other settings that fails after writing its features (before its
    metrics.json) changes nothing; the old settings are then still reused, and a rerun that
    succeeds replaces the whole folder."""
    import platonic.clip.train as train
    from platonic.io.storage import sha256_file

    metrics = two_runs[1]
    run_dir = Path(metrics["run_dir"])
    root = run_dir.parents[3]

    def files() -> dict[str, str]:
        return {str(p.relative_to(run_dir)): sha256_file(p) for p in run_dir.rglob("*") if p.is_file()}

    before = files()

    def crash(*args, **kwargs):
        raise RuntimeError("crash after the features were written")

    with monkeypatch.context() as patch:
        patch.setattr(train, "measure_alignment", crash)
        with pytest.raises(RuntimeError, match="crash after the features"):
            train.run(compose_cfg(*varying_run_overrides(root, "trainer.max_epochs=1")))
    assert files() == before
    assert sorted(p.name for p in run_dir.parent.iterdir()) == [run_dir.name]  # nothing aside
    assert train.run(compose_cfg(*varying_run_overrides(root))) == metrics

    replaced = train.run(compose_cfg(*varying_run_overrides(root, "trainer.max_epochs=1")))
    assert replaced["max_epochs"] == 1 and replaced["config_sha256"] != metrics["config_sha256"]
    assert json.loads((run_dir / "metrics.json").read_text()) == replaced
    assert [p.name for p in run_dir.glob("logs/version_*/checkpoints/*.ckpt")] == \
        [Path(replaced["checkpoint"]).name]  # the old run's checkpoint went with it
    assert sorted(p.name for p in run_dir.parent.iterdir()) == [run_dir.name]
