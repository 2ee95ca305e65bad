"""The sweep summary: test F1 and tower alignment against clip_weight, as a CSV and a plot.

One summary per (model, class_idx, seed) folder, from the `metrics.json` of its runs:
`sweep.csv` and `sweep.{png,pdf}` beside the `clip-weight_*` folders. It is written after a
multirun by a Hydra callback (`SweepSummaryCallback`, in `hydra.callbacks` of the train config),
after a single run by the run itself, and on demand by `write_summaries(root)`.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import pandas as pd
from hydra.experimental.callback import Callback
from hydra.utils import to_absolute_path
from matplotlib.figure import Figure
from omegaconf import DictConfig

from platonic.plots import save_figure
from platonic.storage import atomic_path, read_json

log = logging.getLogger(__name__)

SUMMARY = "sweep"
COLUMNS = ["clip_weight", "dev_f1", "dev_f1_macro", "test_f1", "test_f1_macro", "alignment",
           "alignment_chance", "alignment_text_layer", "alignment_image_layer", "best_epoch",
           "max_epochs",
           "class_idx", "genre", "seed", "model", "checkpoint", "settings_sha256"]


def summary_row(metrics: dict[str, Any]) -> dict[str, Any]:
    alignment = metrics["alignment"]
    return {
        "clip_weight": metrics["clip_weight"],
        "dev_f1": metrics["dev"]["f1"], "dev_f1_macro": metrics["dev"]["f1_macro"],
        "test_f1": metrics["test"]["f1"], "test_f1_macro": metrics["test"]["f1_macro"],
        "alignment": alignment["score"],
        "alignment_chance": alignment["topk"] / (metrics["num_align"] - 1),
        "alignment_text_layer": alignment["text_layer"],
        "alignment_image_layer": alignment["image_layer"],
        **{key: metrics[key] for key in ("best_epoch", "max_epochs", "class_idx", "genre", "seed",
                                          "model", "checkpoint", "settings_sha256")},
    }


def sweep_table(folder: Path) -> pd.DataFrame:
    """One row per run under `folder/clip-weight_*/metrics.json`, sorted by clip_weight."""
    rows = [summary_row(read_json(path)) for path in sorted(folder.glob("clip-weight_*/metrics.json"))]
    return pd.DataFrame(rows, columns=COLUMNS).sort_values("clip_weight", ignore_index=True)


def plot_sweep(table: pd.DataFrame) -> Figure:
    """Test F1 (positive class and macro) and mutual-kNN alignment of the towers vs clip_weight."""
    first = table.iloc[0]
    fig = Figure(figsize=(9, 3.6), layout="constrained")
    ax_f1, ax_align = fig.subplots(1, 2)
    x = table["clip_weight"]
    ax_f1.plot(x, table["test_f1"], "o-", label="test F1 (positive class)")
    ax_f1.plot(x, table["test_f1_macro"], "s--", label="test macro F1")
    ax_f1.set_ylabel("F1")
    ax_f1.set_title("genre head on the test split", fontsize=9)
    ax_f1.legend(fontsize=8)
    ax_align.plot(x, table["alignment"], "o-", color="tab:green", label="finetuned towers")
    ax_align.axhline(first["alignment_chance"], color="grey", ls=":", label="chance, k / (N - 1)")
    ax_align.legend(fontsize=8)
    ax_align.set_ylabel("alignment (mutual kNN, k=10)")
    ax_align.set_title("finetuned text vs image tower, test movies", fontsize=9)
    for ax in (ax_f1, ax_align):
        ax.set_xscale("symlog", linthresh=0.1)
        ax.set_xlabel("clip_weight")
        ax.grid(alpha=0.3)
    fig.suptitle(f"{first['model']}: genre {first['class_idx']} ({first['genre']}), "
                 f"seed {first['seed']}, checkpoint chosen on dev F1", fontsize=10)
    return fig


def write_summary(folder: str | os.PathLike) -> list[Path]:
    """`sweep.csv`, `sweep.png`, `sweep.pdf` of one (model, class, seed) folder."""
    folder = Path(folder)
    table = sweep_table(folder)
    if table.empty:
        return []
    if table["settings_sha256"].nunique() > 1:
        log.warning("%s: runs with different settings (besides clip_weight) are summarised "
                    "together; see the settings_sha256 column", folder)
    csv = folder / f"{SUMMARY}.csv"
    with atomic_path(csv) as tmp:
        table.to_csv(tmp, index=False)
    return [csv, *save_figure(plot_sweep(table), folder / SUMMARY)]


def write_summaries(root: str | os.PathLike) -> list[Path]:
    """The summary of every (model, class, seed) folder under a `trainer.default_root_dir`."""
    folders = sorted({p.parent.parent for p in Path(root).glob("*/class_*/seed_*/clip-weight_*/metrics.json")})
    written = [path for folder in folders for path in write_summary(folder)]
    for path in written:
        log.info("sweep summary: %s", path)
    return written


class SweepSummaryCallback(Callback):
    """Hydra callback: after a multirun, the summaries of everything under the root directory."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        write_summaries(to_absolute_path(str(config.trainer.default_root_dir)))
