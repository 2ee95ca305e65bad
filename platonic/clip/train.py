"""One finetuning run, the task of `mmimdb/clip_finetune_binary.py` (one Hydra job per clip_weight).

Checks the settings first (one-line errors), selects the movies, seeds Python, numpy, torch and
Lightning, trains with the checkpoint chosen on the dev split, evaluates the best checkpoint on
dev and test, exports both towers' features on the sampled test movies (the
`extract_features.py` format) and measures their alignment with the project's engine.

Layout: `<default_root_dir>/<model.name>/class_<idx>/seed_<seed>/clip-weight_<w>/`
    metrics.json, logs/version_0/{metrics.csv, checkpoints/*.ckpt},
    features/{text,image}_tower.safetensors, features/selection.json (the aligned movies)
The folder is built aside and renamed into place once complete. A rerun whose `metrics.json`
was made from the same settings and the same movies is skipped (nothing is retrained).
"""

from __future__ import annotations

import logging
import re
import sys
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from platonic.clip.datamodule import MMIMDbDataModule, RunMovies, ids_sha256
from platonic.clip.loss import balanced_pos_weight
from platonic.clip.module import CLIPSup, OptimSettings
from platonic.clip.settings import RunSettings, check_settings, fingerprints, run_settings
from platonic.clip.sweep_summary import record_sweep_job, write_summary
from platonic.clip.towers import build_image_tower, build_text_tower
from platonic.core.alignment import best_of_grid, load_kernels, score_grid
from platonic.core.metrics import check_topk, get_metric
from platonic.errors import PlatonicError
from platonic.io.features import save_features
from platonic.io.storage import atomic_dir, read_json, write_json
from platonic.mmimdb.dataset import save_selection
from platonic.mmimdb.genres import GENRES
from platonic.models.vision import stack_layers

log = logging.getLogger(__name__)

METRICS = "metrics.json"
FEATURES = "features"
SELECTION = "selection.json"
MONITOR = "val_f1"  # dev split, positive-class F1: picks the checkpoint (the original used test)
FEATURE_LAYERS = ["backbone", "embedding"]


def reusable(run_dir: Path, fingerprint: str) -> dict[str, Any] | None:
    path = run_dir / METRICS
    if not path.is_file():
        return None
    metrics = read_json(path)
    return metrics if metrics.get("config_sha256") == fingerprint else None


def run_task(cfg: DictConfig) -> dict[str, Any]:
    """The Hydra task: `run`, with bad input as one line. Inside a Ray job the error is raised
    for the launcher to report with the job's overrides; elsewhere it is printed, exit status 2.
    A job of a multirun records its run for the sweep summary; a single run writes its own."""
    try:
        metrics = run(cfg)
    except PlatonicError as err:
        if _in_ray_task():
            raise
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    if HydraConfig.initialized():
        hydra = HydraConfig.get()
        if hydra.mode == RunMode.RUN:
            write_summary(Path(metrics["run_dir"]).parent, metrics["settings_sha256"])
        else:
            record_sweep_job(hydra.runtime.output_dir, metrics)
    return metrics


def _in_ray_task() -> bool:
    ray = sys.modules.get("ray")
    return ray is not None and ray.is_initialized() and \
        ray.get_runtime_context().get_task_id() is not None


