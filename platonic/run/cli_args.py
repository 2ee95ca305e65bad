"""The command-line argument groups the scripts share, one `add_*` function a group.

Every command line (`extract_features.py`, `measure_alignment.py`, `plot_alignment.py`,
`perturbed/create_dataset.py`, `mmimdb/*.py`) is a thin script over a `main(argv)` in the
package (`platonic.run.*`, `platonic.captions.generate`, `platonic.mmimdb.commands`), whose
parser is built from these functions plus the flags only it has. The flag names and defaults are
the original scripts'; where one folder goes by different names in different scripts, each
keeps its own and also accepts the common one (`--features_dir`, `--align_dir`).

A new command line takes its shared flags from here; a new shared group (as `add_ray_args`,
for runs as Ray tasks) is one more `add_*` function here, so every script spells it the same.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from pathlib import Path

from platonic.data.datasets import PRH
from platonic.data.levels import ALL_LEVELS, parse_levels
from platonic.models.registry import model_set_names

ArgumentTarget = argparse.ArgumentParser | argparse._ArgumentGroup

DATASET_HELP = ("'minhuh/prh' (Hub), 'embedded' (offline rendered scenes with built-in "
                "uniqueness levels), or a local imagefolder directory")
SUBSET_HELP = ("Hub revision for minhuh/prh (default wit_1024); seed<N> for embedded "
               "(default seed0); for a folder, only a name in the output path")
LEVELS_SYNTAX = "'all' (0,10,...,100), '0,50,100', '0,10,...,100' or '0:100:10'"
DEVICE_HELP = "cpu, cuda, cuda:1 (default: cuda if available)"
FEATURES_DIR = "./results/features"
ALIGN_DIR = "./results/alignment"


# --- value types ------------------------------------------------------------------------------

def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be at least 0, got {value}")
    return value


def file_in_the_way(path: str | os.PathLike) -> Path | None:
    """The file that stops `path` from being a folder: the path itself, or the nearest of its
    parents that exists, when that is not a folder; None when nothing is in the way."""
    path = Path(path).expanduser()
    for part in (path, *path.parents):
        if part.exists():
            return None if part.is_dir() else part
    return None


def folder_problem(path: str | os.PathLike) -> str | None:
    """Why `path` cannot be a folder (a file stands where it or one of its parents should be),
    or None when it can (it may not exist yet)."""
    blocking = file_in_the_way(path)
    if blocking is None:
        return None
    where = "" if blocking == Path(path).expanduser() else f"{path}: "
    return f"{where}{blocking} is a file, not a folder"


def folder(text: str) -> str:
    """A folder flag (read or written; it may not exist yet), refused before any work when it
    cannot be a folder."""
    if problem := folder_problem(text):
        raise argparse.ArgumentTypeError(problem)
    return text


def positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be above 0, got {value}")
    return value


def topk_value(text: str) -> int | None:
    """An integer, or `None` (metrics without neighbours), as the original plot script took."""
    if text.lower() == "none":
        return None
    try:
        return int(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"topk must be an integer or None: {text!r}") from err


# --- groups -----------------------------------------------------------------------------------

def add_dataset_args(parser: ArgumentTarget, dataset_help: str = DATASET_HELP,
                     subset_default: str | None = None, subset_help: str = SUBSET_HELP) -> None:
    """--dataset and --subset (None: the dataset's own default, `platonic.data.datasets.DEFAULT_SUBSETS`)."""
    parser.add_argument("--dataset", default=PRH, help=dataset_help)
    parser.add_argument("--subset", default=subset_default, help=subset_help)


def add_levels_arg(parser: ArgumentTarget, help: str = "", parsed_default: bool = False) -> None:
    """--levels. With `parsed_default` it is parsed at once and defaults to every level; else it
    stays text (parse it with `platonic.data.levels.parse_levels`) and defaults to None: no levels."""
    text = f"uniqueness levels: {LEVELS_SYNTAX}" + (f"; {help}" if help else "")
    if parsed_default:
        parser.add_argument("--levels", type=parse_levels, default=list(ALL_LEVELS), help=text)
    else:
        parser.add_argument("--levels", default=None, help=text)


def add_modelset_arg(parser: ArgumentTarget, default: str = "val",
                     names: list[str] | None = None) -> None:
    """--modelset; `names` lists a study's own sets (default: the registry's)."""
    parser.add_argument("--modelset", default=default,
                        help=f"model set naming the models: one of "
                             f"{', '.join(names or model_set_names())}")


def add_side_args(parser: ArgumentTarget) -> None:
    """The two sides compared: --modality_x/--pool_x/--prompt_x and the same for y."""
    for axis, modality, pool in (("x", "language", "avg"), ("y", "vision", "cls")):
        parser.add_argument(f"--modality_{axis}", default=modality, choices=["language", "vision"])
        parser.add_argument(f"--pool_{axis}", default=pool)
        parser.add_argument(f"--prompt_{axis}", action="store_true")


def add_metric_args(parser: ArgumentTarget, topk_type=int) -> None:
    """--metric (a name in the metric registry) and --topk (neighbours for kNN metrics)."""
    from platonic.core.metrics import METRICS  # torch: only for the scripts that measure or plot

    parser.add_argument("--metric", default="mutual_knn", choices=list(METRICS))
    parser.add_argument("--topk", type=topk_type, default=10)


def add_alignment_args(parser: ArgumentTarget, topk_type=int) -> None:
    """Every flag that names an alignment result (its path): dataset, model set, sides, metric."""
    add_dataset_args(parser)
    add_modelset_arg(parser)
    add_side_args(parser)
    add_metric_args(parser, topk_type)


def add_features_dir(parser: ArgumentTarget, flag: str = "--features_dir",
                     default: str | None = FEATURES_DIR, help: str = "") -> None:
    """The feature folder (`{}` for the level), under the script's own flag and --features_dir."""
    parser.add_argument(*dict.fromkeys([flag, "--features_dir"]), type=folder, default=default,
                        help=help or "feature folder; may hold '{}' for the level")


def add_align_dir(parser: ArgumentTarget, flag: str = "--align_dir", default: str | None = ALIGN_DIR,
                  required: bool = False, help: str = "") -> None:
    """The alignment folder (`{}` for the level), under the script's own flag and --align_dir."""
    parser.add_argument(*dict.fromkeys([flag, "--align_dir"]), type=folder, default=default,
                        required=required,
                        help=help or "alignment folder; may hold '{}' for the level")


def add_device_arg(parser: ArgumentTarget, help: str = DEVICE_HELP) -> None:
    parser.add_argument("--device", default=None, help=help)


LOCAL_RAY = "local"


@dataclass(frozen=True)
class RaySettings:
    """A stage run as Ray tasks: where (`address`: `LOCAL_RAY`, 'auto' or a cluster's address),
    how often a task whose worker died is rerun, the device asked for (None: each task's GPUs,
    if it has any) and the memory of one cluster GPU (None: this machine's first, else 80 GB)."""

    address: str = LOCAL_RAY
    retries: int = 3
    device: str | None = None
    gpu_memory_gb: float | None = None


def ray_settings(args: argparse.Namespace) -> RaySettings | None:
    """What the flags of `add_ray_args` (and --device) ask for; None without --ray."""
    if not args.ray:
        return None
    return RaySettings(args.ray, args.ray_retries, args.device, args.gpu_memory_gb)


def add_ray_args(parser: ArgumentTarget) -> None:
    """--ray [ADDRESS] (run the stage as Ray tasks), --ray_retries, --gpu_memory_gb."""
    parser.add_argument("--ray", nargs="?", const=LOCAL_RAY, default=None, metavar="ADDRESS",
                        help="run as Ray tasks: 'auto' joins the running cluster, an address "
                             "(host:6379, ray://host:10001) joins that one, no value starts a "
                             "local Ray instance on this machine")
    parser.add_argument("--ray_retries", type=non_negative_int, default=3,
                        help="times Ray reruns a task whose worker died (default 3; 0: never)")
    parser.add_argument("--gpu_memory_gb", type=positive_float, default=None,
                        help="memory of one cluster GPU, to size each model's GPU request "
                             "(default: this machine's first GPU, else 80)")
