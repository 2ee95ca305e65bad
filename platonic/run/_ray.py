"""The extract and measure stages as Ray tasks, on a local Ray instance or a cluster.

The tasks do the same work as a local run, through the same functions, and write the same
files the same way (atomically, skipping what is current), so a run on Ray, a local run and any
mix of the two after a crash leave identical outputs.

- Extraction: one task per model (all levels inside it, one model load), asking for the GPUs its
  size needs (`model_gpus`); a language model larger than one GPU gets several and is spread over
  them by `device_map="auto"`, as the local loader does on CUDA. The captions and the images go
  to the object store once and are shared by every task.
- Alignment: one task per (level, x model) scores that model against every y model still to do;
  each y feature file's kernels are built once by a task of their own (once for all levels when
  the file is the same, as vision features are) and shared through the object store. The driver
  writes a level's result (atomically) as soon as its last task is in.

A worker that dies is replaced and its task rerun by Ray (`--ray_retries`); an error raised by a
task is not retried (it would fail again). One progress line counts finished and failed tasks;
each failure is named with its model and the first line of its error, and the stage then fails
with a `PlatonicError` (exit 2) listing them all.

The API for other stages: `with ray_session(args) as session` to connect (`args`: the flags of
`cli.add_ray_args`), `session.task(fn, ...)` for every task (the only way to make one here, so
none can miss `--ray_retries`) plus `Submitted`, `wait_for(tasks, desc)` for the progress line
and the failure report, `task_device(requested)` inside a task, `model_gpus(spec, ...)` for a
model's GPU request and `remove_stale_temporaries(paths)` after a stage whose tasks write files.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import math
import os
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray
import torch
from PIL import Image
from tqdm.auto import tqdm

from platonic.core.alignment import LayerKernels, load_kernels
from platonic.errors import PlatonicError
from platonic.io.fingerprints import images_fingerprint
from platonic.io.storage import Level
from platonic.models.registry import LANGUAGE, ModelSpec
from platonic.run._args import LOCAL_RAY
from platonic.stages.extract import (
    VISION_POOL,
    RunStats,
    Settings,
    _output_path,
    extract_language,
    extract_vision,
    noisy_images,
)
from platonic.stages.measure import (
    LevelPlan,
    PairScore,
    Side,
    plan_level,
    score_pair,
    write_level,
)

GIB = 1024**3
DEFAULT_GPU_MEMORY_GB = 80.0
MEMORY_OVERHEAD = 1.2  # weights x this: activations of a batch, CUDA context, fragmentation
# Settings of the driver's environment that the tasks on a joined cluster must share (a local
# instance's workers inherit the whole environment).
SHARED_ENV = ("HF_HOME", "HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "PLATONIC_CACHE",
              "PLATONIC_CUSTOM_MODELS")
# Parameters of the ViT sizes of the paper (timm): the vision registry ranks sizes by name only.
CONNECT_TIMEOUT_S = 5.0  # a cluster address must accept a TCP connection within this
VIT_PARAMS = {"tiny": 5.7e6, "small": 22e6, "base": 86e6, "large": 304e6, "huge": 632e6,
              "giant": 1.14e9}


# ---- connecting -------------------------------------------------------------------------------

@dataclass(frozen=True)
class RaySession:
    """The tasks of one stage on Ray: each is rerun up to `retries` times when its worker dies."""

    retries: int

    def task(self, fn: Callable[..., Any], *, num_gpus: float = 0, num_cpus: float = 1,
             name: str = "") -> Any:
        """`fn` as a Ray remote function with these resources and the session's retries (an
        error raised by `fn` itself is not retried: it would fail again)."""
        return _remote_function(fn).options(
            num_gpus=num_gpus, num_cpus=num_cpus, max_retries=self.retries,
            retry_exceptions=False, name=name or fn.__name__)


@functools.cache
def _remote_function(fn: Callable[..., Any]) -> Any:
    return ray.remote(fn)


@contextlib.contextmanager
def ray_session(args: argparse.Namespace) -> Iterator[RaySession]:
    """Ray for the block, from the flags of `cli.add_ray_args` (`args.ray`, `args.ray_retries`):
    the running instance if there is one (left running), else started or joined here
    (`LOCAL_RAY`: a new local instance; 'auto' or an address: a cluster) and shut down after.
    Task output stays in the workers' logs: the driver shows one progress line."""
    session = RaySession(args.ray_retries)
    if ray.is_initialized():
        yield session
        return
    address = args.ray
    try:
        if address == LOCAL_RAY:
            ray.init(address="local", include_dashboard=False, log_to_driver=False)
        else:
            check_reachable(address)
            env = {name: os.environ[name] for name in SHARED_ENV if name in os.environ}
            ray.init(address=address, log_to_driver=False, runtime_env={"env_vars": env})
    except (ConnectionError, RuntimeError, ValueError) as err:
        raise PlatonicError(f"--ray {address}: cannot start or join Ray "
                            f"({first_line(err)})") from err
    try:
        yield session
    finally:
        ray.shutdown()