def run(cfg: DictConfig) -> dict[str, Any]:
    """Train, evaluate, export and align one setting; returns what `metrics.json` holds.

    The run folder is one unit: built aside and renamed into place with its `metrics.json`
    only when everything in it is written, so a failed rerun leaves the previous run whole."""
    settings = check_settings(cfg)
    movies = RunMovies.select(settings.data_root, cfg.data.align_samples, cfg.data.sample_seed)
    if get_metric(cfg.alignment.metric).uses_topk:
        check_topk(cfg.alignment.topk, len(movies.selections["align"].movies))
    recorded = {"settings": run_settings(cfg), "data": movies.identity()}
    fingerprint, settings_fingerprint = fingerprints(recorded["settings"], recorded["data"],
                                                     settings.clip_weight)
    previous = reusable(settings.run_dir, fingerprint)
    if previous is not None:
        log.info("%s: finished earlier with the same settings and movies, reused", settings.run_dir)
        return previous
    for selection in movies.selections.values():
        if selection.note():
            log.info("%s", selection.note())
    with atomic_dir(settings.run_dir, METRICS, replace=True) as staging:
        metrics = {**train_and_measure(cfg, settings, movies, staging), **recorded,
                   "config_sha256": fingerprint, "settings_sha256": settings_fingerprint}
        write_json(staging / METRICS, metrics)
    log.info("%s: dev F1 %.3f, test F1 %.3f, alignment %.3f", settings.run_dir,
             metrics["dev"]["f1"], metrics["test"]["f1"], metrics["alignment"]["score"])
    return metrics


def train_and_measure(cfg: DictConfig, settings: RunSettings, movies: RunMovies,
                      staging: Path) -> dict[str, Any]:
    """The run itself, written under `staging` (the run folder before its rename); the paths
    it returns are those of the final folder."""
    started = time.perf_counter()
    L.seed_everything(settings.seed, workers=True)
    model_cfg = cfg.model.model
    text = build_text_tower(model_cfg.text_tower, model_cfg.projection_dim)
    image = build_image_tower(model_cfg.image_tower, model_cfg.projection_dim,
                              model_cfg.get("image_size"))
    data = MMIMDbDataModule(movies, settings.class_idx, image.train_transform,
                            image.eval_transform, batch_size=cfg.data.batch_size,
                            num_workers=cfg.data.num_workers)
    module = CLIPSup(text, image, settings.clip_weight, OptimSettings(**cfg.optim),
                     pos_weight(cfg.loss.pos_weight, data.splits["train"].labels))
    checkpoint = ModelCheckpoint(monitor=MONITOR, mode="max", save_top_k=1,
                                 filename="best-{epoch}-{val_f1:.4f}")
    trainer = build_trainer(cfg, staging, checkpoint)
    trainer.fit(module, datamodule=data)
    best = checkpoint.best_model_path
    dev = trainer.validate(module, datamodule=data, ckpt_path=best, verbose=False)[0]
    test = trainer.test(module, datamodule=data, ckpt_path=best, verbose=False)[0]
    features = export_features(module.to(trainer.strategy.root_device), data, settings,
                               staging / FEATURES, best)
    final = {name: settings.run_dir / path.relative_to(staging) for name, path in features.items()}
    return {
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
        "checkpoint": str(settings.run_dir / Path(best).relative_to(staging)),
        "features": {name: str(final[name]) for name in ("text", "image")},
        "num_train": len(data.splits["train"]), "num_dev": len(data.splits["dev"]),
        "num_test": len(data.splits["test"]), "num_align": len(data.splits["align"]),
        "wall_s": round(time.perf_counter() - started, 1),
    }


def pos_weight(setting: Any, train_labels: list[float]) -> float | None:
    """`loss.pos_weight` (checked by `check_pos_weight`): "balanced" (negatives / positives of
    train), a number, or null (none)."""
    if setting is None:
        return None
    if setting == "balanced":
        return balanced_pos_weight(train_labels)
    return float(setting)


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
                    folder: Path, checkpoint: str) -> dict[str, Path]:
    """Both towers' features in the feature-file format, one file per tower, and the aligned
    movies (`selection.json`: ids, texts and genres in row order)."""
    text, image, text_dims, image_dims = tower_features(module, data)
    align = data.movies.selections["align"]
    common = {"dataset": "mmimdb", "subset": "test", "level": None,
              "ids_sha256": ids_sha256(align.ids), "class_idx": settings.class_idx,
              "clip_weight": settings.clip_weight, "checkpoint": str(Path(checkpoint).name),
              "layers": FEATURE_LAYERS}
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
    save_selection(folder / SELECTION, align, data.movies.root)
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
