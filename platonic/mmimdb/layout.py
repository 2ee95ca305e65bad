"""Where each stage of the MM-IMDb study reads and writes, under one base folder.

    BASE/mmimdb_ids/<split>.json                     the movies of each split (ids, texts, genres)
    BASE/mmimdb_feat/<split>/mmimdb/<model>_pool-*.safetensors   features (vision: test only)
    BASE/mmimdb_performance/<model>/test_perf.json   probe results (+ best_classifier.safetensors)
        test_perf_class<C>.json, best_classifier_class<C>.safetensors: the binary task of genre C
    BASE/mmimdb_align/test/...                       alignment results of the engine
    BASE/mmimdb_plots/                               figures, correlation.csv, summary.md
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from platonic.io.features import feature_path
from platonic.io.storage import level_dir, model_slug
from platonic.models.registry import LANGUAGE

FEATURE_DATASET = "mmimdb"
LANGUAGE_POOL, VISION_POOL = "avg", "cls"
ALIGNMENT_SPLIT = "test"
PERF_FILE = "test_perf.json"
WEIGHTS_FILE = "best_classifier.safetensors"


def _task_name(name: str, class_idx: int | None) -> str:
    """A probe file's name: the 23-genre task's as it is, a binary task's with `_class<C>`."""
    if class_idx is None:
        return name
    stem, suffix = name.split(".", 1)
    return f"{stem}_class{class_idx}.{suffix}"


@dataclass(frozen=True)
class Layout:
    base: Path

    @classmethod
    def at(cls, base: str | os.PathLike) -> Layout:
        return cls(Path(base))

    @property
    def ids_dir(self) -> Path:
        return self.base / "mmimdb_ids"

    @property
    def feat_dir(self) -> Path:
        return self.base / "mmimdb_feat"

    @property
    def perf_dir(self) -> Path:
        return self.base / "mmimdb_performance"

    @property
    def align_dir(self) -> Path:
        return self.base / "mmimdb_align"

    @property
    def plot_dir(self) -> Path:
        return self.base / "mmimdb_plots"

    def selection(self, split: str) -> Path:
        return self.ids_dir / f"{split}.json"

    def features(self, split: str, model_id: str, modality: str) -> Path:
        pool = LANGUAGE_POOL if modality == LANGUAGE else VISION_POOL
        return feature_path(level_dir(self.feat_dir, split), FEATURE_DATASET, None, model_id, pool)

    def performance(self, model_id: str, class_idx: int | None = None) -> Path:
        """The probe result of a model: the 23-genre task's, or (`class_idx`) a binary task's."""
        return self.perf_dir / model_slug(model_id) / _task_name(PERF_FILE, class_idx)

    def weights(self, model_id: str, class_idx: int | None = None) -> Path:
        """The chosen classifier of the probe `performance(model_id, class_idx)` describes."""
        return self.perf_dir / model_slug(model_id) / _task_name(WEIGHTS_FILE, class_idx)
