"""Every job of a sweep checked before the first one starts, whichever launcher runs them.

Hydra's basic launcher runs jobs one after another and a bad setting stops the sweep where it
is (the jobs before it ran, those after it never start and are not named); the Ray launcher
reports it only once the good jobs have trained. `SweepCheckCallback` (in `hydra.callbacks` of
the train config) expands the sweep as Hydra's basic sweeper will, composes each job's config
and runs the run's own checks (`check_settings`) on it: a bad job is a one-line error naming its
swept values, and no job starts.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from platonic.clip.settings import check_settings
from platonic.errors import PlatonicError

log = logging.getLogger(__name__)


def sweep_jobs(config: DictConfig) -> tuple[list[list[str]], set[str]]:
    """(every job's overrides, in launch order; the keys the sweep varies), as the basic sweeper
    expands its `params` and the command line."""
    params = [f"{key}={value}" for key, value in (config.hydra.sweeper.get("params") or {}).items()]
    task = OmegaConf.to_container(config.hydra.overrides.task, resolve=False)
    parser = OverridesParser.create(config_loader=GlobalHydra.instance().config_loader())
    overrides = parser.parse_overrides([*params, *task])
    swept = {o.get_key_element() for o in overrides if o.is_sweep_override()}
    jobs = [job for batch in BasicSweeper.split_arguments(overrides, None) for job in batch]
    return jobs, swept


def bad_jobs(config: DictConfig) -> tuple[list[tuple[list[str], str]], int]:
    """((the swept overrides, the error) of every job whose settings fail the run's checks,
    the number of jobs)."""
    loader = GlobalHydra.instance().config_loader()
    jobs, swept = sweep_jobs(config)
    bad = []
    for overrides in jobs:
        job_config = loader.load_sweep_config(master_config=config, sweep_overrides=overrides)
        try:
            check_settings(job_config)
        except PlatonicError as err:
            named = [o for o in overrides if o.split("=", 1)[0] in swept] or overrides
            bad.append((named, str(err)))
    return bad, len(jobs)


def is_basic_sweeper(config: DictConfig) -> bool:
    target = str(config.hydra.sweeper.get("_target_", ""))
    return target.rsplit(".", 1)[-1] == BasicSweeper.__name__


class SweepCheckCallback(Callback):
    """Hydra callback: at the start of a multirun, every job's settings; exit status 2 and one
    line per bad job if any fails, before any job runs."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        if not is_basic_sweeper(config):
            log.info("sweeper %s: settings are checked as each job starts",
                     config.hydra.sweeper.get("_target_"))
            return
        bad, total = bad_jobs(config)
        if not bad:
            return
        for overrides, error in bad:
            print(f"error: job [{' '.join(overrides)}]: {error}", file=sys.stderr)
        print(f"error: {len(bad)} of {total} jobs have bad settings; no job was started",
              file=sys.stderr)
        raise SystemExit(2)
