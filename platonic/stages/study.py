"""A uniqueness study read from disk: the alignment result of every level as one tidy table.

`load_study` reads the alignment result of each level and each language model's bits per byte
(performance of a language model = -(mean bits per byte of its captions at that level), so that
higher is better, as in the original); `write_tidy_csv` puts the table on disk (atomically).
The statistics are in `platonic.stages.study_statistics`, the Markdown summary in `platonic.stages.summary`.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from platonic.data.levels import ALL_LEVELS, check_levels
from platonic.errors import PlatonicError
from platonic.io.features import read_tensor, resolve_feature_file
from platonic.io.results import CALIBRATION_COLUMNS, AlignmentResult, alignment_path, load_result
from platonic.io.storage import level_dir, write_text
from platonic.models.registry import LANGUAGE, VISION, get_model

DEFAULT_LEVELS: tuple[int, ...] = ALL_LEVELS
BPB = "bpb"

TIDY_COLUMNS = [
    "level", "language_model", "vision_model", "vision_family", "vision_size", "metric", "topk",
    "score", "layer_language", "layer_vision", "bits_per_byte", *CALIBRATION_COLUMNS,
]


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


def load_study(spec: StudySpec, align_dir: str | os.PathLike,
               features_dir: str | os.PathLike | None,
               levels: list[int] | tuple[int, ...] = DEFAULT_LEVELS) -> Study:
    """Read the alignment result of every level (all missing ones reported in one error) and the
    bits per byte of every language model at every level (`features_dir` None: none)."""
    levels = check_levels(levels)
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
    notes.extend(_undefined_score_notes(frame))
    notes.extend(_missing_null_notes(frame))
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
                "null_measured": cal is not None,
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
        where = "every level" if levels == all_levels else f"level(s) {join_values(levels)}"
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
    bpb = read_tensor(path, BPB)
    if bpb is None:
        return math.nan, "no bits per byte in its feature file (an encoder?)"
    values = bpb.double().numpy()
    values = values[np.isfinite(values)]
    if values.size == 0:
        return math.nan, "no finite bits per byte in its feature file"
    return float(values.mean()), None


def _incomplete_model_notes(frame: pd.DataFrame, levels: list[int]) -> list[str]:
    notes = []
    for column in ("language_model", "vision_model"):
        present = frame.groupby(column, sort=False)["level"].unique()
        for model, at in present.items():
            absent = sorted(set(levels) - set(at))
            if absent:
                notes.append(f"{model} has no result at level(s) {join_values(absent)}; left out of "
                             f"the statistics across levels")
    return notes


def _undefined_score_notes(frame: pd.DataFrame) -> list[str]:
    """One note per model pair with an undefined score (no positive finite value in its grid)."""
    undefined = frame[frame["score"].isna()]
    notes = []
    for (lm, vm), group in undefined.groupby(["language_model", "vision_model"], sort=False):
        notes.append(f"{lm} x {vm}: undefined score (no positive finite value in its layer grid) "
                     f"at level(s) {join_values(sorted(group['level']))}; left out of the means, "
                     f"trends and slopes")
    return notes


def _missing_null_notes(frame: pd.DataFrame) -> list[str]:
    """When some results hold a null (`--null`): a note per level without one, and per model
    pair whose null is missing or undefined at a level that has one; the chance table leaves
    them out."""
    if not frame["null_mean"].notna().any():
        return []
    with_null = frame.groupby("level")["null_measured"].transform("any")
    bare = sorted(frame.loc[~with_null, "level"].unique())
    notes = [f"level(s) {join_values(bare)}: measured without --null; no row in the chance "
             f"table"] if bare else []
    lacking = frame[with_null & frame["null_mean"].isna()]
    for (lm, vm, measured), rows in lacking.groupby(
            ["language_model", "vision_model", "null_measured"], sort=False):
        why = ("undefined null (a permutation without a finite score)" if measured
               else "no null (measured without --null)")
        notes.append(f"{lm} x {vm}: {why} at level(s) {join_values(sorted(rows['level']))}; "
                     f"left out of the chance table")
    return notes


def join_values(values: list[Any]) -> str:
    """`1, 2, 3`: a list in a message or a note."""
    return ", ".join(str(v) for v in values)


def write_tidy_csv(study: Study, path: str | os.PathLike) -> Path:
    """One row per (level, language model, vision model): score, best layers, bits per byte."""
    frame = study.frame.sort_values(["level", "language_order", "vision_order"])[TIDY_COLUMNS]
    frame = frame.astype({"layer_language": "Int64", "layer_vision": "Int64"})
    if frame["null_mean"].isna().all():
        frame = frame.drop(columns=CALIBRATION_COLUMNS)
    write_text(path, frame.to_csv(index=False, lineterminator="\n"))
    return Path(path)
