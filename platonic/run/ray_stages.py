"""The extract and measure stages as Ray tasks (`--ray`), through `platonic.run.ray_runner`.

The tasks do the same work as a local run, through the same functions, and write the same
files the same way (atomically, skipping what is current), so a run on Ray, a local run and any
mix of the two after a crash leave identical outputs.

- Extraction: one task per model (all levels inside it, one model load), asking for the GPUs its
  size needs (`model_gpus`); a language model larger than one GPU gets several and is spread over
  them by `device_map="auto"`, as the local loader does on CUDA. The captions and the images go
  to the object store once and are shared by every task.
- Alignment: one task per (level, x model) scores that model against every y model still to do;
  each y feature file's kernels (its kNN lists, read layer by layer from the file) are built
  once by a task of their own (once for all levels when the file is the same, as vision
  features are) and shared through the object store. The driver
  writes a level's result (atomically) as soon as its last task is in.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import ray
from PIL import Image

from platonic.core.alignment import LayerKernels, load_kernels, precompute
from platonic.errors import PlatonicError
from platonic.io.fingerprints import images_fingerprint
from platonic.io.storage import Level
from platonic.models.registry import LANGUAGE, ModelSpec
from platonic.run.cli_args import RaySettings
from platonic.run.ray_runner import (
    MEMORY_OVERHEAD,
    Submitted,
    cluster_gpus,
    default_gpu_memory_gb,
    gpus_for,
    ray_session,
    remove_stale_temporaries,
    task_device,
    tasks_use_gpus,
    wait_for,
)
from platonic.stages import measure
from platonic.stages.extract import (
    VISION_POOL,
    RunStats,
    Settings,
    extract_language,
    extract_vision,
    noisy_images,
    output_path,
)
from platonic.stages.measure import LevelPlan, PairScore, plan_level, score_pair, write_level

# Parameters of the ViT sizes of the paper (timm): the vision registry ranks sizes by name only.
VIT_PARAMS = {"tiny": 5.7e6, "small": 22e6, "base": 86e6, "large": 304e6, "huge": 632e6,
              "giant": 1.14e9}


# ---- placing models ---------------------------------------------------------------------------

def estimated_params(spec: ModelSpec) -> float | None:
    """Parameters of a model before loading it: `options["num_params"]`, else the registry's
    size (language `size_rank` is billions of parameters; ViT sizes by name); None if unknown."""
    if "num_params" in spec.options:
        return float(spec.options["num_params"])
    if spec.modality == LANGUAGE:
        return spec.size_rank * 1e9 if spec.size_rank > 0 else None
    return VIT_PARAMS.get(spec.size)


def bytes_per_param(settings: Settings) -> float:
    """Weights on a GPU: 4-bit with --qlora, fp32 with --dtype float32, else 16 bit."""
    if settings.qlora:
        return 0.5
    return 4.0 if settings.dtype == "float32" else 2.0


def model_gpus(spec: ModelSpec, settings: Settings, gpu_memory_gb: float) -> int:
    """The GPU request of one model's extraction task (one when its size is unknown)."""
    params = estimated_params(spec)
    return 1 if params is None else gpus_for(params, bytes_per_param(settings), gpu_memory_gb)


# ---- extraction -------------------------------------------------------------------------------

def extract_model(spec: ModelSpec, texts_by_level: dict[Level, list[str]],
                  images: Sequence[Image.Image], images_sha: str, vision_levels: list[Level],
                  settings: Settings, requested_device: str | None) -> RunStats:
    """One model at every level (a vision model at `vision_levels`), on this task's device
    (the body of an extraction task)."""
    settings = dataclasses.replace(settings, device=task_device(requested_device))
    stats = RunStats()
    if spec.modality == LANGUAGE:
        extract_language(spec, texts_by_level, settings, stats)
    else:
        extract_vision(spec, images, images_sha, vision_levels, settings, stats)
    return stats


def merge_stats(total: RunStats, part: RunStats) -> None:
    total.loads.update(part.loads)
    total.forward_passes.update(part.forward_passes)
    total.real_tokens += part.real_tokens
    total.padded_tokens += part.padded_tokens
    total.images_encoded += part.images_encoded
    total.written.extend(part.written)
    total.reused.extend(part.reused)


def extraction_outputs(spec: ModelSpec, levels: list[Level], settings: Settings) -> list[Path]:
    pool = settings.pool if spec.modality == LANGUAGE else VISION_POOL
    return [output_path(settings, level, spec.id, pool) for level in levels]


