"""The alignment-result format written by measure_alignment.py and read by the plots.

Per (level, model set, modality pair, metric) three files share one stem:
  `{metric}_k{topk}.json`       scores [n_x, n_y] (null: undefined, no positive finite value in
                                the pair's layer grid), best layer indices as (x layer, y layer)
                                with -1 meaning all layers concatenated, model lists, metric and
                                parameters, fingerprints of the feature files used, and the SHA-256
                                of the two files below;
  `{metric}_k{topk}.csv`        one row per model pair (tidy);
  `{metric}_k{topk}_grids.npz`  `grid_{i}_{j}`: the layer-by-layer scores of x model i and
                                y model j, shape [Lx+1, Ly+1]; row/column 0 is the concatenation
                                (-1), row r is x layer r-1.

The JSON is written last and is the result's manifest: a reader checks the CSV's and the grids'
hashes against it, so a run killed between the renames (new grids beside an old JSON) is
detected as an incomplete result, never read as a mix of two runs.

With `--null N` the JSON also holds `calibration` [n_x][n_y] (null mean, 95th percentile,
p-value, calibrated score, bootstrap CI: a `Calibration`, computed by `platonic.core.calibration`)
and the CSV its columns.
"""

from __future__ import annotations

import csv
import io
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from platonic.errors import PlatonicError
from platonic.io.storage import (
    atomic_path,
    dataset_dir,
    read_json,
    sha256_file,
    write_json,
    write_text,
)

FORMAT_VERSION = 2
INDICES_LAYOUT = ("(x layer, y layer); -1 = all layers concatenated; null = undefined score "
                  "(no positive finite value in the layer grid)")
CSV_COLUMNS = ["level", "model_x", "model_y", "metric", "topk", "score", "layer_x", "layer_y"]
CALIBRATION_COLUMNS = ["null_mean", "null_p95", "p_value", "calibrated", "ci_low", "ci_high"]


def alignment_path(root: str | os.PathLike, dataset: str, subset: str | None, modelset: str,
                   modality_x: str, pool_x: str, prompt_x: Any,
                   modality_y: str, pool_y: str, prompt_y: Any,
                   metric: str, topk: int | None) -> Path:
    """`{root}/{dataset}/{subset}/{modelset}/{x}_pool-.._prompt-.._{y}_pool-.._prompt-../{metric}_k{topk}.json`."""
    pair = (f"{modality_x}_pool-{pool_x}_prompt-{prompt_x}_"
            f"{modality_y}_pool-{pool_y}_prompt-{prompt_y}")
    return dataset_dir(root, dataset, subset) / modelset / pair / f"{metric}_k{topk}.json"


def csv_path(json_path: Path) -> Path:
    return json_path.with_suffix(".csv")


def grids_path(json_path: Path) -> Path:
    return json_path.with_name(json_path.stem + "_grids.npz")


class IncompleteResult(PlatonicError):
    """A result whose files do not belong together (a run killed while writing it)."""


def json_score(value: float) -> float | None:
    """A score for JSON and CSV: None (null) for an undefined (NaN) one."""
    return float(value) if math.isfinite(value) else None


@dataclass(frozen=True)
class Calibration:
    """A score against its permutation null, and its bootstrap CI at the chosen layers."""

    score: float
    null_mean: float
    null_p95: float
    p_value: float
    calibrated: float
    n_null: int
    ci_low: float
    ci_high: float
    n_bootstrap: int
    null_method: str

    def to_json(self) -> dict[str, Any]:
        return {k: (None if isinstance(v, float) and math.isnan(v) else v)
                for k, v in asdict(self).items()}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Calibration:
        return cls(**{k: (math.nan if v is None else v) for k, v in data.items()})


