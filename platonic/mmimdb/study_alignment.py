"""The alignment stage: the project's engine (`platonic.stages.measure`) on the test movies.

Every language model against every vision model, best score over all layer pairs including
the concatenation of all layers; pairs whose two feature files are unchanged are reused from
the previous result.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from platonic.io.results import alignment_path
from platonic.io.storage import level_dir
from platonic.mmimdb.layout import (
    ALIGNMENT_SPLIT,
    FEATURE_DATASET,
    LANGUAGE_POOL,
    VISION_POOL,
    Layout,
)
from platonic.models.devices import pick_device
from platonic.models.registry import LANGUAGE, VISION
from platonic.stages.measure import build_parser, measure_level, side_from_args

DEFAULT_METRIC, DEFAULT_TOPK = "mutual_knn", 10


def alignment_file(layout: Layout, modelset: str, metric: str = DEFAULT_METRIC,
                   topk: int = DEFAULT_TOPK) -> Path:
    return alignment_path(level_dir(layout.align_dir, ALIGNMENT_SPLIT), FEATURE_DATASET, None,
                          modelset, LANGUAGE, LANGUAGE_POOL, False, VISION, VISION_POOL, False,
                          metric, topk)


def measure_study(layout: Layout, modelset: str, language_ids: list[str], vision_ids: list[str],
                  device: str | None = None, metric: str = DEFAULT_METRIC, topk: int = DEFAULT_TOPK,
                  precise: bool = False, force: bool = False,
                  ray_args: argparse.Namespace | None = None) -> Path:
    """Alignment of every language model with every vision model on the test split; with
    `ray_args` (`--ray`), as the engine's Ray tasks (one per language model)."""
    argv = ["--dataset", FEATURE_DATASET, "--modelset", modelset,
            "--input_dir", str(layout.feat_dir), "--output_dir", str(layout.align_dir),
            "--pool_x", LANGUAGE_POOL, "--pool_y", VISION_POOL,
            "--metric", metric, "--topk", str(topk),
            "--models_x", *language_ids, "--models_y", *vision_ids]
    argv += ["--precise"] * precise + ["--force_remake"] * force
    argv += ["--device", device] if device else []
    if ray_args is not None:
        argv += ["--ray", ray_args.ray, "--ray_retries", str(ray_args.ray_retries)]
    args = build_parser().parse_args(argv)
    x, y = side_from_args(args, "x"), side_from_args(args, "y")
    if ray_args is not None:
        from platonic.run._ray import measure_on_ray

        measure_on_ray(args, x, y, [ALIGNMENT_SPLIT])
        return alignment_file(layout, modelset, metric, topk)
    return measure_level(args, x, y, ALIGNMENT_SPLIT, pick_device(device))
