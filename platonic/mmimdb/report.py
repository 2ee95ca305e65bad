"""Correlation of alignment with language-model performance on MM-IMDb, overall and per genre.

For each vision model (one series per size within its family) and each target (`overall` =
test macro F1, or one genre's test F1, genres in the published order), x = each language
model's test F1 and y = its alignment with that vision model: Spearman rho and the OLS slope
of y on x. A family's statistic is the mean over its sizes; its 95% interval is the bootstrap
of the vision-language report (`bootstrap_mean_rho`), which here resamples language models
(the points of each series), one draw shared by all sizes of the family.

The inputs must describe one experiment: every language model's probe of the same task, layer
and settings, each made from the very test features the alignment result paired; mixed inputs
(a partial rerun) are refused with one line naming the odd files.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from platonic.core.statistics import bootstrap_mean_rho, mean_rho, ols_slope, spearman_rho
from platonic.errors import PlatonicError
from platonic.io.results import AlignmentResult, load_result
from platonic.io.storage import write_text
from platonic.mmimdb.genres import GENRES
from platonic.mmimdb.layout import Layout
from platonic.mmimdb.performance import read_performance
from platonic.mmimdb.study_alignment import alignment_file
from platonic.models.registry import VISION, get_model
from platonic.stages.summary import fmt, format_ci, markdown_table

OVERALL = "overall"
# With 3 language models every resample with 3 distinct points is the sample itself, so the
# bootstrap interval would collapse onto the estimate: it is reported as undefined instead.
MIN_MODELS_FOR_CI = 4
CORRELATION_COLUMNS = ["vision_model", "family", "size", "genre", "spearman_rho", "slope"]


@dataclass
class StudyTable:
    """Every (language model, vision model, target) triple: test F1 and alignment."""

    frame: pd.DataFrame  # language_model, vision_model, family, size, size_rank, genre, f1, score
    targets: list[str]  # "overall" then genres, in the published order
    language_models: list[str]
    performance: dict[str, dict]
    alignment_path: Path
    notes: list[str] = field(default_factory=list)

    def families(self) -> list[str]:
        return list(dict.fromkeys(self.frame.sort_values("vision_order")["family"]))

    def vision_models(self, family: str | None = None) -> list[str]:
        rows = self.frame if family is None else self.frame[self.frame["family"] == family]
        return list(dict.fromkeys(rows.sort_values("vision_order")["vision_model"]))


def load_table(layout: Layout, modelset: str, metric: str, topk: int) -> StudyTable:
    """The alignment result of the test split joined with each language model's test F1."""
    path = alignment_file(layout, modelset, metric, topk)
    if not path.exists():
        raise PlatonicError(f"{path} is missing; run mmimdb/measure_alignment.py first")
    result = load_result(path)
    performance = {lm: read_performance(layout, lm) for lm in result.models_x}
    check_one_probe(layout, performance)
    check_same_test_features(layout, result, path, performance)
    genres = [g for g in GENRES if all(g in p["f1_per_class"] for p in performance.values())]
    targets = [OVERALL, *genres]
    specs = {vm: get_model(vm, VISION) for vm in result.models_y}
    order = {vm: (list(dict.fromkeys(s.family for s in specs.values())).index(specs[vm].family),
                  specs[vm].size_rank, n) for n, vm in enumerate(result.models_y)}
    rows = []
    for i, lm in enumerate(result.models_x):
        perf = performance[lm]
        for j, vm in enumerate(result.models_y):
            spec = specs[vm]
            for target in targets:
                rows.append({"language_model": lm, "vision_model": vm, "family": spec.family,
                             "size": spec.size or vm, "size_rank": spec.size_rank,
                             "vision_order": order[vm], "genre": target,
                             "f1": perf["f1_mean"] if target == OVERALL else perf["f1_per_class"][target],
                             "score": float(result.scores[i, j])})
    empty = sorted({g for p in performance.values() for g in p.get("classes_without_positives", [])},
                   key=targets.index)
    notes = [f"no test positives for {', '.join(empty)}: their F1 is 0 for every language model "
             "and their rho undefined"] if empty else []
    no_dev = sorted({g for p in performance.values()
                     for g in p.get("dev_classes_without_positives", [])}, key=targets.index)
    if no_dev:
        notes.append(f"no dev positives for {', '.join(no_dev)}: their dev F1 is undefined "
                     "(0) and did not inform the choice of the probes' epoch and setting")
    if len(result.models_x) < 3:
        notes.append(f"only {len(result.models_x)} language models: Spearman rho needs 3 points "
                     "and is undefined")
    if len(result.models_x) < MIN_MODELS_FOR_CI:
        notes.append(f"{len(result.models_x)} language models: too few for a bootstrap interval "
                     f"(needs {MIN_MODELS_FOR_CI}); rho is a statistic of very few points")
    return StudyTable(pd.DataFrame(rows), targets, list(result.models_x), performance, path, notes)


def probe_settings(perf: dict) -> dict:
    """What makes two probe results comparable: task, layer and every training setting."""
    return {"task": perf.get("task"), "class_idx": perf.get("class_idx"),
            "layer": perf.get("layer"), **(perf.get("config") or {})}


def check_one_probe(layout: Layout, performance: dict[str, dict]) -> None:
    """A one-line error naming the results whose task, layer or settings differ from the most
    common ones (the first model's on a tie)."""
    settings = {lm: probe_settings(perf) for lm, perf in performance.items()}
    groups: dict[str, list[str]] = {}
    for lm, values in settings.items():
        groups.setdefault(json.dumps(values, sort_keys=True), []).append(lm)
    if len(groups) == 1:
        return
    common = settings[max(groups.values(), key=len)[0]]
    odd = [f"{layout.performance(lm)} (" + ", ".join(
        f"{k} {v} not {common.get(k)}" for k, v in values.items() if common.get(k) != v) + ")"
           for lm, values in settings.items() if values != common]
    raise PlatonicError(f"the probes differ in task, layer or settings: {'; '.join(odd)}; "
                        "rerun mmimdb/train_linear.py with one setting for every language model")