def host_and_port(address: str) -> tuple[str, int] | None:
    """(host, port) of 'host:port' or 'scheme://host:port' (IPv6 hosts in brackets); None for
    anything else ('auto', or a form Ray parses and reports itself)."""
    host, sep, port = address.split("://", 1)[-1].rstrip("/").rpartition(":")
    if not sep or not host or not port.isdigit():
        return None
    return host.removeprefix("[").removesuffix("]"), int(port)


def check_reachable(address: str, timeout_s: float = CONNECT_TIMEOUT_S) -> None:
    """Refuse at once, in one line, a cluster address where nothing accepts a connection: Ray
    itself would retry for minutes, printing a warning every few seconds."""
    target = host_and_port(address)
    if target is None:
        return
    try:
        socket.create_connection(target, timeout=timeout_s).close()
    except OSError as err:
        raise PlatonicError(f"--ray {address}: nothing accepts connections at "
                            f"{target[0]}:{target[1]} ({err.strerror or type(err).__name__}); "
                            "start the cluster there (`ray start --head`) or give its "
                            "address") from err


def cluster_gpus() -> list[float]:
    """GPUs of each live node of the cluster."""
    return [node["Resources"].get("GPU", 0.0) for node in ray.nodes() if node.get("Alive")]


def tasks_use_gpus(requested_device: str | None) -> bool:
    """Whether the stage's tasks ask for GPUs: unless --device cpu, when the cluster has any."""
    return requested_device != "cpu" and max(cluster_gpus(), default=0) > 0


# ---- placing work -----------------------------------------------------------------------------

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


def gpus_for(num_params: float, param_bytes: float, gpu_memory_gb: float) -> int:
    """GPUs whose memory holds the weights with `MEMORY_OVERHEAD`; at least one."""
    return max(1, math.ceil(num_params * param_bytes * MEMORY_OVERHEAD / (gpu_memory_gb * GIB)))


def model_gpus(spec: ModelSpec, settings: Settings, gpu_memory_gb: float) -> int:
    """The GPU request of one model's extraction task (one when its size is unknown)."""
    params = estimated_params(spec)
    return 1 if params is None else gpus_for(params, bytes_per_param(settings), gpu_memory_gb)


def default_gpu_memory_gb() -> float:
    """This machine's first GPU, as the likely kind of the cluster's; else an 80 GB card."""
    if torch.cuda.is_available():
        return torch.cuda.get_device_properties(0).total_memory / GIB
    return DEFAULT_GPU_MEMORY_GB


def task_device(requested: str | None) -> str:
    """Inside a task: the device asked for on the command line, else the task's GPUs (Ray sets
    CUDA_VISIBLE_DEVICES to them, so 'cuda' is the first and `device_map="auto"` sees all)."""
    if requested:
        return requested
    return "cuda" if ray.get_gpu_ids() else "cpu"


# ---- waiting ----------------------------------------------------------------------------------

@dataclass
class Submitted:
    """A task in flight: its result reference, the name a failure is reported by, and what to do
    with its result on the driver."""

    ref: Any
    name: str
    on_result: Callable[[Any], None] | None = None


def first_line(err: BaseException) -> str:
    """The first line of the error a task raised (unwrapped from Ray's envelopes)."""
    while isinstance(err, ray.exceptions.RayTaskError) and isinstance(err.cause, BaseException):
        err = err.cause
    lines = str(err).strip().splitlines()
    text = lines[0] if lines else ""
    return text if isinstance(err, PlatonicError) else f"{type(err).__name__}: {text}"


def wait_for(tasks: list[Submitted], desc: str) -> None:
    """Wait for every task under one progress line (done / total, failures), handing each result
    to its `on_result` as it comes; raise naming every failed task once all have ended."""
    by_ref = {task.ref: task for task in tasks}
    pending = list(by_ref)
    failures: list[str] = []
    try:
        with tqdm(total=len(tasks), desc=desc, unit="task") as bar:
            while pending:
                done, pending = ray.wait(pending, num_returns=1)
                task = by_ref[done[0]]
                try:
                    result = ray.get(task.ref)
                except ray.exceptions.RayError as err:
                    failures.append(f"{task.name}: {first_line(err)}")
                    bar.write(f"failed: {failures[-1]}")
                    bar.set_postfix(failed=len(failures))
                else:
                    if task.on_result is not None:
                        task.on_result(result)
                bar.update()
    except BaseException:
        for ref in pending:
            ray.cancel(ref, force=True)
        raise
    if failures:
        raise PlatonicError(f"{len(failures)} of {len(tasks)} Ray task(s) failed after retries: "
                            + "; ".join(failures))