@dataclass
class AlignmentResult:
    """Scores of every x model against every y model at one level."""

    metric: str
    topk: int | None
    models_x: list[str]
    models_y: list[str]
    scores: np.ndarray
    indices: list[list[tuple[int, int] | None]]
    meta: dict[str, Any] = field(default_factory=dict)
    grids: dict[tuple[int, int], np.ndarray] = field(default_factory=dict)
    calibration: dict[tuple[int, int], Calibration] = field(default_factory=dict)

    @property
    def level(self) -> int | None:
        return self.meta.get("level")

    def rows(self) -> list[dict[str, Any]]:
        """Tidy rows, one per model pair."""
        out = []
        for i, mx in enumerate(self.models_x):
            for j, my in enumerate(self.models_y):
                idx = self.indices[i][j]
                row = {
                    "level": self.level, "model_x": mx, "model_y": my, "metric": self.metric,
                    "topk": self.topk, "score": json_score(self.scores[i, j]),
                    "layer_x": None if idx is None else idx[0],
                    "layer_y": None if idx is None else idx[1],
                }
                if self.calibration:
                    cal = self.calibration.get((i, j))
                    row.update({c: None if cal is None else getattr(cal, c)
                                for c in CALIBRATION_COLUMNS})
                out.append(row)
        return out

    def to_json(self) -> dict[str, Any]:
        return {
            "format_version": FORMAT_VERSION,
            **self.meta,
            "metric": self.metric,
            "topk": self.topk,
            "models_x": self.models_x,
            "models_y": self.models_y,
            "scores": [[json_score(v) for v in row] for row in self.scores],
            "indices": [[None if idx is None else list(idx) for idx in row] for row in self.indices],
            "indices_layout": INDICES_LAYOUT,
            **({"calibration": [[None if (i, j) not in self.calibration
                                 else self.calibration[(i, j)].to_json()
                                 for j in range(len(self.models_y))]
                                for i in range(len(self.models_x))]}
               if self.calibration else {}),
        }


def save_result(path: str | os.PathLike, result: AlignmentResult) -> None:
    """Write grids and CSV, then the JSON (each atomically) holding their hashes: the JSON is
    the manifest that makes the three one unit."""
    path = Path(path)
    with atomic_path(grids_path(path)) as tmp, open(tmp, "wb") as f:
        np.savez_compressed(f, **{f"grid_{i}_{j}": g for (i, j), g in result.grids.items()})
    buf = io.StringIO()
    columns = CSV_COLUMNS + (CALIBRATION_COLUMNS if result.calibration else [])
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(result.rows())
    write_text(csv_path(path), buf.getvalue())
    write_json(path, {**result.to_json(), "files_sha256": {
        csv_path(path).name: sha256_file(csv_path(path)),
        grids_path(path).name: sha256_file(grids_path(path))}})


def check_complete(path: Path, data: dict[str, Any]) -> None:
    """The CSV and grids beside `path` must be the ones its JSON was written with."""
    recorded = data.get("files_sha256") or {}
    for part in (csv_path(path), grids_path(path)):
        if not part.exists() or recorded.get(part.name) != sha256_file(part):
            raise IncompleteResult(f"{path}: incomplete result ({part.name} missing or from "
                                   "another run); run measure_alignment.py again to remake it")


def load_result(path: str | os.PathLike, with_grids: bool = False) -> AlignmentResult:
    path = Path(path)
    if not path.exists():
        raise PlatonicError(f"{path}: alignment result not found")
    data = read_json(path)
    if data.get("format_version") != FORMAT_VERSION:
        raise IncompleteResult(f"{path}: unknown alignment result format "
                               f"{data.get('format_version')!r}; run measure_alignment.py again")
    check_complete(path, data)
    meta = {k: v for k, v in data.items()
            if k not in {"metric", "topk", "models_x", "models_y", "scores", "indices",
                         "format_version", "indices_layout", "files_sha256", "calibration"}}
    grids: dict[tuple[int, int], np.ndarray] = {}
    if with_grids:
        with np.load(grids_path(path), allow_pickle=False) as npz:
            for key in npz.files:
                _, i, j = key.split("_")
                grids[(int(i), int(j))] = npz[key]
    scores = [[math.nan if v is None else v for v in row] for row in data["scores"]]
    return AlignmentResult(
        metric=data["metric"], topk=data["topk"], models_x=data["models_x"],
        models_y=data["models_y"], scores=np.asarray(scores, dtype=np.float64).reshape(
            len(data["models_x"]), len(data["models_y"])),
        indices=[[None if idx is None else (idx[0], idx[1]) for idx in row] for row in data["indices"]],
        meta=meta, grids=grids, calibration={
            (i, j): Calibration.from_json(cal)
            for i, row in enumerate(data.get("calibration") or []) for j, cal in enumerate(row)
            if cal is not None},
    )
