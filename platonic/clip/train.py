"""One finetuning run, the task of `mmimdb/clip_finetune_binary.py` (one Hydra job per clip_weight).

Checks the settings first (one-line errors), seeds Python, numpy, torch and Lightning, trains
with the checkpoint chosen on the dev split, evaluates the best checkpoint on dev and test,
exports both towers' features on the sampled test movies (the `extract_features.py` format) and
measures their alignment with the project's engine, then writes `metrics.json` atomically.

Layout: `<default_root_dir>/<model.name>/class_<idx>/seed_<seed>/clip-weight_<w>/`
    metrics.json, logs/version_*/{metrics.csv, hparams.yaml, checkpoints/*.ckpt},
    features/{text,image}_tower.safetensors
A rerun whose `metrics.json` was made from the same settings is skipped (nothing is retrained).
"""

from __future__ import annotations

import hashlib
import logging
import re
import sys
import time
from dataclasses import dataclass
from numbers import Real
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import to_absolute_path
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from platonic.alignment import best_of_grid, load_kernels, score_grid
from platonic.clip.data import MMIMDbDataModule
from platonic.clip.loss import balanced_pos_weight
from platonic.clip.module import CLIPSup, OptimSettings
from platonic.clip.summary import write_summary
from platonic.clip.towers import build_image_tower, build_text_tower, check_unknown_towers
from platonic.errors import PlatonicError
from platonic.features import save_features
from platonic.mmimdb.dataset import resolve_root
from platonic.mmimdb.genres import GENRES, check_class_idx
from platonic.storage import read_json, sha256_of, write_json
from platonic.vision import stack_layers

log = logging.getLogger(__name__)

METRICS = "metrics.json"
MONITOR = "val_f1"  # dev split, positive-class F1: picks the checkpoint (the original used test)
MODES = ("train",)
FEATURE_LAYERS = ["backbone", "embedding"]


@dataclass(frozen=True)
class RunSettings:
    class_idx: int
    clip_weight: float
    seed: int
    model_name: str
    run_dir: Path


def check_settings(cfg: DictConfig) -> RunSettings:
    """Every check that needs no model or data: a one-line error for each bad setting."""
    if OmegaConf.select(cfg, "model") is None:
        raise PlatonicError("no model config: add +model=clip_demo (offline towers) or "
                            "+model=clip_sup (the paper's towers)")
    if OmegaConf.select(cfg, "data") is None:
        raise PlatonicError("no data config: add +data=mmimdb")
    if cfg.mode not in MODES:
        raise PlatonicError(f"mode {cfg.mode!r} is not supported; use mode=train")
    if cfg.class_idx is None:
        raise PlatonicError("class_idx is not set: add +class_idx=<0..22> (e.g. 19 = western)")
    class_idx = check_class_idx(cfg.class_idx)
    weight = cfg.model.model.clip_weight
    if isinstance(weight, bool) or not isinstance(weight, Real) or not weight >= 0:
        raise PlatonicError(f"model.model.clip_weight must be a number >= 0, got {weight!r}")
    check_unknown_towers(cfg.model.model.text_tower, cfg.model.model.image_tower)
    root = Path(to_absolute_path(str(cfg.trainer.default_root_dir)))
    run_dir = (root / str(cfg.model.name) / f"class_{class_idx}" / f"seed_{cfg.seed}"
               / f"clip-weight_{float(weight):g}")
    return RunSettings(class_idx, float(weight), int(cfg.seed), str(cfg.model.name), run_dir)


def config_fingerprints(cfg: DictConfig) -> tuple[str, str]:
    """(of the resolved config, of the same without clip_weight), both without the output root
    (a moved results folder is still reused): the first decides whether a finished run is
    reused, the second whether runs belong to one sweep."""
    plain = OmegaConf.to_container(cfg, resolve=True)
    del plain["trainer"]["default_root_dir"]
    whole = sha256_of(plain)
    del plain["model"]["model"]["clip_weight"]
    return whole, sha256_of(plain)


def reusable(run_dir: Path, fingerprint: str) -> dict[str, Any] | None:
    path = run_dir / METRICS
    if not path.is_file():
        return None
    metrics = read_json(path)
    return metrics if metrics.get("config_sha256") == fingerprint else None