def remove_stale_temporaries(paths: list[Path]) -> None:
    """Remove the temporary files a killed task left beside these outputs (`atomic_path`'s
    `.<name>.*.tmp`); call it once the tasks that write `paths` have all ended."""
    for path in paths:
        for tmp in path.parent.glob(f".{path.name}.*.tmp"):
            tmp.unlink(missing_ok=True)


# ---- extraction -------------------------------------------------------------------------------

def extract_model(spec: ModelSpec, texts_by_level: dict[Level, list[str]],
                  images: list[Image.Image], images_sha: str, vision_levels: list[Level],
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
    return [_output_path(settings, level, spec.id, pool) for level in levels]


def extract_on_ray(language_specs: list[ModelSpec], vision_specs: list[ModelSpec],
                   texts_by_level: dict[Level, list[str]], images: list[Image.Image],
                   settings: Settings, args: argparse.Namespace,
                   vision_levels: list[Level] | None = None) -> RunStats:
    """`run_extraction` as one Ray task per model, largest first (they take longest). Vision
    models encode the images once for `vision_levels` (default: every level of the texts)."""
    # Workers elsewhere have another working directory: they get the folder as an absolute path.
    settings = dataclasses.replace(settings, output_dir=os.path.abspath(settings.output_dir))
    stats = RunStats()
    levels = list(texts_by_level)
    vision_levels = levels if vision_levels is None else vision_levels
    specs = sorted([*language_specs, *vision_specs], key=lambda s: -(estimated_params(s) or 0))
    with ray_session(args) as session:
        gpu_memory = args.gpu_memory_gb or default_gpu_memory_gb()
        use_gpus = tasks_use_gpus(args.device)
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
                              args.device)
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

def kernels_of(path: str, precise: bool, requested_device: str | None) -> LayerKernels:
    """One y feature file's kernels (the body of a kernel task), on the CPU for the object store."""
    return load_kernels(path, task_device(requested_device), precise).to("cpu")


def score_row(path_x: str, fingerprint_x: str, kernels_y: list[tuple[int, str, Any]],
              args: argparse.Namespace) -> dict[int, PairScore]:
    """One x model against the y models `kernels_y` (index, fingerprint, kernel reference),
    fetched one at a time from the object store (the body of an alignment task)."""
    device = task_device(args.device)
    kx = load_kernels(path_x, device, args.precise)
    return {j: score_pair(kx, ray.get(ref).to(device), args, fingerprint_x, fingerprint_y)
            for j, fingerprint_y, ref in kernels_y}


class LevelResult:
    """Collects a level's rows as their tasks finish and writes the level after the last."""

    def __init__(self, plan: LevelPlan, args: argparse.Namespace, x: Side, y: Side):
        self.plan, self.args, self.x, self.y = plan, args, x, y
        self.scored: dict[tuple[int, int], PairScore] = {}
        self.rows_left = len(plan.todo)

    def add_row(self, i: int, row: dict[int, PairScore]) -> None:
        self.scored.update({(i, j): pair for j, pair in row.items()})
        self.rows_left -= 1
        if self.rows_left == 0:
            write_level(self.plan, self.args, self.x, self.y, self.scored)


def measure_on_ray(args: argparse.Namespace, x: Side, y: Side, levels: list[Level]) -> None:
    """Every level's `measure_level` as Ray tasks, one per (level, x model) still to score."""
    plans = [plan_level(args, x, y, level) for level in levels]
    for plan in plans:
        if plan.up_to_date:
            print(f"up to date: {plan.out}")
        elif not plan.todo:
            write_level(plan, args, x, y, {})
    plans = [plan for plan in plans if plan.todo]
    if not plans:
        return
    with ray_session(args) as session:
        gpus = 1 if tasks_use_gpus(args.device) else 0
        kernel_refs: dict[str, Any] = {}

        def kernels_ref(path: Path, fingerprint: str) -> Any:
            if fingerprint not in kernel_refs:
                task = session.task(kernels_of, num_gpus=gpus, name=f"kernels {path.name}")
                kernel_refs[fingerprint] = task.remote(str(path.resolve()), args.precise,
                                                       args.device)
            return kernel_refs[fingerprint]

        tasks = []
        for plan in plans:
            level = LevelResult(plan, args, x, y)
            for i, js in plan.todo.items():
                refs = [(j, plan.fps_y[j], kernels_ref(plan.paths_y[j], plan.fps_y[j]))
                        for j in js]
                task = session.task(score_row, num_gpus=gpus,
                                    name=f"align {x.models[i]} u={plan.level}")
                ref = task.remote(str(plan.paths_x[i].resolve()), plan.fps_x[i], refs, args)
                tasks.append(Submitted(ref, f"model {x.models[i]} (level {plan.level})",
                                       lambda row, i=i, level=level: level.add_row(i, row)))
        wait_for(tasks, "measure on Ray")
