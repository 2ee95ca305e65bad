"""The alignment stage: the project's engine (`platonic.measure`) on the test movies.

Every language model against every vision model, best score over all layer pairs including
the concatenation of all layers; pairs whose two feature files are unchanged are reused from
the previous result.
"""

from __future__ import annotations

from pathlib import Path

import torch

from platonic.measure import build_parser, measure_level, side_from_args
from platonic.mmimdb.layout import (
    ALIGNMENT_SPLIT,
    FEATURE_DATASET,
    LANGUAGE_POOL,
    VISION_POOL,
    Layout,
)
from platonic.models import LANGUAGE, VISION
from platonic.results import alignment_path
from platonic.storage import level_dir

DEFAULT_METRIC, DEFAULT_TOPK = "mutual_knn", 10


def alignment_file(layout: Layout, modelset: str, metric: str = DEFAULT_METRIC,
                   topk: int = DEFAULT_TOPK) -> Path:
    return alignment_path(level_dir(layout.align_dir, ALIGNMENT_SPLIT), FEATURE_DATASET, None,
                          modelset, LANGUAGE, LANGUAGE_POOL, False, VISION, VISION_POOL, False,
                          metric, topk)


def measure_study(layout: Layout, modelset: str, language_ids: list[str], vision_ids: list[str],
                  device: torch.device, metric: str = DEFAULT_METRIC, topk: int = DEFAULT_TOPK,
                  precise: bool = False, force: bool = False) -> Path:
    """Alignment of every language model with every vision model on the test split."""
    argv = ["--dataset", FEATURE_DATASET, "--modelset", modelset,
            "--input_dir", str(layout.feat_dir), "--output_dir", str(layout.align_dir),
            "--pool_x", LANGUAGE_POOL, "--pool_y", VISION_POOL,
            "--metric", metric, "--topk", str(topk),
            "--models_x", *language_ids, "--models_y", *vision_ids]
    args = build_parser().parse_args(argv + ["--precise"] * precise + ["--force_remake"] * force)
    return measure_level(args, side_from_args(args, "x"), side_from_args(args, "y"),
                         ALIGNMENT_SPLIT, device)
