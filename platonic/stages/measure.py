"""The measure stage: alignment of every x model with every y model, per uniqueness level.

Each feature file is loaded once per run; each y model's kernels are built once and reused for
every x model. A result is reused pair by pair when the fingerprints of both feature files and
the metric settings match the stored ones; the result written always holds exactly the
requested models in the requested order. A pair whose layer grid has no positive finite value
gets an undefined score (NaN, null in the JSON).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from platonic.core import metrics
from platonic.core.alignment import LayerKernels, best_of_grid, load_kernels, score_grid
from platonic.core.calibration import NULL_VERSION, calibrate, check_counts
from platonic.data.datasets import dataset_label
from platonic.data.levels import parse_levels
from platonic.errors import PlatonicError
from platonic.io.features import read_meta, resolve_feature_file, verified_fingerprint
from platonic.io.results import (
    AlignmentResult,
    Calibration,
    IncompleteResult,
    alignment_path,
    load_result,
    save_result,
)
from platonic.io.storage import Level, level_dir, sha256_of
from platonic.models.devices import pick_device
from platonic.models.registry import get_models
from platonic.run import _args as cli


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
    p.add_argument("--null", type=int, default=0, metavar="N",
                   help="also the score's null distribution from N random pairings of the "
                        "samples (each through the same best-over-layer-pairs search): null "
                        "mean, 95th percentile, p-value, calibrated score; 0: off")
    p.add_argument("--bootstrap", type=int, default=1000, metavar="B",
                   help="with --null: bootstrap replicates (over samples) of the score's 95%% CI "
                        "at the chosen layers")
    p.add_argument("--null_seed", type=int, default=0, help="seed of the permutations and bootstrap")
    p.add_argument("--force_remake", action="store_true")
    cli.add_device_arg(p)
    cli.add_ray_args(p)
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


def settings_of(args: argparse.Namespace) -> dict[str, Any]:
    """Everything besides the inputs that changes a score."""
    settings = {"metric": args.metric, "topk": args.topk, "normalize": True,
                "outlier_quantile": 0.95, "outlier_entries": "real (padding excluded)",
                "precise": args.precise, "order": "metric(y, x)"}
    if args.null:
        settings["null"] = {"permutations": args.null, "bootstrap": args.bootstrap,
                            "seed": args.null_seed, "permuted": "x", "version": NULL_VERSION}
    return settings


def pair_seed(seed: int, fingerprint_x: str, fingerprint_y: str) -> int:
    """The permutations of one model pair: fixed by the seed and the two feature files only."""
    return int(sha256_of(seed, fingerprint_x, fingerprint_y)[:15], 16)


def previous_result(path: Path, settings: dict[str, Any], force: bool) -> AlignmentResult | None:
    """The result already at `path` if it was made with `settings` and is complete, else None
    (a result half-written by a killed run is remade, not read)."""
    if force or not path.exists():
        return None
    try:
        old = load_result(path, with_grids=True)
    except IncompleteResult as err:
        print(f"remaking: {err}")
        return None
    return old if old.meta.get("settings") == settings else None


def reusable_pairs(old: AlignmentResult | None) -> dict[tuple[str, str], Any]:
    """(fingerprint_x, fingerprint_y) -> (score, indices, grid) from a previous result."""
    if old is None:
        return {}
    fps_x, fps_y = old.meta["fingerprints_x"], old.meta["fingerprints_y"]
    return {(fps_x[i], fps_y[j]): (old.scores[i, j], old.indices[i][j], old.grids.get((i, j)),
                                   old.calibration.get((i, j)))
            for i in range(len(fps_x)) for j in range(len(fps_y))}


def holds_exactly(old: AlignmentResult | None, x: Side, y: Side, fps_x: list[str],
                  fps_y: list[str]) -> bool:
    """True when `old` holds the requested models, in the requested order, from these files."""
    return (old is not None and old.models_x == x.models and old.models_y == y.models
            and old.meta.get("fingerprints_x") == fps_x and old.meta.get("fingerprints_y") == fps_y)


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


# score, (x layer, y layer) or None, grid [Lx+1, Ly+1], calibration (with --null) or None
PairScore = tuple[float, Any, np.ndarray, Calibration | None]


@dataclass
class LevelPlan:
    """One level's result file, its inputs, the pairs reusable from the last result and the
    pairs still to score (x index -> y indices)."""

    level: Level
    out: Path
    paths_x: list[Path]
    paths_y: list[Path]
    fps_x: list[str]
    fps_y: list[str]
    settings: dict[str, Any]
    reuse: dict[tuple[str, str], Any]
    todo: dict[int, list[int]]
    up_to_date: bool  # the result at `out` holds exactly these models from these files


def plan_level(args: argparse.Namespace, x: Side, y: Side, level: Level) -> LevelPlan:
    in_dir, out_dir = level_dir(args.input_dir, level), level_dir(args.output_dir, level)
    paths_x, paths_y = feature_files(args, x, in_dir), feature_files(args, y, in_dir)
    missing = [str(p) for p in [*paths_x, *paths_y] if not p.exists()]
    if missing:
        raise PlatonicError(f"{len(missing)} feature file(s) missing: {', '.join(missing)}")
    check_sample_counts(paths_x, paths_y, args.topk, metrics.get_metric(args.metric).uses_topk)
    out = alignment_path(out_dir, args.dataset, args.subset, args.modelset, x.modality, x.pool,
                         x.prompt, y.modality, y.pool, y.prompt, args.metric, args.topk)
    settings = settings_of(args)
    fps_x = [verified_fingerprint(p) for p in paths_x]
    fps_y = [verified_fingerprint(p) for p in paths_y]
    old = previous_result(out, settings, args.force_remake)
    reuse = reusable_pairs(old)
    todo: dict[int, list[int]] = {}
    for i in range(len(paths_x)):
        for j in range(len(paths_y)):
            if (fps_x[i], fps_y[j]) not in reuse:
                todo.setdefault(i, []).append(j)
    return LevelPlan(level, out, paths_x, paths_y, fps_x, fps_y, settings, reuse, todo,
                     holds_exactly(old, x, y, fps_x, fps_y))


def score_pair(kx: LayerKernels, ky: LayerKernels, args: argparse.Namespace, fingerprint_x: str,
               fingerprint_y: str) -> PairScore:
    """One pair's score, layers, grid and (with --null) calibration, with the settings of `args`
    (the measure stage's flags; the feature files' fingerprints seed the pair's permutations)."""
    # The original called compute_score(y, x): metric(y, x), y layers in the outer loop.
    grid_yx = score_grid(ky, kx, args.metric, args.topk)
    score, best = best_of_grid(grid_yx)
    calibration = calibrate(ky, kx, args.metric, args.topk, args.null, args.bootstrap,
                            pair_seed(args.null_seed, fingerprint_x, fingerprint_y),
                            grid=grid_yx) if args.null else None
    return score, None if best is None else (best[1], best[0]), grid_yx.T, calibration


def score_locally(plan: LevelPlan, args: argparse.Namespace,
                  device: torch.device) -> dict[tuple[int, int], PairScore]:
    """The pairs still to score, in this process: each y model's kernels built once."""
    kernels_y: dict[int, LayerKernels] = {}
    scored: dict[tuple[int, int], PairScore] = {}
    level = plan.level
    desc = args.metric if level is None else f"{args.metric} {level_dir('', level)}"
    with tqdm(total=sum(map(len, plan.todo.values())), desc=desc, unit="pair") as bar:
        for i, js in plan.todo.items():
            kx = load_kernels(plan.paths_x[i], device, args.precise)
            for j in js:
                if j not in kernels_y:
                    kernels_y[j] = load_kernels(plan.paths_y[j], device, args.precise)
                scored[(i, j)] = score_pair(kx, kernels_y[j], args, plan.fps_x[i], plan.fps_y[j])
                bar.update()
    return scored


def write_level(plan: LevelPlan, args: argparse.Namespace, x: Side, y: Side,
                scored: dict[tuple[int, int], PairScore]) -> Path:
    """The level's result from the reused and the newly scored pairs, written atomically."""
    scores = np.full((len(plan.paths_x), len(plan.paths_y)), np.nan)
    indices: list[list[Any]] = [[None] * len(plan.paths_y) for _ in plan.paths_x]
    grids: dict[tuple[int, int], np.ndarray] = {}
    calibration: dict[tuple[int, int], Calibration] = {}
    for i in range(len(plan.paths_x)):
        for j in range(len(plan.paths_y)):
            pair = scored.get((i, j)) or plan.reuse[(plan.fps_x[i], plan.fps_y[j])]
            scores[i, j], indices[i][j], grid, cal = pair
            if grid is not None:
                grids[(i, j)] = grid
            if cal is not None:
                calibration[(i, j)] = cal
    meta = {
        "dataset": args.dataset, "subset": args.subset, "modelset": args.modelset,
        "level": plan.level, "modality_x": x.modality, "pool_x": x.pool, "prompt_x": x.prompt,
        "modality_y": y.modality, "pool_y": y.pool, "prompt_y": y.prompt,
        "settings": plan.settings,
        "feature_files_x": [str(p) for p in plan.paths_x],
        "feature_files_y": [str(p) for p in plan.paths_y],
        "fingerprints_x": plan.fps_x, "fingerprints_y": plan.fps_y,
    }
    save_result(plan.out, AlignmentResult(args.metric, args.topk, x.models, y.models, scores,
                                          indices, meta, grids, calibration))
    print(f"wrote {plan.out}")
    return plan.out


def measure_level(args: argparse.Namespace, x: Side, y: Side, level: Level,
                  device: torch.device) -> Path:
    plan = plan_level(args, x, y, level)
    if plan.up_to_date:
        print(f"up to date: {plan.out}")
        return plan.out
    return write_level(plan, args, x, y, score_locally(plan, args, device))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.dataset, args.subset = dataset_label(args.dataset, args.subset)
    check_counts(args.null, args.bootstrap, null_optional=True)
    x, y = side_from_args(args, "x"), side_from_args(args, "y")
    levels = parse_levels(args.levels) if args.levels else [None]
    if args.ray:
        from platonic.run._ray import measure_on_ray

        measure_on_ray(args, x, y, levels)
        return 0
    device = pick_device(args.device)
    for level in levels:
        measure_level(args, x, y, level, device)
    return 0
