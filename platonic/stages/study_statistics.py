"""Statistics of a uniqueness study: slopes on language performance and trends with uniqueness.

`summarise` turns a `platonic.stages.study.Study` into the statistics the plots and the Markdown
summary show.

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
- slope vs uniqueness: Spearman rho of each vision model's slope against the level;
- chance (results measured with `--null`): per level, the means over model pairs of the null
  mean, its 95th percentile and the calibrated score, and the number of pairs with p < 0.05;
- an undefined statistic (fewer than 3 levels, fewer than 2 language models with performance, a
  constant axis) is NaN, shown as "undefined".
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from platonic.core.statistics import bootstrap_mean_rho, mean_rho, nanmean, ols_slope, spearman_rho
from platonic.errors import PlatonicError
from platonic.stages.study import Study, join_values

DEFAULT_PANEL_LEVELS: tuple[int, ...] = (10, 30, 50, 70, 90)
SIGNIFICANCE = 0.05


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
        with_perf = group.dropna(subset=["performance", "score"])
        rows.append({"level": level, "vision_model": vm,
                     "vision_family": group["vision_family"].iloc[0],
                     "vision_size": group["vision_size"].iloc[0],
                     "n_language_models": len(with_perf),
                     "slope": ols_slope(with_perf["performance"], with_perf["score"])})
    return pd.DataFrame(rows)


def slope_trends(slopes: pd.DataFrame, levels: list[int]) -> pd.DataFrame:
    """Spearman rho of each vision model's performance slope against the level (how the link
    between language performance and alignment changes as captions become unique)."""
    rows = []
    for vm, group in slopes.groupby("vision_model", sort=False):
        by_level = group.set_index("level")["slope"].reindex(levels)
        rows.append({"vision_model": vm, "vision_family": group["vision_family"].iloc[0],
                     "vision_size": group["vision_size"].iloc[0],
                     "rho": spearman_rho(np.asarray(levels, dtype=float), by_level.to_numpy())})
    return pd.DataFrame(rows, columns=["vision_model", "vision_family", "vision_size", "rho"])


def chance_by_level(study: Study) -> pd.DataFrame | None:
    """Results measured with `--null`: per level, over the model pairs with a null, the mean
    score, null mean, null 95th percentile and calibrated score, and the pairs with p <
    SIGNIFICANCE; None when no result holds a null."""
    if "null_mean" not in study.frame:
        return None
    rows = study.frame.dropna(subset=["null_mean"])
    if rows.empty:
        return None
    # An undefined score is never significant, also in results written before its p-value was
    # made undefined too (NULL_VERSION 1 gave it 1 / (N + 1)).
    rows = rows.assign(significant=(rows["p_value"] < SIGNIFICANCE) & rows["score"].notna())
    grouped = rows.groupby("level", sort=True)
    return pd.DataFrame({
        "mean_score": grouped["score"].mean(), "null_mean": grouped["null_mean"].mean(),
        "null_p95": grouped["null_p95"].mean(), "calibrated": grouped["calibrated"].mean(),
        "significant": grouped["significant"].sum().astype(int),
        "n_pairs": grouped.size(),
    }).reset_index()


def mean_family_slope(slopes: pd.DataFrame, family: str, levels: list[int]) -> float:
    chosen = slopes[(slopes["vision_family"] == family) & slopes["level"].isin(levels)]
    return nanmean(list(chosen["slope"]))


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
        raise PlatonicError(f"panel level(s) {join_values(absent)} are not among the plotted levels "
                            f"{join_values(levels)}")
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