def extract_on_ray(language_specs: list[ModelSpec], vision_specs: list[ModelSpec],
                   texts_by_level: dict[Level, list[str]], images: Sequence[Image.Image],
                   settings: Settings, ray_settings: RaySettings,
                   vision_levels: list[Level] | None = None) -> RunStats:
    """`extract.run` as one Ray task per model, largest first (they take longest). Vision
    models encode the images once for `vision_levels` (default: every level of the texts)."""
    # Workers elsewhere have another working directory: they get the folder as an absolute path.
    settings = dataclasses.replace(settings, output_dir=os.path.abspath(settings.output_dir))
    stats = RunStats()
    levels = list(texts_by_level)
    vision_levels = levels if vision_levels is None else vision_levels
    specs = sorted([*language_specs, *vision_specs], key=lambda s: -(estimated_params(s) or 0))
    with ray_session(ray_settings) as session:
        gpu_memory = ray_settings.gpu_memory_gb or default_gpu_memory_gb()
        use_gpus = tasks_use_gpus(ray_settings.device)
        requests = {spec.id: model_gpus(spec, settings, gpu_memory) if use_gpus else 0
                    for spec in specs}
        check_fits(requests)
        shown = noisy_images(images, settings) if vision_specs else []
        images_sha = images_fingerprint(shown) if vision_specs else ""
        texts_ref, images_ref = ray.put(texts_by_level), ray.put(shown)
        tasks = []
        for spec in specs:
            task = session.task(extract_model, num_gpus=requests[spec.id],
                                name=f"extract {spec.id}")
            ref = task.remote(spec, texts_ref, images_ref, images_sha, vision_levels, settings,
                              ray_settings.device)
            tasks.append(Submitted(ref, f"model {spec.id}", lambda part: merge_stats(stats, part)))
        try:
            wait_for(tasks, "extract on Ray")
        finally:
            remove_stale_temporaries([
                p for spec in specs for p in extraction_outputs(
                    spec, levels if spec.modality == LANGUAGE else vision_levels, settings)])
    return stats


def check_fits(requests: dict[str, int]) -> None:
    """A task asking for more GPUs than any node has would wait forever: refuse it now."""
    largest = int(max(cluster_gpus(), default=0))
    for model_id, gpus in requests.items():
        if gpus > largest:
            raise PlatonicError(f"model {model_id} needs {gpus} GPUs (weights x {MEMORY_OVERHEAD}) "
                                f"but the largest Ray node has {largest}; give --gpu_memory_gb "
                                "if the cluster's GPUs are larger")


# ---- alignment --------------------------------------------------------------------------------

def kernels_of(path: str, precise: bool, requested_device: str | None, metric: str,
               topk: int | None) -> LayerKernels:
    """One y feature file's kernels with what every pair reuses (its kNN lists for the kNN
    metrics; the body of a kernel task), on the CPU for the object store."""
    kernels = load_kernels(path, task_device(requested_device), precise)
    return precompute(kernels, metric, topk).to("cpu")


def score_row(path_x: str, fingerprint_x: str, kernels_y: list[tuple[int, str, Any]],
              settings: measure.Settings, requested_device: str | None) -> dict[int, PairScore]:
    """One x model against the y models `kernels_y` (index, fingerprint, kernel reference),
    fetched one at a time from the object store (the body of an alignment task)."""
    device = task_device(requested_device)
    kx = load_kernels(path_x, device, settings.precise)
    return {j: score_pair(kx, ray.get(ref).to(device), settings, fingerprint_x, fingerprint_y)
            for j, fingerprint_y, ref in kernels_y}


class LevelResult:
    """Collects a level's rows as their tasks finish and writes the level after the last."""

    def __init__(self, plan: LevelPlan, settings: measure.Settings):
        self.plan, self.settings = plan, settings
        self.scored: dict[tuple[int, int], PairScore] = {}
        self.rows_left = len(plan.todo)

    def add_row(self, i: int, row: dict[int, PairScore]) -> None:
        self.scored.update({(i, j): pair for j, pair in row.items()})
        self.rows_left -= 1
        if self.rows_left == 0:
            write_level(self.plan, self.settings, self.scored)


def measure_on_ray(settings: measure.Settings, ray_settings: RaySettings) -> None:
    """`measure.run`: every level's `measure_level` as Ray tasks, one per (level, x model)
    still to score."""
    plans = [plan_level(settings, level) for level in settings.levels]
    for plan in plans:
        if plan.up_to_date:
            print(f"up to date: {plan.out}")
        elif not plan.todo:
            write_level(plan, settings, {})
    plans = [plan for plan in plans if plan.todo]
    if not plans:
        return
    device, models_x = ray_settings.device, settings.x.models
    with ray_session(ray_settings) as session:
        gpus = 1 if tasks_use_gpus(device) else 0
        kernel_refs: dict[str, Any] = {}

        def kernels_ref(path: Path, fingerprint: str) -> Any:
            if fingerprint not in kernel_refs:
                task = session.task(kernels_of, num_gpus=gpus, name=f"kernels {path.name}")
                kernel_refs[fingerprint] = task.remote(str(path.resolve()), settings.precise,
                                                       device, settings.metric, settings.topk)
            return kernel_refs[fingerprint]

        tasks = []
        for plan in plans:
            level = LevelResult(plan, settings)
            for i, js in plan.todo.items():
                refs = [(j, plan.fps_y[j], kernels_ref(plan.paths_y[j], plan.fps_y[j]))
                        for j in js]
                task = session.task(score_row, num_gpus=gpus,
                                    name=f"align {models_x[i]} u={plan.level}")
                ref = task.remote(str(plan.paths_x[i].resolve()), plan.fps_x[i], refs, settings,
                                  device)
                tasks.append(Submitted(ref, f"model {models_x[i]} (level {plan.level})",
                                       lambda row, i=i, level=level: level.add_row(i, row)))
        wait_for(tasks, "measure on Ray")
