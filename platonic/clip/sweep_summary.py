"""The sweep summary: test F1 and tower alignment against clip_weight, as a CSV and a plot.

One summary per (model, class_idx, seed) folder, from the `metrics.json` of its runs:
`sweep.csv` and `sweep.{png,pdf}` beside the `clip-weight_*` folders. A summary holds only runs
of one settings fingerprint (everything but clip_weight, the movies included): a run made with
other settings (a rerun of some weights with more epochs, another dataset) is left out, named
in the log and in `sweep_left_out.csv` with the settings that differ.

Which settings: after a multirun, those of the sweep's own jobs (each job records its run in its
Hydra output folder; `SweepSummaryCallback`, in `hydra.callbacks` of the train config); after a
single run, that run's; on demand (`write_summaries(root)`), those of the newest run.
"""

from __future__ import annotations

import logging
import math
import os
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import pandas as pd
from hydra.experimental.callback import Callback
from matplotlib.figure import Figure
from omegaconf import DictConfig

from platonic.clip.settings import weight_folder_name
from platonic.core.metrics import get_metric
from platonic.io.storage import atomic_path, read_json, write_json
from platonic.stages.plots import save_figure

log = logging.getLogger(__name__)

SUMMARY = "sweep"
LEFT_OUT = "sweep_left_out.csv"
JOB_RECORD = "clip_run.json"
COLUMNS = ["clip_weight", "dev_f1", "dev_f1_macro", "test_f1", "test_f1_macro", "alignment",
           "alignment_metric", "alignment_topk", "alignment_chance", "alignment_text_layer", "alignment_image_layer", "best_epoch",
           "max_epochs",
           "class_idx", "genre", "seed", "model", "checkpoint", "settings_sha256"]
LEFT_OUT_COLUMNS = ["clip_weight", "run_dir", "settings_sha256", "reason"]


def summary_row(metrics: dict[str, Any]) -> dict[str, Any]:
    alignment = metrics["alignment"]
    return {
        "clip_weight": metrics["clip_weight"],
        "dev_f1": metrics["dev"]["f1"], "dev_f1_macro": metrics["dev"]["f1_macro"],
        "test_f1": metrics["test"]["f1"], "test_f1_macro": metrics["test"]["f1_macro"],
        "alignment": alignment["score"],
        "alignment_metric": alignment["metric"],
        "alignment_topk": alignment["topk"],
        "alignment_chance": chance_level(alignment, metrics["num_align"]),
        "alignment_text_layer": alignment["text_layer"],
        "alignment_image_layer": alignment["image_layer"],
        **{key: metrics[key] for key in ("best_epoch", "max_epochs", "class_idx", "genre", "seed",
                                          "model", "checkpoint", "settings_sha256")},
    }


def sweep_runs(folder: Path) -> list[dict[str, Any]]:
    """The `metrics.json` of every run under `folder/clip-weight_*/`."""
    return [read_json(path) for path in sorted(folder.glob("clip-weight_*/metrics.json"))]


def newest_settings(folder: Path) -> str | None:
    """The settings fingerprint of the run whose `metrics.json` was written last."""
    paths = list(folder.glob("clip-weight_*/metrics.json"))
    return read_json(max(paths, key=lambda p: p.stat().st_mtime_ns)).get("settings_sha256") \
        if paths else None