def run_task(cfg: DictConfig) -> dict[str, Any]:
    """The Hydra task: `run`, with bad input as one line. Inside a Ray job the error is raised
    for the launcher to report with the job's overrides; elsewhere it is printed, exit status 2.
    A single run (not a multirun) also writes its sweep summary."""
    try:
        metrics = run(cfg)
    except PlatonicError as err:
        if _in_ray_task():
            raise
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.RUN:
        write_summary(Path(metrics["run_dir"]).parent)
    return metrics


def _in_ray_task() -> bool:
    ray = sys.modules.get("ray")
    return ray is not None and ray.is_initialized() and \
        ray.get_runtime_context().get_task_id() is not None


def run(cfg: DictConfig) -> dict[str, Any]:
    """Train, evaluate, export and align one setting; returns what `metrics.json` holds."""
    settings = check_settings(cfg)
    resolve_root(cfg.data.root)  # a missing dataset root fails before any model is loaded
    fingerprint, settings_fingerprint = config_fingerprints(cfg)
    previous = reusable(settings.run_dir, fingerprint)
    if previous is not None:
        log.info("%s: finished earlier with the same settings, reused", settings.run_dir)
        return previous
    started = time.perf_counter()
    L.seed_everything(settings.seed, workers=True)
    model_cfg = cfg.model.model
    text = build_text_tower(model_cfg.text_tower, model_cfg.projection_dim)
    image = build_image_tower(model_cfg.image_tower, model_cfg.projection_dim,
                              model_cfg.get("image_size"))
    data = MMIMDbDataModule(settings.class_idx, image.train_transform, image.eval_transform,
                            root=cfg.data.root, batch_size=cfg.data.batch_size,
                            num_workers=cfg.data.num_workers, align_samples=cfg.data.align_samples,
                            sample_seed=cfg.data.sample_seed)
    data.setup("fit")
    module = CLIPSup(text, image, settings.clip_weight, OptimSettings(**cfg.optim),
                     pos_weight(cfg.loss.pos_weight, data.splits["train"].labels))
    checkpoint = ModelCheckpoint(monitor=MONITOR, mode="max", save_top_k=1,
                                 filename="best-{epoch}-{val_f1:.4f}")
    trainer = build_trainer(cfg, settings.run_dir, checkpoint)
    trainer.fit(module, datamodule=data)
    best = checkpoint.best_model_path
    dev = trainer.validate(module, datamodule=data, ckpt_path=best, verbose=False)[0]
    test = trainer.test(module, datamodule=data, ckpt_path=best, verbose=False)[0]
    features = export_features(module.to(trainer.strategy.root_device), data, settings, best)
    metrics = {
        "clip_weight": settings.clip_weight,
        "class_idx": settings.class_idx,
        "genre": GENRES[settings.class_idx],
        "seed": settings.seed,
        "model": settings.model_name,
        "text_tower": str(model_cfg.text_tower),
        "image_tower": str(model_cfg.image_tower),
        "max_epochs": int(cfg.trainer.max_epochs),
        "best_epoch": _best_epoch(best),
        "selected_on": MONITOR,
        "pos_weight": module.pos_weight,
        "dev": _stage_metrics(dev, "val"),
        "test": _stage_metrics(test, "test"),
        "alignment": measure_alignment(features, cfg.alignment.metric, cfg.alignment.topk),
        "run_dir": str(settings.run_dir),
        "checkpoint": str(Path(best).resolve()),
        "features": {name: str(path.resolve()) for name, path in features.items()},
        "num_train": len(data.splits["train"]), "num_dev": len(data.splits["dev"]),
        "num_test": len(data.splits["test"]), "num_align": len(data.splits["align"]),
        "wall_s": round(time.perf_counter() - started, 1),
        "config_sha256": fingerprint,
        "settings_sha256": settings_fingerprint,
    }
    write_json(settings.run_dir / METRICS, metrics)
    log.info("%s: dev F1 %.3f, test F1 %.3f, alignment %.3f", settings.run_dir,
             metrics["dev"]["f1"], metrics["test"]["f1"], metrics["alignment"]["score"])
    return metrics