def check_same_test_features(layout: Layout, result: AlignmentResult, path: Path,
                             performance: dict[str, dict]) -> None:
    """Each probe was tested on the feature file the alignment result measured (same movies)."""
    measured = dict(zip(result.models_x, result.meta.get("fingerprints_x") or [], strict=False))
    other = [str(layout.performance(lm)) for lm, perf in performance.items()
             if (perf.get("feature_sha256") or {}).get("test") != measured.get(lm)]
    if other:
        raise PlatonicError(f"{', '.join(other)}: made from other test features than {path} "
                            "measured (features extracted again since one of the two stages "
                            "ran); rerun mmimdb/train_linear.py and mmimdb/measure_alignment.py")


def correlations(table: StudyTable) -> pd.DataFrame:
    """One row per (vision model, target): Spearman rho and OLS slope of alignment on F1."""
    rows = []
    for vm in table.vision_models():
        mine = table.frame[table.frame["vision_model"] == vm]
        for target in table.targets:
            series = mine[mine["genre"] == target]
            x, y = series["f1"].to_numpy(), series["score"].to_numpy()
            rows.append({"vision_model": vm, "family": series["family"].iloc[0],
                         "size": series["size"].iloc[0], "genre": target,
                         "spearman_rho": spearman_rho(x, y), "slope": ols_slope(x, y)})
    return pd.DataFrame(rows, columns=CORRELATION_COLUMNS)


def family_statistics(table: StudyTable, corr: pd.DataFrame) -> pd.DataFrame:
    """Per (family, target): number of sizes, mean rho, its bootstrap CI, mean slope."""
    rows = []
    for family in table.families():
        members = table.vision_models(family)
        for target in table.targets:
            frame = table.frame[(table.frame["family"] == family) & (table.frame["genre"] == target)]
            wide = frame.pivot_table(index="vision_model", columns="language_model", values="score")
            wide = wide.reindex(index=members, columns=table.language_models)
            f1 = frame.drop_duplicates("language_model").set_index("language_model")["f1"]
            x = f1.reindex(table.language_models).to_numpy(dtype=float)
            scores = wide.to_numpy(dtype=float)
            low, high = (bootstrap_mean_rho(x, scores) if len(x) >= MIN_MODELS_FOR_CI
                         else (math.nan, math.nan))
            mine = corr[(corr["family"] == family) & (corr["genre"] == target)]
            rows.append({"family": family, "genre": target, "n_sizes": len(members),
                         "mean_rho": mean_rho(x, scores), "ci_low": low, "ci_high": high,
                         "mean_slope": _nanmean(mine["slope"].to_numpy())})
    return pd.DataFrame(rows)


def _nanmean(values: np.ndarray) -> float:
    finite = values[np.isfinite(values)]
    return float(finite.mean()) if finite.size else math.nan


def write_correlation_csv(corr: pd.DataFrame, path: str | os.PathLike) -> Path:
    write_text(path, corr.to_csv(index=False, lineterminator="\n"))
    return Path(path)


def render_summary(table: StudyTable, families: pd.DataFrame, modelset: str, metric: str,
                   topk: int, files: list[Path]) -> str:
    """Markdown: the headline per family, language-model performance, per-genre statistics."""
    overall = families[families["genre"] == OVERALL]
    per_genre = families[families["genre"] != OVERALL]
    perf_rows = [[lm, fmt(p["f1_mean"]), fmt(p["f1_weighted"]), fmt(p["accuracy"]),
                  f"{p['lr']:g}", f"{p['wd']:g}", str(p["epoch"]), str(p["layer"])]
                 for lm, p in table.performance.items()]
    align = table.frame[table.frame["genre"] == OVERALL]
    parts = [
        f"# MM-IMDb: alignment vs language-model performance ({metric}, k={topk})",
        f"Model set {modelset}: {len(table.language_models)} language models x "
        f"{len(table.vision_models())} vision models, alignment from {table.alignment_path}.",
        "Per vision family: Spearman rho and OLS slope of alignment on test F1 across language "
        "models, one series per vision size, averaged over sizes; 95% CI: bootstrap over "
        "language models (one draw shared by the family's sizes).",
        "## Overall (test macro F1)",
        markdown_table(["family", "sizes", "mean rho", "95% CI", "mean slope"],
                       [[r.family, str(r.n_sizes), fmt(r.mean_rho), format_ci(r.ci_low, r.ci_high),
                         fmt(r.mean_slope)] for r in overall.itertuples()]),
        "## Language-model performance (test)",
        markdown_table(["language model", "macro F1", "weighted F1", "subset accuracy", "lr",
                        "wd", "epoch", "layer"], perf_rows),
        "## Alignment (test)",
        markdown_table(["language model", "vision model", "alignment"],
                       [[r.language_model, r.vision_model, fmt(r.score, 4)]
                        for r in align.itertuples()]),
        "## Per genre (mean over the family's sizes)",
        markdown_table(["family", "genre", "mean rho", "95% CI", "mean slope"],
                       [[r.family, r.genre, fmt(r.mean_rho), format_ci(r.ci_low, r.ci_high),
                         fmt(r.mean_slope)] for r in per_genre.itertuples()]),
    ]
    if table.notes:
        parts += ["## Notes", "\n".join(f"- {note}" for note in table.notes)]
    parts += ["## Files", "\n".join(f"- {path}" for path in files)]
    return "\n\n".join(parts) + "\n"
