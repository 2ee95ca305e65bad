"""The measure stage: alignment of every x model with every y model, per uniqueness level.

Each feature file is loaded once per run; each y model's kernels are built once and reused for
every x model. A result is reused pair by pair when the fingerprints of both feature files and
the metric settings match the stored ones.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from platonic import cli, metrics
from platonic.alignment import LayerKernels, best_of_grid, load_kernels, score_grid
from platonic.data import dataset_label
from platonic.devices import pick_device
from platonic.errors import PlatonicError
from platonic.features import read_meta, resolve_feature_file
from platonic.levels import parse_levels
from platonic.models import get_models
from platonic.results import AlignmentResult, alignment_path, load_result, save_result
from platonic.storage import Level, level_dir


@dataclass
class Side:
    """One side (x or y) of the comparison: modality, pooling, prompt and model ids."""

    modality: str
    pool: str
    prompt: Any
    models: list[str]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="Alignment between every x model and every y model (best over all layer "
                    "pairs), from feature files written by extract_features.py.")
    cli.add_alignment_args(p)
    p.add_argument("--models_x", nargs="+", help="x models by id (default: the model set's)")
    p.add_argument("--models_y", nargs="+", help="y models by id (default: the model set's)")
    cli.add_levels_arg(p, "the dirs then hold '{}' for the level (else a u=<level> sub-folder)")
    cli.add_features_dir(p, "--input_dir")
    cli.add_align_dir(p, "--output_dir")
    p.add_argument("--precise", action="store_true",
                   help="outlier threshold from one global quantile (else the mean of per-sample ones)")
    p.add_argument("--force_remake", action="store_true")
    cli.add_device_arg(p)
    return p


def side_from_args(args: argparse.Namespace, axis: str) -> Side:
    modality = getattr(args, f"modality_{axis}")
    models = getattr(args, f"models_{axis}") or [m.id for m in get_models(args.modelset, modality)]
    if not models:
        raise PlatonicError(f"model set {args.modelset!r} has no {modality} models")
    return Side(modality, getattr(args, f"pool_{axis}"), getattr(args, f"prompt_{axis}"), models)


def feature_files(args: argparse.Namespace, side: Side, in_dir: Path) -> list[Path]:
    return [resolve_feature_file(in_dir, args.dataset, args.subset, m, side.pool, side.prompt)
            for m in side.models]


def file_fingerprint(path: Path) -> str:
    return read_meta(path)["content_sha256"]


def settings_of(args: argparse.Namespace) -> dict[str, Any]:
    """Everything besides the inputs that changes a score."""
    return {"metric": args.metric, "topk": args.topk, "normalize": True,
            "outlier_quantile": 0.95, "precise": args.precise, "order": "metric(y, x)"}


def reusable_pairs(path: Path, settings: dict[str, Any], force: bool) -> dict[tuple[str, str], Any]:
    """(fingerprint_x, fingerprint_y) -> (score, indices, grid) from a previous result."""
    if force or not path.exists():
        return {}
    old = load_result(path, with_grids=True)
    if old.meta.get("settings") != settings:
        return {}
    fps_x, fps_y = old.meta["fingerprints_x"], old.meta["fingerprints_y"]
    return {(fps_x[i], fps_y[j]): (old.scores[i, j], old.indices[i][j], old.grids.get((i, j)))
            for i in range(len(fps_x)) for j in range(len(fps_y))}


def check_sample_counts(paths_x: list[Path], paths_y: list[Path], topk: int, uses_topk: bool) -> None:
    """Every file must hold the same number of samples, and topk must be below it."""
    counts = {p: int(read_meta(p)["num_samples"]) for p in [*paths_x, *paths_y]}
    first = paths_x[0]
    for p, n in counts.items():
        if n != counts[first]:
            raise PlatonicError(f"{first} has {counts[first]} samples but {p} has {n}")
    if uses_topk and not 1 <= topk < counts[first]:
        raise PlatonicError(f"--topk {topk} must be between 1 and N-1 = {counts[first] - 1} "
                            f"(N = {counts[first]} samples in {first})")


def measure_level(args: argparse.Namespace, x: Side, y: Side, level: Level,
                  device: torch.device) -> Path:
    in_dir, out_dir = level_dir(args.input_dir, level), level_dir(args.output_dir, level)
    paths_x, paths_y = feature_files(args, x, in_dir), feature_files(args, y, in_dir)
    missing = [str(p) for p in [*paths_x, *paths_y] if not p.exists()]
    if missing:
        raise PlatonicError(f"{len(missing)} feature file(s) missing: {', '.join(missing)}")
    check_sample_counts(paths_x, paths_y, args.topk, metrics.get_metric(args.metric).uses_topk)
    out = alignment_path(out_dir, args.dataset, args.subset, args.modelset, x.modality, x.pool,
                         x.prompt, y.modality, y.pool, y.prompt, args.metric, args.topk)
    settings = settings_of(args)
    fps_x = [file_fingerprint(p) for p in paths_x]
    fps_y = [file_fingerprint(p) for p in paths_y]
    reuse = reusable_pairs(out, settings, args.force_remake)
    todo = [(i, j) for i in range(len(paths_x)) for j in range(len(paths_y))
            if (fps_x[i], fps_y[j]) not in reuse]
    if not todo and out.exists():
        print(f"up to date: {out}")
        return out
    scores = np.zeros((len(paths_x), len(paths_y)))
    indices: list[list[Any]] = [[None] * len(paths_y) for _ in paths_x]
    grids: dict[tuple[int, int], np.ndarray] = {}
    for i, j in ((i, j) for i in range(len(paths_x)) for j in range(len(paths_y))):
        if (i, j) not in todo:
            scores[i, j], indices[i][j], grid = reuse[(fps_x[i], fps_y[j])]
            if grid is not None:
                grids[(i, j)] = grid
    by_x: dict[int, list[int]] = {}
    for i, j in todo:
        by_x.setdefault(i, []).append(j)
    kernels_y: dict[int, LayerKernels] = {}
    desc = args.metric if level is None else f"{args.metric} {level_dir('', level)}"
    with tqdm(total=len(todo), desc=desc, unit="pair") as bar:
        for i, js in by_x.items():
            kx = load_kernels(paths_x[i], device, args.precise)
            for j in js:
                if j not in kernels_y:
                    kernels_y[j] = load_kernels(paths_y[j], device, args.precise)
                # The original called compute_score(y, x): metric(y, x), y layers in the outer loop.
                grid_yx = score_grid(kernels_y[j], kx, args.metric, args.topk)
                score, best = best_of_grid(grid_yx)
                scores[i, j], indices[i][j] = score, None if best is None else (best[1], best[0])
                grids[(i, j)] = grid_yx.T
                bar.update()
    meta = {
        "dataset": args.dataset, "subset": args.subset, "modelset": args.modelset, "level": level,
        "modality_x": x.modality, "pool_x": x.pool, "prompt_x": x.prompt,
        "modality_y": y.modality, "pool_y": y.pool, "prompt_y": y.prompt,
        "settings": settings,
        "feature_files_x": [str(p) for p in paths_x], "feature_files_y": [str(p) for p in paths_y],
        "fingerprints_x": fps_x, "fingerprints_y": fps_y,
    }
    save_result(out, AlignmentResult(args.metric, args.topk, x.models, y.models, scores, indices,
                                     meta, grids))
    print(f"wrote {out}")
    return out


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.dataset, args.subset = dataset_label(args.dataset, args.subset)
    x, y = side_from_args(args, "x"), side_from_args(args, "y")
    device = pick_device(args.device)
    for level in parse_levels(args.levels) if args.levels else [None]:
        measure_level(args, x, y, level, device)
    return 0
