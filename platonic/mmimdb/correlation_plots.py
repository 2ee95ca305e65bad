"""Figures of the MM-IMDb study and `plot_correlation`, which writes every figure and table.

Per vision family: alignment vs language-model test F1 overall (one colour and OLS line per
vision size, points named by language model) and a grid of the same per genre, each panel
titled with its genre (the published order, so titles and data agree). Across genres:
histograms of the per-genre mean rho and mean slope, one colour per family.
Figures are PNG + PDF, written atomically (`platonic.stages.plots.save_figure`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from platonic.core.statistics import ols_slope
from platonic.io.storage import read_json, sha256_file, sha256_of, write_json, write_text
from platonic.mmimdb.layout import Layout
from platonic.mmimdb.report import (
    OVERALL,
    StudyTable,
    correlations,
    family_statistics,
    load_table,
    render_summary,
    write_correlation_csv,
)
from platonic.stages.plots import DPI, FORMATS, save_figure, short_name, size_colours, slug
from platonic.stages.summary import fmt

PLOT_VERSION = 2  # 2: the rightmost point's name placed inside the axes
STAMP = ".inputs.json"
MAX_NAMED_POINTS = 12


@dataclass
class PlotOutputs:
    folder: Path
    files: list[Path]
    summary: Path
    reused: bool


def _panel(ax: Axes, rows: pd.DataFrame, members: list[str], labels: dict[str, str],
           name_points: bool) -> None:
    for vm, colour in zip(members, size_colours(len(members)), strict=True):
        mine = rows[rows["vision_model"] == vm]
        x, y = mine["f1"].to_numpy(), mine["score"].to_numpy()
        ax.scatter(x, y, color=colour, s=16, label=labels[vm])
        slope = ols_slope(x, y)
        if not math.isnan(slope):
            xs = np.array([x.min(), x.max()])
            ax.plot(xs, y.mean() + slope * (xs - x.mean()), color=colour, linewidth=1.1)
        if name_points and vm == members[-1]:
            for lm, xi, yi in zip(mine["language_model"], x, y, strict=True):
                rightmost = xi == np.max(x)  # its name goes to the left, inside the axes
                ax.annotate(short_name(lm), (xi, yi), fontsize=6, xytext=(-3 if rightmost else 3, 3),
                            textcoords="offset points", ha="right" if rightmost else "left")
    ax.grid(alpha=0.3)
    ax.tick_params(labelsize=7)


def _labels(table: StudyTable) -> dict[str, str]:
    sizes = table.frame.drop_duplicates("vision_model")
    return dict(zip(sizes["vision_model"], sizes["size"], strict=True))


def _stat(families: pd.DataFrame, family: str, genre: str) -> pd.Series:
    return families[(families["family"] == family) & (families["genre"] == genre)].iloc[0]


def plot_overall(table: StudyTable, families: pd.DataFrame, family: str, metric: str) -> Figure:
    members = table.vision_models(family)
    rows = table.frame[(table.frame["family"] == family) & (table.frame["genre"] == OVERALL)]
    stat = _stat(families, family, OVERALL)
    fig = Figure(figsize=(5.6, 4.0), layout="constrained")
    ax = fig.subplots()
    _panel(ax, rows, members, _labels(table), len(table.language_models) <= MAX_NAMED_POINTS)
    ax.set_xlabel("language model test macro F1 (genre probe)")
    ax.set_ylabel(f"alignment with vision ({metric})")
    ax.set_title(f"{family}: mean Spearman rho {fmt(stat.mean_rho)}, mean slope "
                 f"{fmt(stat.mean_slope)}", fontsize=10)
    ax.legend(title="vision size", fontsize=7)
    return fig


def plot_per_genre(table: StudyTable, families: pd.DataFrame, family: str, metric: str) -> Figure:
    genres = [t for t in table.targets if t != OVERALL]
    members = table.vision_models(family)
    columns = min(6, len(genres))
    nrows = math.ceil(len(genres) / columns)
    fig = Figure(figsize=(2.4 * columns + 1.2, 2.1 * nrows + 0.8), layout="constrained")
    axes = np.atleast_1d(fig.subplots(nrows, columns, squeeze=False).ravel())
    labels = _labels(table)
    for ax, genre in zip(axes, genres, strict=False):
        rows = table.frame[(table.frame["family"] == family) & (table.frame["genre"] == genre)]
        _panel(ax, rows, members, labels, name_points=False)
        stat = _stat(families, family, genre)
        ax.set_title(f"{genre}: rho {fmt(stat.mean_rho, 2)}, slope {fmt(stat.mean_slope, 2)}",
                     fontsize=8)
    for ax in axes[len(genres):]:
        ax.set_visible(False)
    fig.supxlabel("language model test F1 of the genre")
    fig.supylabel(f"alignment ({metric})")
    fig.legend(*axes[0].get_legend_handles_labels(), loc="outside right center",
               title="vision size", fontsize=7)
    fig.suptitle(f"{family}: alignment vs genre F1, per genre")
    return fig


def plot_histograms(families: pd.DataFrame) -> Figure:
    """Histograms over genres of each family's mean rho and mean slope."""
    per_genre = families[families["genre"] != OVERALL]
    fig = Figure(figsize=(9.0, 3.4), layout="constrained")
    axes = fig.subplots(1, 2)
    names = list(dict.fromkeys(per_genre["family"]))
    for ax, column, title in zip(axes, ("mean_rho", "mean_slope"),
                                 ("Spearman rho (mean over sizes)", "OLS slope (mean over sizes)"),
                                 strict=True):
        values = per_genre[column].to_numpy(dtype=float)
        finite = values[np.isfinite(values)]
        bins = np.histogram_bin_edges(finite, bins=12) if finite.size else 12
        for family, colour in zip(names, size_colours(len(names)), strict=True):
            mine = per_genre[per_genre["family"] == family][column].to_numpy(dtype=float)
            ax.hist(mine[np.isfinite(mine)], bins=bins, alpha=0.6, color=colour, label=family)
        ax.set_title(f"per-genre {title}", fontsize=9)
        ax.set_ylabel("genres")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    return fig