def pos_weight(setting: Any, train_labels: list[float]) -> float | None:
    """`loss.pos_weight`: "balanced" (negatives / positives of train), a number, or null (none)."""
    if setting is None:
        return None
    if setting == "balanced":
        return balanced_pos_weight(train_labels)
    if isinstance(setting, Real) and not isinstance(setting, bool) and setting > 0:
        return float(setting)
    raise PlatonicError(f"loss.pos_weight must be 'balanced', a number > 0 or null, got {setting!r}")


def build_trainer(cfg: DictConfig, run_dir: Path, checkpoint: ModelCheckpoint) -> L.Trainer:
    options = OmegaConf.to_container(cfg.trainer, resolve=True)
    options["default_root_dir"] = str(run_dir)
    return L.Trainer(**options, callbacks=[checkpoint],
                     logger=CSVLogger(save_dir=str(run_dir), name="logs"))


def _best_epoch(best: str) -> int | None:
    """The epoch in the checkpoint's name (`best-epoch=N-...`), without unpickling it."""
    found = re.search(r"epoch=(\d+)", Path(best).name)
    return int(found.group(1)) if found else None


def _stage_metrics(logged: dict[str, float], stage: str) -> dict[str, float]:
    return {key.removeprefix(f"{stage}_"): float(value) for key, value in logged.items()}


@torch.no_grad()
def tower_features(module: CLIPSup, data: MMIMDbDataModule) -> tuple[torch.Tensor, torch.Tensor,
                                                                       list[int], list[int]]:
    """[N, 2, D] text and image features (backbone, normalised embedding) of the align set."""
    module.eval()
    text_rows: list[list[torch.Tensor]] = [[], []]
    image_rows: list[list[torch.Tensor]] = [[], []]
    for images, texts, _ in tqdm(data.align_dataloader(), desc="tower features", unit="batch"):
        for rows, layers in ((text_rows, module.embed_text(texts)),
                             (image_rows, module.embed_images(images.to(module.device)))):
            for row, layer in zip(rows, layers, strict=True):
                row.append(layer.float().cpu())
    text_layers = [torch.cat(r) for r in text_rows]
    image_layers = [torch.cat(r) for r in image_rows]
    return (stack_layers(text_layers), stack_layers(image_layers),
            [t.shape[1] for t in text_layers], [t.shape[1] for t in image_layers])


def export_features(module: CLIPSup, data: MMIMDbDataModule, settings: RunSettings,
                    checkpoint: str) -> dict[str, Path]:
    """Both towers' features in the feature-file format, one file per tower."""
    text, image, text_dims, image_dims = tower_features(module, data)
    ids = [m.id for m in data.splits["align"].movies]
    ids_sha = hashlib.sha256("\n".join(ids).encode()).hexdigest()
    common = {"dataset": "mmimdb", "subset": "test", "level": None, "ids_sha256": ids_sha,
              "class_idx": settings.class_idx, "clip_weight": settings.clip_weight,
              "checkpoint": str(Path(checkpoint).name), "layers": FEATURE_LAYERS}
    folder = settings.run_dir / "features"
    towers = {"text": (module.text_tower, text, text_dims, "language", "avg"),
              "image": (module.image_tower, image, image_dims, "vision", "cls")}
    paths = {}
    for key, (tower, feats, dims, modality, pool) in towers.items():
        path = folder / f"{key}_tower.safetensors"
        meta = {**common, "model": f"{tower.name}@{settings.run_dir.name}", "modality": modality,
                "pool": pool, "layer_dims": dims,
                "num_params": sum(p.numel() for p in tower.parameters())}
        save_features(path, feats, meta)
        paths[key] = path
    return paths


def measure_alignment(features: dict[str, Path], metric: str, topk: int) -> dict[str, Any]:
    """Best score over the towers' layer pairs, as the measure stage computes it."""
    text, image = load_kernels(features["text"]), load_kernels(features["image"])
    grid = score_grid(text, image, metric, topk)
    score, indices = best_of_grid(grid)
    names = ["all", *FEATURE_LAYERS]
    return {"metric": metric, "topk": topk, "score": score,
            "text_layer": names[indices[0] + 1] if indices else None,
            "image_layer": names[indices[1] + 1] if indices else None,
            "grid": grid.tolist()}
