"""The alignment stage: the project's measure stage (`platonic.stages.measure`) on the test movies.

Every language model against every vision model, best score over all layer pairs including
the concatenation of all layers; pairs whose two feature files are unchanged are reused from
the previous result. Every feature file must hold the movies of the saved test selection in
its order (`pairing.check_feature_rows`): rows are paired by position.
"""

from __future__ import annotations

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
from platonic.mmimdb.pairing import check_feature_rows
from platonic.models.registry import LANGUAGE, VISION
from platonic.run.cli_args import RaySettings
from platonic.stages import measure
from platonic.stages.measure import Side

DEFAULT_METRIC, DEFAULT_TOPK = "mutual_knn", 10


def alignment_file(layout: Layout, modelset: str, metric: str = DEFAULT_METRIC,
                   topk: int = DEFAULT_TOPK) -> Path:
    return alignment_path(level_dir(layout.align_dir, ALIGNMENT_SPLIT), FEATURE_DATASET, None,
                          modelset, LANGUAGE, LANGUAGE_POOL, False, VISION, VISION_POOL, False,
                          metric, topk)


def measure_study(layout: Layout, modelset: str, language_ids: list[str], vision_ids: list[str],
                  device: str | None = None, metric: str = DEFAULT_METRIC, topk: int = DEFAULT_TOPK,
                  precise: bool = False, force: bool = False,
                  ray: RaySettings | None = None) -> Path:
    """Alignment of every language model with every vision model on the test split; with
    `ray` (`--ray`), as the engine's Ray tasks (one per language model)."""
    check_feature_rows(layout, ALIGNMENT_SPLIT, [(m, LANGUAGE) for m in language_ids]
                       + [(m, VISION) for m in vision_ids])
    settings = measure.Settings(
        input_dir=str(layout.feat_dir), output_dir=str(layout.align_dir),
        dataset=FEATURE_DATASET, subset=None, modelset=modelset,
        x=Side(LANGUAGE, LANGUAGE_POOL, False, language_ids),
        y=Side(VISION, VISION_POOL, False, vision_ids), levels=[ALIGNMENT_SPLIT],
        metric=metric, topk=topk, precise=precise, force_remake=force, device=device)
    if ray is not None:
        from platonic.run.ray_stages import measure_on_ray

        measure_on_ray(settings, ray)
        return alignment_file(layout, modelset, metric, topk)
    [path] = measure.run(settings)
    return path
