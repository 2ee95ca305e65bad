"""The measure stage: alignment of every x model with every y model, per uniqueness level.

Each feature file is loaded once per run; each y model's kernels are built once and reused for
every x model. A result is reused pair by pair when the fingerprints of both feature files and
the metric settings match the stored ones; the result written always holds exactly the
requested models in the requested order. A pair whose layer grid has no positive finite value
gets an undefined score (NaN, null in the JSON).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from platonic.core import metrics
from platonic.core.alignment import LayerKernels, best_of_grid, load_kernels, score_grid
from platonic.core.calibration import NULL_VERSION, calibrate, check_counts
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


@dataclass
class Side:
    """One side (x or y) of the comparison: modality, pooling, prompt and model ids."""

    modality: str
    pool: str
    prompt: Any
    models: list[str]


@dataclass
class Settings:
    """One measure run: the feature folders (`{}` for the level, else a u=<level> sub-folder),
    which results (dataset, model set, the two sides, metric), how pairs are scored, and the
    levels (None: the folders hold no level)."""

    input_dir: str
    output_dir: str
    dataset: str
    subset: str | None
    modelset: str
    x: Side
    y: Side
    levels: list[Level] = field(default_factory=lambda: [None])
    metric: str = "mutual_knn"
    topk: int | None = 10
    precise: bool = False  # outlier threshold from one global quantile
    null: int = 0  # permutations of the null distribution; 0: off
    bootstrap: int = 1000  # with a null: bootstrap replicates of the score's CI
    null_seed: int = 0
    force_remake: bool = False
    device: str | None = None  # None: cuda if available

    def __post_init__(self) -> None:
        check_counts(self.null, self.bootstrap, null_optional=True)


def feature_files(settings: Settings, side: Side, in_dir: Path) -> list[Path]:
    return [resolve_feature_file(in_dir, settings.dataset, settings.subset, m, side.pool,
                                 side.prompt) for m in side.models]


def settings_of(settings: Settings) -> dict[str, Any]:
    """Everything besides the inputs that changes a score (a result's stored settings)."""
    stored = {"metric": settings.metric, "topk": settings.topk, "normalize": True,
              "outlier_quantile": 0.95, "outlier_entries": "real (padding excluded)",
              "precise": settings.precise, "order": "metric(y, x)"}
    if settings.null:
        stored["null"] = {"permutations": settings.null, "bootstrap": settings.bootstrap,
                          "seed": settings.null_seed, "permuted": "x", "version": NULL_VERSION}
    return stored


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


def plan_level(settings: Settings, level: Level) -> LevelPlan:
    x, y = settings.x, settings.y
    in_dir, out_dir = level_dir(settings.input_dir, level), level_dir(settings.output_dir, level)
    paths_x, paths_y = feature_files(settings, x, in_dir), feature_files(settings, y, in_dir)
    missing = [str(p) for p in [*paths_x, *paths_y] if not p.exists()]
    if missing:
        raise PlatonicError(f"{len(missing)} feature file(s) missing: {', '.join(missing)}")
    check_sample_counts(paths_x, paths_y, settings.topk,
                        metrics.get_metric(settings.metric).uses_topk)
    out = alignment_path(out_dir, settings.dataset, settings.subset, settings.modelset,
                         x.modality, x.pool, x.prompt, y.modality, y.pool, y.prompt,
                         settings.metric, settings.topk)
    stored = settings_of(settings)
    fps_x = [verified_fingerprint(p) for p in paths_x]
    fps_y = [verified_fingerprint(p) for p in paths_y]
    old = previous_result(out, stored, settings.force_remake)
    reuse = reusable_pairs(old)
    todo: dict[int, list[int]] = {}
    for i in range(len(paths_x)):
        for j in range(len(paths_y)):
            if (fps_x[i], fps_y[j]) not in reuse:
                todo.setdefault(i, []).append(j)
    return LevelPlan(level, out, paths_x, paths_y, fps_x, fps_y, stored, reuse, todo,
                     holds_exactly(old, x, y, fps_x, fps_y))


def score_pair(kx: LayerKernels, ky: LayerKernels, settings: Settings, fingerprint_x: str,
               fingerprint_y: str) -> PairScore:
    """One pair's score, layers, grid and (with a null) calibration, with these settings (the
    feature files' fingerprints seed the pair's permutations)."""
    # The original called compute_score(y, x): metric(y, x), y layers in the outer loop.
    grid_yx = score_grid(ky, kx, settings.metric, settings.topk)
    score, best = best_of_grid(grid_yx)
    calibration = calibrate(ky, kx, settings.metric, settings.topk, settings.null,
                            settings.bootstrap,
                            pair_seed(settings.null_seed, fingerprint_x, fingerprint_y),
                            grid=grid_yx) if settings.null else None
    return score, None if best is None else (best[1], best[0]), grid_yx.T, calibration


def score_locally(plan: LevelPlan, settings: Settings,
                  device: torch.device) -> dict[tuple[int, int], PairScore]:
    """The pairs still to score, in this process: each y model's kernels built once."""
    kernels_y: dict[int, LayerKernels] = {}
    scored: dict[tuple[int, int], PairScore] = {}
    level = plan.level
    desc = settings.metric if level is None else f"{settings.metric} {level_dir('', level)}"
    with tqdm(total=sum(map(len, plan.todo.values())), desc=desc, unit="pair") as bar:
        for i, js in plan.todo.items():
            kx = load_kernels(plan.paths_x[i], device, settings.precise)
            for j in js:
                if j not in kernels_y:
                    kernels_y[j] = load_kernels(plan.paths_y[j], device, settings.precise)
                scored[(i, j)] = score_pair(kx, kernels_y[j], settings, plan.fps_x[i],
                                            plan.fps_y[j])
                bar.update()
    return scored


def write_level(plan: LevelPlan, settings: Settings,
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
    x, y = settings.x, settings.y
    meta = {
        "dataset": settings.dataset, "subset": settings.subset, "modelset": settings.modelset,
        "level": plan.level, "modality_x": x.modality, "pool_x": x.pool, "prompt_x": x.prompt,
        "modality_y": y.modality, "pool_y": y.pool, "prompt_y": y.prompt,
        "settings": plan.settings,
        "feature_files_x": [str(p) for p in plan.paths_x],
        "feature_files_y": [str(p) for p in plan.paths_y],
        "fingerprints_x": plan.fps_x, "fingerprints_y": plan.fps_y,
    }
    save_result(plan.out, AlignmentResult(settings.metric, settings.topk, x.models, y.models,
                                          scores, indices, meta, grids, calibration))
    print(f"wrote {plan.out}")
    return plan.out


def measure_level(settings: Settings, level: Level, device: torch.device) -> Path:
    """One level's result: the pairs not reusable scored here, written atomically."""
    plan = plan_level(settings, level)
    if plan.up_to_date:
        print(f"up to date: {plan.out}")
        return plan.out
    return write_level(plan, settings, score_locally(plan, settings, device))


def run(settings: Settings) -> list[Path]:
    """Every level's result, in this process (`platonic.run.ray_stages.measure_on_ray`: as Ray
    tasks)."""
    device = pick_device(settings.device)
    return [measure_level(settings, level, device) for level in settings.levels]
