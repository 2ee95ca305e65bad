"""Hydra's Ray launcher (`hydra-ray-launcher`) with a cap on the jobs in flight and honest failures.

The upstream launcher (1.2.2) submits every job at once and its `RayConf` holds only `init` and
`remote`, so `+hydra.launcher.ray.max_concurrent_tasks=8` was accepted and ignored. This one
subclasses it, keeps its pieces (`start_ray`, the remote job runner `launch_job_on_ray`, the same
per-job sweep configs) and differs in three ways:
- `ray.max_concurrent_tasks` (null: all at once, as upstream) caps the jobs in flight: a new job
  is submitted only when `ray.wait` returns a finished one;
- a failed job (an exception in the task, or a Ray worker that died) is reported with its
  overrides and the first line of its error, after all the other jobs have finished;
- if any job failed, the multirun's end callbacks still run (so the summary of the finished runs
  is written) and the sweep exits with status 1.

Its config replaces upstream's ConfigStore entry `hydra/launcher/ray`, so `hydra/launcher=ray`
selects it; `max_concurrent_tasks` is null there, so both `+hydra.launcher.ray.max_concurrent_tasks=N`
(the original README's form) and the plain override work. Hydra only instantiates plugins that
live in the `hydra_plugins` namespace package, hence this module's place. Ray itself is imported
only when jobs are launched (Hydra imports every plugin module at start-up). No `from __future__
import annotations`: Hydra's scanner runs this module before registering it in sys.modules, and
dataclasses cannot resolve string annotations then.
"""

import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, configure_log, filter_overrides, setup_globals
from hydra_plugins.hydra_ray_launcher import _config as upstream_config
from hydra_plugins.hydra_ray_launcher.ray_launcher import RayLauncher
from omegaconf import open_dict

from platonic.errors import PlatonicError, first_line

log = logging.getLogger(__name__)

OBJECT_STORE_BYTES = 78643200  # upstream's default, small enough for CI machines


@dataclass
class BoundedRayConf(upstream_config.RayConf):
    init: dict[str, Any] = field(default_factory=lambda: {"address": None,
                                                          "include_dashboard": False})
    max_concurrent_tasks: int | None = None


@dataclass
class BoundedRayLauncherConf:
    _target_: str = "hydra_plugins.platonic_ray_launcher.bounded_ray_launcher.BoundedRayLauncher"
    ray: BoundedRayConf = field(default_factory=BoundedRayConf)


# Upstream's `_config` is imported above, so its entry exists already and this one replaces it,
# whichever order Hydra scans the plugin modules in.
ConfigStore.instance().store(group="hydra/launcher", name="ray", node=BoundedRayLauncherConf,
                             provider="platonic")


def concurrency_limit(value: Any, num_jobs: int) -> int:
    """`max_concurrent_tasks` as a positive job count (unset: every job at once)."""
    if value is None:
        return max(1, num_jobs)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise PlatonicError(f"hydra.launcher.ray.max_concurrent_tasks must be a whole number "
                            f">= 1, got {value!r}")
    return value


class BoundedRayLauncher(RayLauncher):
    """`RayLauncher` whose `launch` keeps at most `ray.max_concurrent_tasks` jobs in flight."""

    def launch(self, job_overrides: Sequence[Sequence[str]],
               initial_job_idx: int) -> Sequence[JobReturn]:
        try:
            limit = concurrency_limit(self.ray_cfg.get("max_concurrent_tasks"), len(job_overrides))
        except PlatonicError as err:
            print(f"error: {err}", file=sys.stderr)
            raise SystemExit(2) from None
        setup_globals()
        assert self.config is not None and self.hydra_context is not None
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        log.info("Ray launcher: %d jobs, at most %d at a time, sweep output dir: %s",
                 len(job_overrides), limit, sweep_dir)
        self.ray_cfg.init.setdefault("object_store_memory", OBJECT_STORE_BYTES)
        if self.ray_cfg.init.get("address") is None:
            # A local Ray runs its workers at nice 15; the jobs are the work here, so they get
            # normal priority (a cluster's own settings are left alone).
            self.ray_cfg.init.setdefault("_system_config", {"worker_niceness": 0})
        from hydra_plugins.hydra_ray_launcher._launcher_util import start_ray

        start_ray(self.ray_cfg.init)
        results = self._run_bounded(list(job_overrides), initial_job_idx, limit)
        failed = [r for r in results if r.status != JobStatus.COMPLETED]
        if failed:
            self._fail(failed, len(results))
        return results

    def _submit(self, idx: int, overrides: Sequence[str]) -> Any:
        from hydra_plugins.hydra_ray_launcher._launcher_util import launch_job_on_ray

        log.info("\t#%d : %s", idx, " ".join(filter_overrides(overrides)))
        sweep_config = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
        with open_dict(sweep_config):
            sweep_config.hydra.job.id = f"job_id_for_{idx}"
            sweep_config.hydra.job.num = idx
        return launch_job_on_ray(self.hydra_context, self.ray_cfg.remote, sweep_config,
                                 self.task_function, Singleton.get_state())

    def _run_bounded(self, job_overrides: list[Sequence[str]], initial_job_idx: int,
                     limit: int) -> list[JobReturn]:
        import ray

        queue = list(enumerate(job_overrides, start=initial_job_idx))
        in_flight: dict[Any, tuple[int, Sequence[str]]] = {}
        results: dict[int, JobReturn] = {}
        while queue or in_flight:
            while queue and len(in_flight) < limit:
                idx, overrides = queue.pop(0)
                in_flight[self._submit(idx, overrides)] = (idx, overrides)
            done, _ = ray.wait(list(in_flight), num_returns=1)
            for ref in done:
                idx, overrides = in_flight.pop(ref)
                results[idx] = _collect(ref, overrides)
        return [results[idx] for idx in sorted(results)]

    def _fail(self, failed: list[JobReturn], total: int) -> None:
        for job in failed:
            print(f"error: job with overrides [{' '.join(filter_overrides(job.overrides or []))}] "
                  f"failed: {first_line(job._return_value)}", file=sys.stderr)
        print(f"error: {len(failed)} of {total} jobs failed", file=sys.stderr)
        self.hydra_context.callbacks.on_multirun_end(config=self.config,
                                                     config_name=self.config.hydra.job.config_name)
        raise SystemExit(1)


def _collect(ref: Any, overrides: Sequence[str]) -> JobReturn:
    """The job's own `JobReturn`, or a failed one when the Ray task itself broke."""
    import ray

    try:
        return ray.get(ref)
    except ray.exceptions.RayError as err:
        return JobReturn(overrides=list(overrides), status=JobStatus.FAILED, _return_value=err)