def inputs_fingerprint(table: StudyTable, settings: dict) -> str:
    return sha256_of({"plot": PLOT_VERSION, **settings, "alignment": sha256_file(table.alignment_path),
                      "performance": {lm: p.get("cache_key") for lm, p in table.performance.items()}})


def plot_correlation(layout: Layout, modelset: str, metric: str = "mutual_knn", topk: int = 10,
                     plot_dir: Path | None = None, dpi: int = DPI,
                     formats: tuple[str, ...] = FORMATS, force: bool = False) -> PlotOutputs:
    """Every figure, `correlation.csv` and `summary.md`; skipped when the inputs are unchanged."""
    folder = Path(plot_dir or layout.plot_dir)
    table = load_table(layout, modelset, metric, topk)
    fingerprint = inputs_fingerprint(table, {"modelset": modelset, "metric": metric, "topk": topk,
                                             "dpi": dpi, "formats": list(formats)})
    stamp = folder / STAMP
    if not force and stamp.exists():
        old = read_json(stamp)
        if old.get("fingerprint") == fingerprint and all((folder / f).exists() for f in old["files"]):
            return PlotOutputs(folder, [folder / f for f in old["files"]], folder / "summary.md", True)
    corr = correlations(table)
    families = family_statistics(table, corr)
    save = partial(save_figure, dpi=dpi, formats=formats)
    files: list[Path] = []
    for family in table.families():
        name = slug(family)
        files += save(plot_overall(table, families, family, metric), folder / f"{name}_align_perf_overall")
        files += save(plot_per_genre(table, families, family, metric), folder / f"{name}_align_perf_per_genre")
    files += save(plot_histograms(families), folder / "align_perf_per_genre_histograms")
    files.append(write_correlation_csv(corr, folder / "correlation.csv"))
    summary = folder / "summary.md"
    names = [p.relative_to(folder) for p in files]
    write_text(summary, render_summary(table, families, modelset, metric, topk, names))
    files.append(summary)
    write_json(stamp, {"fingerprint": fingerprint, "files": [str(p.relative_to(folder)) for p in files]})
    return PlotOutputs(folder, files, summary, False)
