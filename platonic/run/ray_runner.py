"""The Ray runner: a stage's work as Ray tasks, on a local Ray instance or a cluster.

Everything here is independent of what the tasks do (the stages' own tasks are in
`platonic.run.ray_stages`): connecting (`ray_session`), making every task through the session
(so none can miss `--ray_retries`), sizing GPU requests, and waiting for the tasks under one
progress line.

A worker that dies is replaced and its task rerun by Ray (`--ray_retries`); an error raised by a
task is not retried (it would fail again). One progress line counts finished and failed tasks;
each failure is named with its model and the first line of its error, and the stage then fails
with a `PlatonicError` (exit 2) listing them all.

The API for the stages' tasks: `with ray_session(ray) as session` to connect (`ray`: a
`RaySettings`, from the flags of `cli_args.add_ray_args`), `session.task(fn, ...)` for every task
plus `Submitted`, `wait_for(tasks, desc)` for the progress line and the failure report,
`task_device(requested)` inside a task, `gpus_for(...)` for a model's GPU request and
`remove_stale_temporaries(paths)` after a stage whose tasks write files.
"""

from __future__ import annotations

import contextlib
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
from tqdm.auto import tqdm

from platonic.errors import PlatonicError
from platonic.run.cli_args import LOCAL_RAY, RaySettings

GIB = 1024**3
DEFAULT_GPU_MEMORY_GB = 80.0
MEMORY_OVERHEAD = 1.2  # weights x this: activations of a batch, CUDA context, fragmentation
# Settings of the driver's environment that the tasks on a joined cluster must share (a local
# instance's workers inherit the whole environment).
SHARED_ENV = ("HF_HOME", "HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "PLATONIC_CACHE",
              "PLATONIC_CUSTOM_MODELS")
CONNECT_TIMEOUT_S = 5.0  # a cluster address must accept a TCP connection within this


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
def ray_session(settings: RaySettings) -> Iterator[RaySession]:
    """Ray for the block, from the flags of `cli_args.add_ray_args`: the running instance if there
    is one (left running), else started or joined here (`LOCAL_RAY`: a new local instance;
    'auto' or an address: a cluster) and shut down after.
    Task output stays in the workers' logs: the driver shows one progress line."""
    session = RaySession(settings.retries)
    if ray.is_initialized():
        yield session
        return
    address = settings.address
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

def gpus_for(num_params: float, param_bytes: float, gpu_memory_gb: float) -> int:
    """GPUs whose memory holds the weights with `MEMORY_OVERHEAD`; at least one."""
    return max(1, math.ceil(num_params * param_bytes * MEMORY_OVERHEAD / (gpu_memory_gb * GIB)))


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