def split_runs(runs: list[dict[str, Any]], settings_sha256: str
               ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(runs of these settings, the others each with the reason it is left out). A run is left
    out too when its folder is not named by its exact weight (an older, rounded name)."""
    reference = next((r for r in runs if r.get("settings_sha256") == settings_sha256), {})
    kept, left_out = [], []
    for metrics in runs:
        if metrics.get("settings_sha256") != settings_sha256:
            left_out.append({**metrics, "reason": settings_difference(metrics, reference)})
        elif Path(metrics["run_dir"]).name != weight_folder_name(float(metrics["clip_weight"])):
            left_out.append({**metrics, "reason": "its folder name is not its exact clip_weight "
                                                  f"({weight_folder_name(metrics['clip_weight'])})"})
        else:
            kept.append(metrics)
    return kept, left_out


def settings_difference(metrics: dict[str, Any], reference: dict[str, Any]) -> str:
    """The settings where a run differs from the summary's, as one line."""
    if "settings" not in metrics:
        return "made before runs recorded their settings"
    ours, theirs = _flat(metrics["settings"]), _flat(reference.get("settings", {}))
    changed = [f"{key}={ours.get(key)!r} (summary: {theirs.get(key)!r})"
               for key in sorted(ours.keys() | theirs.keys()) if ours.get(key) != theirs.get(key)]
    root, summary_root = metrics["data"]["root"], reference.get("data", {}).get("root")
    if root != summary_root:
        changed.append(f"dataset root {root} (summary: {summary_root})")
    return "other settings: " + ", ".join(changed) if changed else "other movies (another dataset)"


def _flat(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def sweep_table(runs: list[dict[str, Any]]) -> pd.DataFrame:
    """One row per run, sorted by clip_weight."""
    return pd.DataFrame([summary_row(m) for m in runs], columns=COLUMNS
                        ).sort_values("clip_weight", ignore_index=True)


def chance_level(alignment: dict[str, Any], num_samples: int) -> float:
    """Mutual kNN's expected score for unrelated towers, k / (N - 1); NaN for other metrics,
    whose chance level has no such closed form."""
    if alignment["metric"] != "mutual_knn":
        return math.nan
    return alignment["topk"] / (num_samples - 1)


def alignment_label(metric: str, topk: Any) -> str:
    return f"alignment ({metric}, k={topk})" if get_metric(metric).uses_topk else f"alignment ({metric})"


def plot_sweep(table: pd.DataFrame, left_out: int = 0) -> Figure:
    """Test F1 (positive class and macro) and the towers' alignment vs clip_weight (with mutual
    kNN's chance level);
    the title counts the runs left out (`sweep_left_out.csv`)."""
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
    if math.isfinite(first["alignment_chance"]):
        ax_align.axhline(first["alignment_chance"], color="grey", ls=":", label="chance, k / (N - 1)")
    ax_align.legend(fontsize=8)
    ax_align.set_ylabel(alignment_label(first["alignment_metric"], first["alignment_topk"]))
    ax_align.set_title("finetuned text vs image tower, test movies", fontsize=9)
    for ax in (ax_f1, ax_align):
        ax.set_xscale("symlog", linthresh=0.1)
        ax.set_xlabel("clip_weight")
        ax.grid(alpha=0.3)
    title = (f"{first['model']}: genre {first['class_idx']} ({first['genre']}), "
             f"seed {first['seed']}, checkpoint chosen on dev F1")
    if left_out:
        title += f"\n{left_out} run(s) with other settings left out ({LEFT_OUT})"
    fig.suptitle(title, fontsize=10)
    return fig


def write_summary(folder: str | os.PathLike, settings_sha256: str | None = None) -> list[Path]:
    """`sweep.csv`, `sweep.png`, `sweep.pdf` of one (model, class, seed) folder, from its runs
    of settings `settings_sha256` (default: the newest run's), and `sweep_left_out.csv` naming
    the other runs there (removed when there are none)."""
    folder = Path(folder)
    runs = sweep_runs(folder)
    settings_sha256 = settings_sha256 or newest_settings(folder)
    kept, left_out = split_runs(runs, settings_sha256)
    if not kept:
        return []
    for metrics in left_out:
        log.warning("%s: left out of the sweep summary: %s", metrics["run_dir"], metrics["reason"])
    written = [_write_csv(folder / f"{SUMMARY}.csv", sweep_table(kept))]
    left_out_csv = folder / LEFT_OUT
    if left_out:
        written.append(_write_csv(left_out_csv, pd.DataFrame(left_out, columns=LEFT_OUT_COLUMNS)))
    else:
        left_out_csv.unlink(missing_ok=True)
    return [*written, *save_figure(plot_sweep(sweep_table(kept), len(left_out)), folder / SUMMARY)]


def _write_csv(path: Path, table: pd.DataFrame) -> Path:
    with atomic_path(path) as tmp:
        table.to_csv(tmp, index=False)
    return path


def write_summaries(root: str | os.PathLike) -> list[Path]:
    """The summary of every (model, class, seed) folder under a `trainer.default_root_dir`,
    each of the settings of its newest run."""
    folders = sorted({p.parent.parent for p in Path(root).glob("*/class_*/seed_*/clip-weight_*/metrics.json")})
    return _logged([path for folder in folders for path in write_summary(folder)])


def record_sweep_job(output_dir: str | os.PathLike, metrics: dict[str, Any]) -> None:
    """What a multirun's job ran, in its Hydra output folder, for the sweep's summary."""
    write_json(Path(output_dir) / JOB_RECORD, {"run_dir": metrics["run_dir"],
                                               "settings_sha256": metrics["settings_sha256"]})


def write_sweep_summaries(sweep_dir: str | os.PathLike) -> list[Path]:
    """The summary of every folder a multirun's jobs ran in, each of the settings most of
    those jobs ran with."""
    settings: dict[Path, Counter] = defaultdict(Counter)
    for path in sorted(Path(sweep_dir).glob(f"**/{JOB_RECORD}")):
        record = read_json(path)
        settings[Path(record["run_dir"]).parent][record["settings_sha256"]] += 1
    return _logged([path for folder, counts in sorted(settings.items())
                    for path in write_summary(folder, counts.most_common(1)[0][0])])


def _logged(written: list[Path]) -> list[Path]:
    for path in written:
        log.info("sweep summary: %s", path)
    return written


class SweepSummaryCallback(Callback):
    """Hydra callback: after a multirun, the summaries of the folders its jobs ran in."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        write_sweep_summaries(str(config.hydra.sweep.dir))
