"""The plot stage: figures of a uniqueness study, and `run`, which writes every figure and table
of one (or leaves them, when they were made from the same study with the same settings).

Figures are built on `matplotlib.figure.Figure` with the Agg canvas (no pyplot, no global
state), saved as PNG and PDF through a temporary file that is renamed on success.

Per vision family: alignment vs language performance (one panel per chosen level, one colour
and OLS line per vision-model size), and alignment vs uniqueness level (one line per size).
Per level: a heatmap of the language x vision alignment matrix, one colour scale for all levels.
The statistics in the titles come from `platonic.stages.study_statistics.summarise`, so they
match the summary.
Results measured with `--null` add a grey band for chance: from the null mean to its 95th
percentile, averaged over the pairs shown.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from scipy import stats

from platonic.core.statistics import ols_slope
from platonic.io.storage import atomic_path, read_json, sha256_of, write_json
from platonic.stages.study import DEFAULT_LEVELS, Study, StudySpec, load_study, write_tidy_csv
from platonic.stages.study_statistics import (
    StudySummary,
    mean_family_slope,
    summarise,
    vision_level_scores,
)
from platonic.stages.summary import fmt, write_summary

FORMATS = ("png", "pdf")
DPI = 300
MAX_ANNOTATED_CELLS = 400
PERFORMANCE_LABEL = "language performance (-bits per byte)"
CHANCE_LABEL = "chance (null mean to 95th pct.)"
PLOT_VERSION = 1
STAMP = ".inputs.json"  # in the study's plot folder: the fingerprint of what made its files


@dataclass
class StudyOutputs:
    """Where `run` wrote things (or found them up to date: `reused`), and the headline
    statistic."""

    folder: Path
    figures: list[Path]
    csv: Path
    summary_path: Path
    summary: StudySummary
    notes: list[str] = field(default_factory=list)
    reused: bool = False

    @property
    def overall_rho(self) -> float:
        return self.summary.overall_rho

    def describe(self) -> str:
        low, high = self.summary.overall_ci
        return "\n".join([
            *([f"plots: up to date in {self.folder}"] if self.reused else []),
            f"overall Spearman rho of alignment vs uniqueness: {fmt(self.overall_rho)} "
            f"(95% CI {fmt(low)} .. {fmt(high)})",
            f"{len(self.figures)} figure files in {self.folder}",
            f"table: {self.csv}",
            f"summary: {self.summary_path}",
        ])


def slug(name: str) -> str:
    """A file-name-safe form of a family name ('CLIP (I12K ft)' -> 'clip_i12k_ft')."""
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_") or "model"


def short_name(model_id: str) -> str:
    return model_id.rstrip("/").split("/")[-1]


def size_labels(study: Study) -> dict[str, str]:
    """Legend label of each vision model: its registry size, else its own short name."""
    sizes = study.frame.drop_duplicates("vision_model")
    return {vm: size or short_name(vm) for vm, size in zip(sizes["vision_model"],
                                                             sizes["vision_size"], strict=True)}


def save_figure(fig: Figure, stem: Path, dpi: int = DPI,
                formats: tuple[str, ...] = FORMATS) -> list[Path]:
    """Write `stem.<format>` for each format, atomically (format passed explicitly: the
    temporary file's name ends in .tmp, from which matplotlib would guess wrong)."""
    FigureCanvasAgg(fig)
    paths = []
    for fmt_name in formats:
        path = stem.with_name(f"{stem.name}.{fmt_name}")
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format=fmt_name, dpi=dpi)
        paths.append(path)
    return paths


def size_colours(n: int) -> list[tuple[float, ...]]:
    """Ordered colours, small to large (viridis, without its faint yellow end)."""
    cmap = matplotlib.colormaps["viridis"]
    return [cmap(v) for v in np.linspace(0.0, 0.85, max(n, 1))][:n]


def _padded_range(values: np.ndarray) -> tuple[float, float] | None:
    values = values[np.isfinite(values)]
    if values.size == 0:
        return None
    low, high = float(values.min()), float(values.max())
    pad = 0.05 * (high - low) or 0.05 * max(abs(high), 1e-3)
    return low - pad, high + pad


def plot_performance(study: Study, summary: StudySummary, family: str,
                     ylim: tuple[float, float] | None = None) -> Figure | None:
    """Alignment vs language performance, one panel per panel level; None if no performance."""
    frame = study.frame.assign(performance=study.performance)
    frame = frame[(frame["vision_family"] == family) & frame["performance"].notna()
                  & frame["score"].notna()]
    if frame.empty:
        return None
    levels = summary.panel_levels
    members = study.vision_models(family)
    colours = dict(zip(members, size_colours(len(members)), strict=True))
    fig = Figure(figsize=(3.2 * len(levels) + 1.6, 3.4), layout="constrained")
    axes = fig.subplots(1, len(levels), sharey=ylim is not None, squeeze=False)[0]
    for ax, level in zip(axes, levels, strict=True):
        rows = frame[frame["level"] == level]
        if rows["null_mean"].notna().any():
            ax.axhspan(rows["null_mean"].mean(), rows["null_p95"].mean(), color="0.6", alpha=0.3,
                       linewidth=0, label=CHANCE_LABEL)
        _performance_panel(ax, rows, colours, size_labels(study))
        ax.set_title(f"U = {level}%: slope "
                     f"{fmt(mean_family_slope(summary.slopes, family, [level]))}", fontsize=9)
        ax.set_xlabel(PERFORMANCE_LABEL, fontsize=8)
        if ylim is not None:
            ax.set_ylim(ylim)
    axes[0].set_ylabel(f"alignment ({study.spec.metric})")
    fig.legend(*axes[0].get_legend_handles_labels(), loc="outside right center",
               title="vision size", fontsize=8)
    fig.suptitle(f"{family}: alignment vs language performance, mean slope "
                 f"{fmt(mean_family_slope(summary.slopes, family, levels))}")
    return fig


