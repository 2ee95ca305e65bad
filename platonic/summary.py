"""The Markdown summary of a uniqueness study (`summary.md`), written atomically.

An undefined statistic (NaN) is shown as "undefined".
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from platonic.statistics import StudySummary
from platonic.storage import write_text
from platonic.study import Study, join_values

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


def write_summary(study: Study, summary: StudySummary, path: str | os.PathLike,
                  outputs: list[Path] | None = None) -> Path:
    write_text(path, render_summary(study, summary, outputs))
    return Path(path)
