"""The settings of one finetuning run: every check that needs no model (one-line errors before
any work), the run's folder, and the fingerprints that decide reuse and which runs share a sweep.

The checks run once per job before a sweep's first job starts (`platonic.clip.sweep`) and again
at the start of each run.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from numbers import Real
from pathlib import Path
from typing import Any

from hydra.utils import to_absolute_path
from omegaconf import DictConfig, OmegaConf

from platonic.clip.towers import check_unknown_towers
from platonic.core.metrics import get_metric
from platonic.errors import PlatonicError
from platonic.io.storage import sha256_of
from platonic.mmimdb.dataset import resolve_root
from platonic.mmimdb.genres import check_class_idx

MODES = ("train",)
SEED_RANGE = (0, 2**32 - 1)  # what Lightning's seed_everything (numpy) accepts


@dataclass(frozen=True)
class RunSettings:
    class_idx: int
    clip_weight: float
    seed: int
    model_name: str
    run_dir: Path
    data_root: Path


def whole_number(value: Any, name: str, minimum: int, maximum: int | None = None) -> int:
    """`value` as an int in minimum..maximum, else a one-line error naming the setting."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum \
            or (maximum is not None and value > maximum):
        bound = f"in {minimum}..{maximum}" if maximum is not None else f">= {minimum}"
        raise PlatonicError(f"{name} must be a whole number {bound}, got {value!r}")
    return value


def check_clip_weight(weight: Any) -> float:
    """A finite number >= 0, as a float (-0.0 as 0.0, so equal weights are one run)."""
    if isinstance(weight, bool) or not isinstance(weight, Real) or not math.isfinite(weight) \
            or not weight >= 0:
        raise PlatonicError(f"model.model.clip_weight must be a finite number >= 0, got {weight!r}")
    return float(weight) + 0.0


def weight_folder_name(weight: float) -> str:
    """The run folder's name for a clip_weight: `clip-weight_<w>` with `<w>` the value's %g form
    when that is exact (the names used so far: 0, 1, 0.25, 1e-05), else its shortest exact
    form (repr): 0.1234567 and 0.1234568 get their own folders, 1 and 1.0 share one."""
    short = f"{weight:g}"
    return f"clip-weight_{short if float(short) == weight else repr(weight)}"


def check_pos_weight(setting: Any) -> None:
    if setting is None or setting == "balanced":
        return
    if isinstance(setting, bool) or not isinstance(setting, Real) or not math.isfinite(setting) \
            or not setting > 0:
        raise PlatonicError(f"loss.pos_weight must be 'balanced', a number > 0 or null, "
                            f"got {setting!r}")


def check_alignment(metric: Any, topk: Any) -> None:
    """A known metric, and for the kNN-style ones a whole `topk` >= 1 (its bound by the number
    of aligned movies is checked once they are selected)."""
    try:
        spec = get_metric(str(metric))
    except PlatonicError as err:
        raise PlatonicError(f"alignment.metric: {err}") from None
    if spec.uses_topk:
        whole_number(topk, "alignment.topk", 1)


def check_settings(cfg: DictConfig) -> RunSettings:
    """Every check that needs no model: a one-line error for each bad setting, and the dataset
    root resolved (a missing root fails here)."""
    if OmegaConf.select(cfg, "model") is None:
        raise PlatonicError("no model config: add +model=clip_demo (offline towers) or "
                            "+model=clip_sup (the paper's towers)")
    if OmegaConf.select(cfg, "data") is None:
        raise PlatonicError("no data config: add +data=mmimdb")
    if cfg.mode not in MODES:
        raise PlatonicError(f"mode {cfg.mode!r} is not supported; use mode=train")
    if cfg.class_idx is None:
        raise PlatonicError("class_idx is not set: add +class_idx=<0..22> (e.g. 19 = western)")
    class_idx = check_class_idx(cfg.class_idx)
    weight = check_clip_weight(cfg.model.model.clip_weight)
    check_unknown_towers(cfg.model.model.text_tower, cfg.model.model.image_tower)
    seed = whole_number(cfg.seed, "seed", *SEED_RANGE)
    whole_number(cfg.trainer.max_epochs, "trainer.max_epochs", 1)
    whole_number(cfg.data.batch_size, "data.batch_size", 1)
    whole_number(cfg.data.num_workers, "data.num_workers", 0)
    if cfg.data.align_samples is not None:
        whole_number(cfg.data.align_samples, "data.align_samples", 2)
    whole_number(cfg.data.sample_seed, "data.sample_seed", *SEED_RANGE)
    check_pos_weight(cfg.loss.pos_weight)
    check_alignment(cfg.alignment.metric, cfg.alignment.topk)
    data_root = resolve_root(cfg.data.root)
    root = Path(to_absolute_path(str(cfg.trainer.default_root_dir)))
    run_dir = (root / str(cfg.model.name) / f"class_{class_idx}" / f"seed_{seed}"
               / weight_folder_name(weight))
    return RunSettings(class_idx, weight, seed, str(cfg.model.name), run_dir, data_root)


def run_settings(cfg: DictConfig) -> dict[str, Any]:
    """The resolved config as a run records it: without the output root (a moved results
    folder is still reused), clip_weight or the dataset root as given (both are recorded as
    resolved, beside it)."""
    plain = OmegaConf.to_container(cfg, resolve=True)
    del plain["trainer"]["default_root_dir"]
    del plain["model"]["model"]["clip_weight"]
    del plain["data"]["root"]
    return plain


def fingerprints(settings: dict[str, Any], data: dict[str, Any], clip_weight: float) -> tuple[str, str]:
    """(of everything a run's output depends on, of the same without clip_weight): the first
    decides whether a finished run is reused, the second which runs one sweep summary holds.
    `data` is the identity of the movies read (`RunMovies.identity`: the resolved root, the
    ids and a content hash per split)."""
    shared = sha256_of(settings, data)
    return sha256_of(shared, clip_weight), shared