def _performance_panel(ax: Axes, rows: pd.DataFrame, colours: dict[str, tuple[float, ...]],
                       labels: dict[str, str]) -> None:
    for vm, colour in colours.items():
        mine = rows[rows["vision_model"] == vm]
        x, y = mine["performance"].to_numpy(), mine["score"].to_numpy()
        ax.scatter(x, y, color=colour, s=18, label=labels[vm])
        if not math.isnan(ols_slope(x, y)):
            fit = stats.linregress(x, y)
            xs = np.array([x.min(), x.max()])
            ax.plot(xs, fit.intercept + fit.slope * xs, color=colour, linewidth=1.2)
    ax.grid(alpha=0.3)
    ax.tick_params(labelsize=7)


def plot_uniqueness(study: Study, summary: StudySummary, family: str,
                    ylim: tuple[float, float] | None = None) -> Figure | None:
    """Alignment (averaged over language models) vs uniqueness level, one line per size."""
    per_vision = vision_level_scores(study)
    members = [vm for vm in study.vision_models(family) if vm in per_vision.index]
    if not members:
        return None
    labels = size_labels(study)
    row = summary.families.set_index("family").loc[family]
    fig = Figure(figsize=(5.2, 3.6), layout="constrained")
    ax = fig.subplots()
    band = chance_band(study, members)
    if band is not None:
        ax.fill_between(study.levels, band[0], band[1], color="0.6", alpha=0.3, linewidth=0,
                        label=CHANCE_LABEL)
    for vm, colour in zip(members, size_colours(len(members)), strict=True):
        ax.plot(study.levels, per_vision.loc[vm].to_numpy(), marker="o", markersize=4,
                color=colour, label=labels[vm])
    ax.set_xlabel("caption uniqueness U (%)")
    ax.set_ylabel(f"alignment ({study.spec.metric})\nmean over language models", fontsize=9)
    ax.set_title(f"{family}: mean Spearman rho {fmt(row.mean_rho)}\n95% bootstrap CI "
                 f"[{fmt(row.ci_low)}, {fmt(row.ci_high)}]", fontsize=10)
    if ylim is not None:
        ax.set_ylim(ylim)
    ax.grid(alpha=0.3)
    ax.legend(title="vision size", fontsize=8)
    return fig


def chance_band(study: Study, vision_models: list[str]) -> tuple[np.ndarray, np.ndarray] | None:
    """Per level, the null mean and 95th percentile averaged over these vision models' pairs;
    None unless every level has a null."""
    rows = study.frame[study.frame["vision_model"].isin(vision_models)]
    by_level = rows.groupby("level")[["null_mean", "null_p95"]].mean().reindex(study.levels)
    if by_level.isna().any().any():
        return None
    return by_level["null_mean"].to_numpy(), by_level["null_p95"].to_numpy()


def plot_heatmap(study: Study, level: int, vrange: tuple[float, float]) -> Figure:
    """The language x vision alignment matrix at one level, on a colour scale shared by levels."""
    rows = study.frame[study.frame["level"] == level]
    matrix = rows.pivot_table(index="language_model", columns="vision_model", values="score")
    languages = [m for m in study.language_models() if m in matrix.index]
    visions = [m for m in study.vision_models() if m in matrix.columns]
    matrix = matrix.reindex(index=languages, columns=visions).to_numpy()
    fig = Figure(figsize=(max(4.0, 0.45 * len(visions) + 3.0),
                          max(3.0, 0.35 * len(languages) + 2.2)), layout="constrained")
    ax = fig.subplots()
    image = ax.imshow(matrix, cmap="viridis", vmin=vrange[0], vmax=vrange[1], aspect="auto")
    ax.set_xticks(range(len(visions)), [short_name(m) for m in visions], rotation=90, fontsize=7)
    ax.set_yticks(range(len(languages)), [short_name(m) for m in languages], fontsize=7)
    if matrix.size <= MAX_ANNOTATED_CELLS:
        _annotate(ax, matrix, vrange)
    fig.colorbar(image, ax=ax, label="alignment")
    ax.set_title(f"U = {level}%: {study.spec.metric} alignment, language x vision", fontsize=10)
    return fig


