"""The Markdown summary of a uniqueness study (`summary.md`), written atomically.

An undefined statistic (NaN) is shown as "undefined".
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from platonic.io.storage import write_text
from platonic.stages.study import Study, join_values
from platonic.stages.study_statistics import SIGNIFICANCE, StudySummary

UNDEFINED = "undefined"


def fmt(value: Any, digits: int = 3) -> str:
    """A number for the summary; NaN (an undefined statistic) as 'undefined'."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return UNDEFINED
    if isinstance(value, float | np.floating):
        return f"{value:.{digits}f}"
    return str(value)


def format_ci(low: float, high: float) -> str:
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
               f"{format_ci(*summary.overall_ci)}")
    parts = [
        f"# Alignment vs caption uniqueness: {spec.metric} (k={spec.topk})",
        f"Dataset {spec.dataset} {spec.subset or ''}, model set {spec.modelset}, "
        f"{spec.modality_x} (pool {spec.pool_x}) x {spec.modality_y} (pool {spec.pool_y}), "
        f"levels {join_values(study.levels)}.",
        overall,
        "## Mean alignment per level",
        markdown_table(["level", "mean score", "pairs"],
                       [[str(r.level), fmt(r.mean_score, 4), str(r.n_pairs)]
                        for r in summary.level_means.itertuples()]),
        "## Per vision family",
        "rho: Spearman of each vision model's alignment (averaged over language models) against "
        "the level, averaged over the family's sizes; CI: 95% bootstrap over levels. Slope: OLS "
        "of alignment on language performance (-bits per byte), averaged over sizes and the "
        f"panel levels {join_values(summary.panel_levels)}.",
        markdown_table(["family", "sizes", "mean rho", "95% CI", "mean slope"],
                       [[r.family, str(r.n_sizes), fmt(r.mean_rho), format_ci(r.ci_low, r.ci_high),
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
        "From `--null`: each pair's score against its permutation null (random pairings of the "
        "samples through the same best-over-layer-pairs search). Means over model pairs; "
        "calibrated = (score - null mean) / (1 - null mean); significant: pairs with "
        f"permutation p < {SIGNIFICANCE} (an undefined score has no p-value: never significant).",
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
