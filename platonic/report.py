"""Tables and statistics of a uniqueness study: alignment results of every level, as one tidy table.

`load_study` reads the alignment result of each level and each language model's bits per byte;
`summarise` turns that into the statistics the plots and the Markdown summary show; the writers
put the tidy CSV and `summary.md` on disk (atomically).

Statistics, and why they are computed this way:
- performance of a language model = -(mean bits per byte of its captions at that level), so that
  higher is better, as in the original;
- slope: OLS of alignment on performance across language models, one per (vision model, level);
  a family's slope is the mean over its vision models (sizes);
- trend with uniqueness: a vision model's score at a level is its alignment averaged over the
  language models (one number per vision model and level: the study asks how alignment *to
  language* moves with uniqueness, and the average removes the noise of a single pair; the
  per-pair trends are in the pair table). Spearman rho of that score against the level, per size;
  a family's rho is the mean over sizes;
- across-level statistics use only the model pairs present at every level, so that a model added
  at some levels cannot fake a trend;
- slope vs uniqueness: Spearman rho of each vision model's slope against the level (how the
  link between language performance and alignment changes as captions become unique);
- chance (results measured with `--null`): per level, the means over model pairs of the null
  mean, its 95th percentile and the calibrated score, and the number of pairs with p < 0.05;
- an undefined statistic (fewer than 3 levels, fewer than 2 language models with performance, a
  constant axis) is NaN, shown as "undefined".
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from safetensors import safe_open
from scipy import stats

from platonic.data import ALL_LEVELS
from platonic.errors import PlatonicError
from platonic.features import load_features, resolve_feature_file
from platonic.models import LANGUAGE, VISION, get_model
from platonic.results import CALIBRATION_COLUMNS, AlignmentResult, alignment_path, load_result
from platonic.storage import level_dir, write_text

DEFAULT_LEVELS: tuple[int, ...] = ALL_LEVELS
DEFAULT_PANEL_LEVELS: tuple[int, ...] = (10, 30, 50, 70, 90)
N_BOOTSTRAP = 2000
BOOTSTRAP_SEED = 0
MIN_LEVELS_FOR_RHO = 3
BPB = "bpb"
UNDEFINED = "undefined"

TIDY_COLUMNS = [
    "level", "language_model", "vision_model", "vision_family", "vision_size", "metric", "topk",
    "score", "layer_language", "layer_vision", "bits_per_byte", *CALIBRATION_COLUMNS,
]
SIGNIFICANCE = 0.05


@dataclass(frozen=True)
class StudySpec:
    """Which alignment results to read: the original plot_alignment.py flags, minus the folders."""

    dataset: str
    subset: str | None
    modelset: str
    modality_x: str = LANGUAGE
    pool_x: str | None = "avg"
    prompt_x: bool = False
    modality_y: str = VISION
    pool_y: str | None = "cls"
    prompt_y: bool = False
    metric: str = "mutual_knn"
    topk: int | None = 10

    def __post_init__(self) -> None:
        if {self.modality_x, self.modality_y} != {LANGUAGE, VISION}:
            raise PlatonicError(f"plots need one {LANGUAGE} and one {VISION} modality, got "
                                f"{self.modality_x!r} and {self.modality_y!r}")

    @property
    def language_is_x(self) -> bool:
        return self.modality_x == LANGUAGE

    @property
    def language_pool(self) -> str | None:
        return self.pool_x if self.language_is_x else self.pool_y

    @property
    def language_prompt(self) -> bool:
        return self.prompt_x if self.language_is_x else self.prompt_y

    def alignment_file(self, root: str | os.PathLike) -> Path:
        """The alignment result under `root` (one level's folder)."""
        return alignment_path(root, self.dataset, self.subset, self.modelset,
                              self.modality_x, self.pool_x, self.prompt_x,
                              self.modality_y, self.pool_y, self.prompt_y, self.metric, self.topk)

    def stem(self) -> Path:
        """Relative folder for this study's outputs, mirroring the alignment-result layout."""
        return self.alignment_file(Path()).with_suffix("")


@dataclass
class Study:
    """Every (level, language model, vision model) score, as a tidy frame: `TIDY_COLUMNS` plus
    `language_order` and `vision_order` (sort keys: result order; vision family, then size)."""

    spec: StudySpec
    levels: list[int]
    frame: pd.DataFrame
    notes: list[str] = field(default_factory=list)

    @property
    def performance(self) -> pd.Series:
        """Language performance of each row, -bits per byte (NaN: unknown)."""
        return -self.frame["bits_per_byte"]

    def families(self) -> list[str]:
        return list(dict.fromkeys(self.frame.sort_values(["vision_order"])["vision_family"]))

    def vision_models(self, family: str | None = None) -> list[str]:
        """Vision models, families in the order they first appear in a result, then by size."""
        rows = self.frame if family is None else self.frame[self.frame["vision_family"] == family]
        return list(dict.fromkeys(rows.sort_values("vision_order")["vision_model"]))

    def language_models(self) -> list[str]:
        return list(dict.fromkeys(self.frame.sort_values("language_order")["language_model"]))


@dataclass
class StudySummary:
    """Statistics of a study; every table is a DataFrame with NaN for an undefined value."""

    level_means: pd.DataFrame
    families: pd.DataFrame
    slopes: pd.DataFrame
    pairs: pd.DataFrame
    overall_rho: float
    overall_ci: tuple[float, float]
    panel_levels: list[int]
    notes: list[str]
    slope_trends: pd.DataFrame = field(default_factory=pd.DataFrame)
    chance: pd.DataFrame | None = None


def check_levels(levels: list[int]) -> list[int]:
    bad = [lv for lv in levels if not 0 <= lv <= 100]
    if bad:
        raise PlatonicError(f"uniqueness levels must be integers 0..100, got {bad}")
    if not levels:
        raise PlatonicError("no uniqueness levels given")
    return sorted(set(levels))


def load_study(spec: StudySpec, align_dir: str | os.PathLike,
               features_dir: str | os.PathLike | None,
               levels: list[int] | tuple[int, ...] = DEFAULT_LEVELS) -> Study:
    """Read the alignment result of every level (all missing ones reported in one error) and the
    bits per byte of every language model at every level (`features_dir` None: none)."""
    levels = check_levels(list(levels))
    paths = {level: spec.alignment_file(level_dir(align_dir, level)) for level in levels}
    missing = [f"{level} ({path})" for level, path in paths.items() if not path.exists()]
    if missing:
        raise PlatonicError(f"no alignment result for {len(missing)} of {len(levels)} level(s): "
                            f"{'; '.join(missing)}; run measure_alignment.py for them or pick "
                            f"--levels")
    rows = [row for level in levels for row in _result_rows(spec, load_result(paths[level]), level)]
    if not rows:
        raise PlatonicError(f"the alignment results hold no model pairs ({paths[levels[0]]})")
    frame = pd.DataFrame(rows)
    notes: list[str] = []
    frame["bits_per_byte"] = _bits_per_byte_column(frame, spec, features_dir, notes)
    notes.extend(_incomplete_model_notes(frame, levels))
    return Study(spec, levels, frame, notes)


def _result_rows(spec: StudySpec, result: AlignmentResult, level: int) -> list[dict[str, Any]]:
    languages, visions = ((result.models_x, result.models_y) if spec.language_is_x
                          else (result.models_y, result.models_x))
    family_index: dict[str, int] = {}
    rows = []
    for li, lm in enumerate(languages):
        for vi, vm in enumerate(visions):
            i, j = (li, vi) if spec.language_is_x else (vi, li)
            idx = result.indices[i][j]
            layer_l, layer_v = (None, None) if idx is None else (
                idx if spec.language_is_x else idx[::-1])
            vision = get_model(vm, VISION)
            family = family_index.setdefault(vision.family, len(family_index))
            cal = result.calibration.get((i, j))
            rows.append({
                **{c: math.nan if cal is None else getattr(cal, c) for c in CALIBRATION_COLUMNS},
                "level": level, "language_model": lm, "vision_model": vm,
                "vision_family": vision.family, "vision_size": vision.size,
                "metric": result.metric, "topk": result.topk, "score": float(result.scores[i, j]),
                "layer_language": layer_l, "layer_vision": layer_v,
                "language_order": li, "vision_order": (family, vision.size_rank, vi),
            })
    return rows


def _bits_per_byte_column(frame: pd.DataFrame, spec: StudySpec,
                          features_dir: str | os.PathLike | None, notes: list[str]) -> pd.Series:
    if features_dir is None:
        notes.append("no features directory given: language-model performance is unknown, "
                     "performance panels are skipped")
        return pd.Series(math.nan, index=frame.index)
    lacking: dict[tuple[str, str], list[int]] = {}
    bpb: dict[tuple[int, str], float] = {}
    for level, lm in frame[["level", "language_model"]].drop_duplicates().itertuples(index=False):
        value, reason = mean_bits_per_byte(features_dir, spec, level, lm)
        bpb[(level, lm)] = value
        if reason:
            lacking.setdefault((lm, reason), []).append(level)
    all_levels = sorted(frame["level"].unique())
    for (lm, reason), levels in lacking.items():
        where = "every level" if levels == all_levels else f"level(s) {_join(levels)}"
        notes.append(f"language model {lm}: {reason} at {where}: no performance, so it is "
                     f"left out of the performance panels")
    keys = zip(frame["level"], frame["language_model"], strict=True)
    return pd.Series([bpb[key] for key in keys], index=frame.index, dtype=float)


def mean_bits_per_byte(features_dir: str | os.PathLike, spec: StudySpec, level: int,
                       model: str) -> tuple[float, str | None]:
    """Mean bits per byte of a language model's captions at one level, or (NaN, why not)."""
    path = resolve_feature_file(level_dir(features_dir, level), spec.dataset, spec.subset, model,
                                spec.language_pool, spec.language_prompt)
    if not path.exists():
        return math.nan, f"no feature file ({path})"
    values = _read_bpb(path)
    if values is None:
        return math.nan, "no bits per byte in its feature file (an encoder?)"
    values = values[np.isfinite(values)]
    if values.size == 0:
        return math.nan, "no finite bits per byte in its feature file"
    return float(values.mean()), None


def _read_bpb(path: Path) -> np.ndarray | None:
    """Only the `bpb` tensor: safetensors reads one tensor without loading the features."""
    if path.suffix == ".pt":
        bpb = load_features(path).extras.get(BPB)
        return None if bpb is None else bpb.double().numpy()
    try:
        with safe_open(str(path), framework="pt") as f:
            if BPB not in f.keys():  # noqa: SIM118
                return None
            return f.get_tensor(BPB).double().numpy()
    except Exception as err:  # safetensors raises several types for a damaged file
        raise PlatonicError(f"{path}: not a readable safetensors feature file ({err})") from err


def _incomplete_model_notes(frame: pd.DataFrame, levels: list[int]) -> list[str]:
    notes = []
    for column in ("language_model", "vision_model"):
        present = frame.groupby(column, sort=False)["level"].unique()
        for model, at in present.items():
            absent = sorted(set(levels) - set(at))
            if absent:
                notes.append(f"{model} has no result at level(s) {_join(absent)}; left out of "
                             f"the statistics across levels")
    return notes


def _join(values: list[Any]) -> str:
    return ", ".join(str(v) for v in values)


# --- statistics -------------------------------------------------------------------------------

def ols_slope(x: np.ndarray, y: np.ndarray) -> float:
    """OLS slope of y on x; NaN with fewer than 2 points or a constant x."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    keep = np.isfinite(x) & np.isfinite(y)
    x, y = x[keep], y[keep]
    if x.size < 2 or np.ptp(x) == 0:
        return math.nan
    return float(stats.linregress(x, y).slope)


def spearman_rho(x: np.ndarray, y: np.ndarray) -> float:
    """scipy's Spearman rho; NaN with fewer than 3 points, a missing value or a constant side."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if x.size < MIN_LEVELS_FOR_RHO or not (np.isfinite(x).all() and np.isfinite(y).all()):
        return math.nan
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        return math.nan
    return float(stats.spearmanr(x, y).statistic)


def _rowwise_spearman(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Spearman rho along the last axis (Pearson of average ranks, as scipy); NaN if constant."""
    rx = stats.rankdata(x, axis=-1)
    ry = stats.rankdata(y, axis=-1)
    rx -= rx.mean(axis=-1, keepdims=True)
    ry -= ry.mean(axis=-1, keepdims=True)
    denom = np.sqrt((rx**2).sum(axis=-1) * (ry**2).sum(axis=-1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, (rx * ry).sum(axis=-1) / denom, np.nan)


def mean_rho(levels: np.ndarray, scores: np.ndarray) -> float:
    """Mean over series (rows of `scores`, one per vision model) of Spearman rho against level."""
    rhos = [spearman_rho(levels, row) for row in scores]
    return _nanmean(rhos)


def bootstrap_mean_rho(levels: np.ndarray, scores: np.ndarray, n_boot: int = N_BOOTSTRAP,
                       seed: int = BOOTSTRAP_SEED) -> tuple[float, float]:
    """95% percentile interval of `mean_rho`, resampling levels with replacement.

    The levels are the units resampled, because rho is a statistic of the (level, score) pairs:
    the pairs bootstrap of a correlation. One draw of levels is shared by every series (vision
    model) of the family, which keeps the dependence between sizes measured on the same captions.
    Resampling sizes instead would give a degenerate interval for families of 1-4 models.
    Replicates with fewer than 3 distinct levels have no rho and are dropped; NaN if fewer than
    3 levels or no replicate is defined.
    """
    levels = np.asarray(levels, dtype=float)
    scores = np.atleast_2d(np.asarray(scores, dtype=float))
    if levels.size < MIN_LEVELS_FOR_RHO or scores.size == 0:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, levels.size, size=(n_boot, levels.size))
    distinct = np.array([np.unique(d).size for d in draws]) >= MIN_LEVELS_FOR_RHO
    draws = draws[distinct]
    x = np.broadcast_to(levels[draws][:, None, :], (draws.shape[0], *scores.shape))
    y = np.moveaxis(scores[:, draws], 1, 0)
    rhos = _rowwise_spearman(x, y)
    defined = ~np.isnan(rhos)
    counts = defined.sum(axis=1)
    means = np.where(counts > 0, np.where(defined, rhos, 0).sum(axis=1) / np.maximum(counts, 1),
                     np.nan)
    means = means[~np.isnan(means)]
    if means.size == 0:
        return math.nan, math.nan
    low, high = np.percentile(means, [2.5, 97.5])
    return float(low), float(high)


def _nanmean(values: list[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return float(np.mean(finite)) if finite else math.nan


def complete_pairs(study: Study) -> pd.DataFrame:
    """Scores pivoted to (language model, vision model) x level, pairs present at every level."""
    wide = study.frame.pivot_table(index=["language_model", "vision_model"], columns="level",
                                   values="score", aggfunc="mean")
    order = pd.MultiIndex.from_product([study.language_models(), study.vision_models()],
                                       names=["language_model", "vision_model"])
    return wide.reindex(index=order, columns=study.levels).dropna()


def vision_level_scores(study: Study) -> pd.DataFrame:
    """Each vision model's alignment averaged over language models, per level (complete pairs)."""
    return complete_pairs(study).groupby(level="vision_model", sort=False).mean()


def family_trends(study: Study) -> pd.DataFrame:
    """Per vision family: number of sizes, mean Spearman rho across sizes, bootstrap 95% CI."""
    per_vision = vision_level_scores(study)
    levels = np.asarray(study.levels, dtype=float)
    rows = []
    for family in study.families():
        members = [vm for vm in study.vision_models(family) if vm in per_vision.index]
        scores = per_vision.loc[members].to_numpy()
        low, high = bootstrap_mean_rho(levels, scores) if members else (math.nan, math.nan)
        rows.append({"family": family, "n_sizes": len(members),
                     "mean_rho": mean_rho(levels, scores), "ci_low": low, "ci_high": high})
    return pd.DataFrame(rows, columns=["family", "n_sizes", "mean_rho", "ci_low", "ci_high"])


def performance_slopes(study: Study) -> pd.DataFrame:
    """OLS slope of alignment on language performance, per (vision model, level)."""
    frame = study.frame.assign(performance=study.performance)
    rows = []
    for (level, vm), group in frame.groupby(["level", "vision_model"], sort=False):
        with_perf = group.dropna(subset=["performance"])
        rows.append({"level": level, "vision_model": vm,
                     "vision_family": group["vision_family"].iloc[0],
                     "vision_size": group["vision_size"].iloc[0],
                     "n_language_models": len(with_perf),
                     "slope": ols_slope(with_perf["performance"], with_perf["score"])})
    return pd.DataFrame(rows)


def slope_trends(slopes: pd.DataFrame, levels: list[int]) -> pd.DataFrame:
    """Spearman rho of each vision model's performance slope against the level."""
    rows = []
    for vm, group in slopes.groupby("vision_model", sort=False):
        by_level = group.set_index("level")["slope"].reindex(levels)
        rows.append({"vision_model": vm, "vision_family": group["vision_family"].iloc[0],
                     "vision_size": group["vision_size"].iloc[0],
                     "rho": spearman_rho(np.asarray(levels, dtype=float), by_level.to_numpy())})
    return pd.DataFrame(rows, columns=["vision_model", "vision_family", "vision_size", "rho"])


def chance_by_level(study: Study) -> pd.DataFrame | None:
    """Per level, over model pairs with a null: mean score, null mean, null 95th percentile,
    calibrated score, and pairs with p < 0.05; None when no result holds a null."""
    rows = study.frame.dropna(subset=["null_mean"])
    if rows.empty:
        return None
    grouped = rows.groupby("level", sort=True)
    return pd.DataFrame({
        "mean_score": grouped["score"].mean(), "null_mean": grouped["null_mean"].mean(),
        "null_p95": grouped["null_p95"].mean(), "calibrated": grouped["calibrated"].mean(),
        "significant": grouped["p_value"].apply(lambda p: int((p < SIGNIFICANCE).sum())),
        "n_pairs": grouped.size(),
    }).reset_index()


def mean_family_slope(slopes: pd.DataFrame, family: str, levels: list[int]) -> float:
    chosen = slopes[(slopes["vision_family"] == family) & slopes["level"].isin(levels)]
    return _nanmean(list(chosen["slope"]))


def pair_trends(study: Study) -> pd.DataFrame:
    """Spearman rho of alignment against level for every (language model, vision model) pair."""
    wide = complete_pairs(study)
    levels = np.asarray(study.levels, dtype=float)
    rhos = [spearman_rho(levels, row) for row in wide.to_numpy()]
    return pd.DataFrame({"language_model": wide.index.get_level_values(0),
                         "vision_model": wide.index.get_level_values(1), "rho": rhos})


def level_means(study: Study) -> pd.DataFrame:
    """Alignment averaged over the complete pairs at each level."""
    wide = complete_pairs(study)
    return pd.DataFrame({"level": study.levels, "mean_score": wide.mean().to_numpy(),
                         "n_pairs": len(wide)})


def resolve_panel_levels(levels: list[int], panel_levels: list[int] | None) -> list[int]:
    """The chosen panel levels; by default the original's 10,30,50,70,90 present (else all)."""
    if panel_levels is None:
        chosen = [lv for lv in DEFAULT_PANEL_LEVELS if lv in levels]
        return chosen or list(levels)
    absent = [lv for lv in panel_levels if lv not in levels]
    if absent:
        raise PlatonicError(f"panel level(s) {_join(absent)} are not among the plotted levels "
                            f"{_join(levels)}")
    return sorted(set(panel_levels))


def summarise(study: Study, panel_levels: list[int] | None = None) -> StudySummary:
    """All statistics of a study; the overall rho is Spearman of the per-level mean alignment."""
    panels = resolve_panel_levels(study.levels, panel_levels)
    means = level_means(study)
    levels = np.asarray(study.levels, dtype=float)
    overall = means["mean_score"].to_numpy()[None, :]
    families = family_trends(study)
    slopes = performance_slopes(study)
    families["mean_slope"] = [mean_family_slope(slopes, f, panels) for f in families["family"]]
    return StudySummary(
        level_means=means, families=families, slopes=slopes, pairs=pair_trends(study),
        overall_rho=mean_rho(levels, overall),
        overall_ci=bootstrap_mean_rho(levels, overall), panel_levels=panels,
        notes=list(study.notes), slope_trends=slope_trends(slopes, study.levels),
        chance=chance_by_level(study),
    )


# --- writers ----------------------------------------------------------------------------------

def write_tidy_csv(study: Study, path: str | os.PathLike) -> Path:
    """One row per (level, language model, vision model): score, best layers, bits per byte."""
    frame = study.frame.sort_values(["level", "language_order", "vision_order"])[TIDY_COLUMNS]
    frame = frame.astype({"layer_language": "Int64", "layer_vision": "Int64"})
    if frame["null_mean"].isna().all():
        frame = frame.drop(columns=CALIBRATION_COLUMNS)
    write_text(path, frame.to_csv(index=False, lineterminator="\n"))
    return Path(path)


def fmt(value: Any, digits: int = 3) -> str:
    """A number for the summary; NaN (an undefined statistic) as 'undefined'."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return UNDEFINED
    if isinstance(value, float | np.floating):
        return f"{value:.{digits}f}"
    return str(value)


def _ci(low: float, high: float) -> str:
    if math.isnan(low) or math.isnan(high):
        return UNDEFINED
    return f"[{fmt(low)}, {fmt(high)}]"


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def render_summary(study: Study, summary: StudySummary,
                   outputs: list[Path] | None = None) -> str:
    """The Markdown summary: overall trend, per level, per family, per pair, and notes."""
    spec = study.spec
    overall = (f"Overall Spearman rho of alignment vs uniqueness (mean over model pairs per level): "
               f"**{fmt(summary.overall_rho)}**, 95% bootstrap CI "
               f"{_ci(*summary.overall_ci)}")
    parts = [
        f"# Alignment vs caption uniqueness: {spec.metric} (k={spec.topk})",
        f"Dataset {spec.dataset} {spec.subset or ''}, model set {spec.modelset}, "
        f"{spec.modality_x} (pool {spec.pool_x}) x {spec.modality_y} (pool {spec.pool_y}), "
        f"levels {_join(study.levels)}.",
        overall,
        "## Mean alignment per level",
        markdown_table(["level", "mean score", "pairs"],
                       [[str(r.level), fmt(r.mean_score, 4), str(r.n_pairs)]
                        for r in summary.level_means.itertuples()]),
        "## Per vision family",
        "rho: Spearman of each vision model's alignment (averaged over language models) against "
        "the level, averaged over the family's sizes; CI: 95% bootstrap over levels. Slope: OLS "
        "of alignment on language performance (-bits per byte), averaged over sizes and the "
        f"panel levels {_join(summary.panel_levels)}.",
        markdown_table(["family", "sizes", "mean rho", "95% CI", "mean slope"],
                       [[r.family, str(r.n_sizes), fmt(r.mean_rho), _ci(r.ci_low, r.ci_high),
                         fmt(r.mean_slope)] for r in summary.families.itertuples()]),
        *_slope_sections(study, summary),
        *_chance_sections(summary),
        "## Per language model / vision model pair",
        markdown_table(["language model", "vision model", "rho across levels"],
                       [[r.language_model, r.vision_model, fmt(r.rho)]
                        for r in summary.pairs.itertuples()]),
    ]
    if summary.notes:
        parts += ["## Notes", "\n".join(f"- {note}" for note in summary.notes)]
    if outputs:
        parts += ["## Files", "\n".join(f"- {path}" for path in outputs)]
    return "\n\n".join(parts) + "\n"


def _slope_sections(study: Study, summary: StudySummary) -> list[str]:
    """Slope of alignment on language performance at every level, and its trend with level."""
    wide = summary.slopes.pivot_table(index="level", columns="vision_model", values="slope",
                                      aggfunc="mean", dropna=False)
    visions = [vm for vm in study.vision_models() if vm in wide.columns]
    if wide.empty or not visions or wide[visions].isna().all().all():
        return []
    labels = [_vision_label(study, vm) for vm in visions]
    trends = summary.slope_trends.set_index("vision_model")["rho"]
    return [
        "## Slope per level",
        "OLS slope of alignment on language performance (-bits per byte) across the language "
        "models with a performance, per vision model and level; last row: Spearman rho of the "
        "slope against the level (negative: performance matters less as captions become unique).",
        markdown_table(["level", *labels],
                       [[str(level), *(fmt(wide.loc[level, vm]) for vm in visions)]
                        for level in wide.index]
                       + [["rho vs level", *(fmt(trends.get(vm, math.nan)) for vm in visions)]]),
    ]


def _vision_label(study: Study, model: str) -> str:
    row = study.frame[study.frame["vision_model"] == model].iloc[0]
    return f"{row['vision_family']} {row['vision_size']}".strip()


def _chance_sections(summary: StudySummary) -> list[str]:
    chance = summary.chance
    if chance is None:
        return []
    return [
        "## Alignment against chance",
        "From `--null`: each pair's score against its permutation null (random "
        "pairings of the samples through the same best-over-layer-pairs search). Means over "
        "model pairs; calibrated = (score - null mean) / (1 - null mean); significant: pairs "
        f"with permutation p < {SIGNIFICANCE}.",
        markdown_table(["level", "mean score", "null mean", "null 95th pct", "calibrated",
                        "significant"],
                       [[str(r.level), fmt(r.mean_score, 4), fmt(r.null_mean, 4),
                         fmt(r.null_p95, 4), fmt(r.calibrated, 4),
                         f"{r.significant} / {r.n_pairs}"] for r in chance.itertuples()]),
    ]


def write_summary(study: Study, summary: StudySummary, path: str | os.PathLike,
                  outputs: list[Path] | None = None) -> Path:
    write_text(path, render_summary(study, summary, outputs))
    return Path(path)