def _annotate(ax: Axes, matrix: np.ndarray, vrange: tuple[float, float]) -> None:
    middle = (vrange[0] + vrange[1]) / 2
    for (i, j), value in np.ndenumerate(matrix):
        if np.isfinite(value):
            ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=6,
                    color="black" if value > middle else "white")


def _score_range(values: np.ndarray) -> tuple[float, float]:
    finite = values[np.isfinite(values)]
    low, high = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    return (low, high) if high > low else (low - 0.5, high + 0.5)


@dataclass(frozen=True)
class Settings:
    """One plot run: which study (`spec`, its `levels`), read from which folders (`{}` for the
    level; `features_dir` None: no bits per byte, no performance plots), and how it is drawn:
    `panel_levels` (None: those of 10,30,50,70,90 plotted), `same_scale` (one y range for every
    performance panel, another for every uniqueness plot), `dpi` (PNG) and `formats`."""

    spec: StudySpec
    align_dir: str | os.PathLike
    features_dir: str | os.PathLike | None
    plot_dir: str | os.PathLike
    levels: list[int] | tuple[int, ...] = DEFAULT_LEVELS
    panel_levels: list[int] | None = None
    same_scale: bool = False
    dpi: int = DPI
    formats: tuple[str, ...] = FORMATS

    def drawing(self) -> dict[str, Any]:
        """Every setting that changes a figure or table, besides the study itself."""
        return {"plot": PLOT_VERSION, "spec": asdict(self.spec),
                "panel_levels": self.panel_levels, "same_scale": self.same_scale,
                "dpi": self.dpi, "formats": list(self.formats)}


def inputs_fingerprint(study: Study, settings: Settings) -> str:
    """What the outputs are made from: the study's table (scores, layers, bits per byte, nulls),
    its levels and notes, and the drawing settings."""
    table = study.frame.to_csv(index=False, lineterminator="\n")
    return sha256_of({**settings.drawing(), "levels": study.levels, "notes": study.notes,
                      "table": sha256_of(table)})


def run(settings: Settings) -> StudyOutputs:
    """Read a study, write every figure, the tidy CSV and summary.md; or, when they were made
    from the same study with the same settings (the fingerprint in `STAMP`), leave them.

    Outputs go to `plot_dir/<dataset>/<subset>/<modelset>/<modality pair>/<metric>_k<topk>/`,
    the alignment-result layout, so studies with other settings never overwrite each other.
    """
    study = load_study(settings.spec, settings.align_dir, settings.features_dir, settings.levels)
    summary = summarise(study, settings.panel_levels)
    folder = Path(settings.plot_dir) / settings.spec.stem()
    fingerprint = inputs_fingerprint(study, settings)
    made = _current_outputs(folder / STAMP, fingerprint)
    if made is not None:
        *figures, csv_file, summary_file = made
        return StudyOutputs(folder, figures, csv_file, summary_file, summary, summary.notes,
                            reused=True)
    save = partial(save_figure, dpi=settings.dpi, formats=settings.formats)
    figures = _family_figures(study, summary, folder, settings.same_scale, save)
    vrange = _score_range(study.frame["score"].to_numpy())
    for level in study.levels:
        figures += save(plot_heatmap(study, level, vrange), folder / f"heatmap_u={level}")
    csv_file = write_tidy_csv(study, folder / "alignment.csv")
    summary_file = folder / "summary.md"
    names = [p.relative_to(folder) for p in [*figures, csv_file]]
    write_summary(study, summary, summary_file, names)
    write_json(folder / STAMP, {"fingerprint": fingerprint, "files": [
        str(p.relative_to(folder)) for p in [*figures, csv_file, summary_file]]})
    return StudyOutputs(folder, figures, csv_file, summary_file, summary, summary.notes)


def _current_outputs(stamp: Path, fingerprint: str) -> list[Path] | None:
    """The files the last run wrote (figures, CSV, summary) if it had this fingerprint and they
    are all still there, else None."""
    if not stamp.exists():
        return None
    made = read_json(stamp)
    files = [stamp.parent / name for name in made.get("files", [])]
    if made.get("fingerprint") != fingerprint or not files or not all(f.exists() for f in files):
        return None
    return files


def _family_figures(study: Study, summary: StudySummary, folder: Path, same_scale: bool,
                    save: Callable[[Figure, Path], list[Path]]) -> list[Path]:
    panel_rows = study.frame[study.frame["level"].isin(summary.panel_levels)]
    perf_ylim = _padded_range(panel_rows["score"].to_numpy()) if same_scale else None
    trend_ylim = (_padded_range(vision_level_scores(study).to_numpy().ravel())
                  if same_scale else None)
    kinds = ((plot_performance, perf_ylim, "alignment_vs_performance",
              "no language model has a performance; no performance plot"),
             (plot_uniqueness, trend_ylim, "alignment_vs_uniqueness",
              "no model pair at every level; no uniqueness plot"))
    figures: list[Path] = []
    for family in study.families():
        for plot, ylim, stem, missing in kinds:
            fig = plot(study, summary, family, ylim)
            if fig is None:
                summary.notes.append(f"family {family}: {missing}")
            else:
                figures += save(fig, folder / f"{stem}_{slug(family)}")
    return figures
