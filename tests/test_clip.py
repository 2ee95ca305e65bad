"""CLIP finetuning: loss, schedule, towers, settings checks, and small runs on the fixture."""

from __future__ import annotations

import csv
import math
import os
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

REPO = Path(__file__).resolve().parents[1]
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


@pytest.mark.parametrize("override, message", [
    ("class_idx=23", "class_idx 23 is outside 0..22"),
    ("class_idx=-1", "class_idx -1 is outside 0..22"),
    ("model.model.clip_weight=-0.5", "clip_weight must be a number >= 0, got -0.5"),
    ("model.model.text_tower=bert_huge", "unknown text tower 'bert_huge'"),
    ("model.model.image_tower=resnet_9000", "unknown image tower 'resnet_9000'"),
    ("data.root=/nonexistent/mmimdb", "MM-IMDb root /nonexistent/mmimdb does not exist"),
])
def test_bad_settings_are_one_line_errors_before_any_model_loads(tmp_path, override, message):
    from platonic.clip.train import run

    cfg = compose_cfg(*small_run_overrides(tmp_path), override)
    with pytest.raises(PlatonicError, match=message.replace("(", r"\(")) as err:
        run(cfg)
    assert "\n" not in str(err.value)
    assert not any(tmp_path.iterdir())  # nothing written


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


# ---- small runs on the embedded fixture ---------------------------------------------------------

@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    """The same setting twice (same seed) in two folders."""
    from platonic.clip.train import run

    roots = [tmp_path_factory.mktemp(f"run{i}") for i in range(2)]
    return [run(compose_cfg(*small_run_overrides(root, "model.model.clip_weight=0.5")))
            for root in roots]


def test_same_seed_gives_same_metrics(two_runs):
    first, second = two_runs
    for key in ("dev", "test", "alignment", "best_epoch", "config_sha256", "settings_sha256"):
        assert first[key] == second[key], key
    assert first["run_dir"] != second["run_dir"]


def test_checkpoint_is_chosen_on_dev_f1(two_runs):
    metrics = two_runs[0]
    assert metrics["selected_on"] == "val_f1"
    with open(next(Path(metrics["run_dir"]).glob("logs/version_*/metrics.csv"))) as f:
        rows = [r for r in csv.DictReader(f) if r.get("val_f1")]
    dev_f1 = [float(r["val_f1"]) for r in rows[:2]]  # the 2 training epochs
    assert len(rows) == 3  # then the best checkpoint validated again, to the same score
    assert float(rows[2]["val_f1"]) == pytest.approx(max(dev_f1))
    assert metrics["best_epoch"] == dev_f1.index(max(dev_f1))  # first best epoch on dev
    assert metrics["dev"]["f1"] == pytest.approx(max(dev_f1))
    assert Path(metrics["checkpoint"]).is_file()
    assert f"epoch={metrics['best_epoch']}" in Path(metrics["checkpoint"]).name


def test_alignment_is_the_engines_score_of_the_exported_features(two_runs):
    from platonic.alignment import compute_score, exhaustive_search, prepare_features
    from platonic.features import load_features

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
    again = run(compose_cfg(*small_run_overrides(root, "model.model.clip_weight=0.5")))
    assert again == metrics
    assert len(list(Path(metrics["run_dir"]).glob("logs/version_*"))) == 1
