"""Command lines of the MM-IMDb study: one `main(argv)` per stage, behind the thin scripts in
`mmimdb/` (`extract_features.py`, `train_linear.py`, `measure_alignment.py`,
`plot_alignment.py`), chained by `mmimdb/run_mmimdb.sh`.

Every stage reads and writes under `--base_dir` (see `platonic.mmimdb.layout`) and skips what
is already current, so rerunning a stage or the whole chain redoes only what is missing.
Each stage's `*_args(argv)` parses its flags and checks every one that can be checked before
work starts; `check_main` runs them all, so the driver refuses a bad flag of the last stage
before the first one runs.
"""

from __future__ import annotations

import argparse
import sys

from platonic.errors import PlatonicError
from platonic.mmimdb.dataset import DEFAULT_NUM_SAMPLES, ROOT_ENV, named_root, resolve_root
from platonic.mmimdb.genres import check_class_idx
from platonic.mmimdb.layout import Layout
from platonic.mmimdb.model_sets import STUDY_SETS, study_models
from platonic.mmimdb.probe import BATCH_SIZE, EPOCHS, LEARNING_RATES, WEIGHT_DECAYS, ProbeConfig
from platonic.models.devices import stage_device
from platonic.run import cli_args
from platonic.run.cli_args import ray_settings

DEFAULT_BASE_DIR = "results/mmimdb"
DEFAULT_MODELSET = "demo"


def _parser(script: str, description: str, ray: bool = True) -> argparse.ArgumentParser:
    """The flags every stage shares (--base_dir, --modelset, --device, --force_remake), and
    with `ray` the Ray group (--ray [ADDRESS], --ray_retries, --gpu_memory_gb)."""
    parser = argparse.ArgumentParser(prog=script, description=description,
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--base_dir", type=cli_args.folder, default=DEFAULT_BASE_DIR,
                        help="study folder: mmimdb_ids, mmimdb_feat, mmimdb_performance, "
                             "mmimdb_align, mmimdb_plots go under it")
    cli_args.add_modelset_arg(parser, DEFAULT_MODELSET, sorted(STUDY_SETS))
    cli_args.add_device_arg(parser)
    parser.add_argument("--force_remake", action="store_true",
                        help="remake this stage's outputs even when they are current")
    if ray:
        cli_args.add_ray_args(parser.add_argument_group("ray"))
    return parser


def _checked_models(args: argparse.Namespace) -> None:
    """The model set names models, and the device exists (here; on Ray each task takes its own)."""
    study_models(args.modelset)
    stage_device(args.device, bool(getattr(args, "ray", None)))


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"expected a comma list of numbers, got {text!r}") from err


# --- 1. features ------------------------------------------------------------------------------

def extract_parser() -> argparse.ArgumentParser:
    parser = _parser("extract_features.py", "MM-IMDb features: every hidden state (mean-pooled) of each language model "
                     "on the train/dev/test plots, per-block features of each vision model on "
                     "the test posters.")
    parser.add_argument("--root", default=None,
                        help=f"MM-IMDb folder (split.json, dataset/); default ${ROOT_ENV}, else "
                             "the embedded fixture")
    parser.add_argument("--num_samples", type=cli_args.positive_int, default=DEFAULT_NUM_SAMPLES,
                        help="movies per split (the authors' sampled_ids.npy when present, else "
                             "a seeded sample)")
    parser.add_argument("--seed", type=cli_args.non_negative_int, default=0, help="seed of the sampler")
    parser.add_argument("--modality", default="all", choices=["language", "vision", "all"])
    parser.add_argument("--batch_size", type=cli_args.positive_int, default=32,
                        help="most plots/posters per forward pass (halved on out-of-memory)")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"],
                        help="feature storage precision")
    parser.add_argument("--max_length", type=cli_args.positive_int, default=None,
                        help="truncate plots to this many tokens (default: none, as the original)")
    return parser


def extract_args(argv: list[str] | None = None) -> argparse.Namespace:
    args = extract_parser().parse_args(argv)
    _checked_models(args)
    named_root(args.root)
    return args


def extract_main(argv: list[str] | None = None) -> int:
    from platonic.mmimdb.extract_splits import (
        extract_study_features,
        feature_settings,
        select_movies,
    )

    args = extract_args(argv)
    layout = Layout.at(args.base_dir)
    language, vision = study_models(args.modelset)
    root = resolve_root(args.root)
    print(f"MM-IMDb root: {root}")
    selections = select_movies(root, layout, args.num_samples, args.seed)
    settings = feature_settings(layout, stage_device(args.device, bool(args.ray)), args.batch_size, args.dtype,
                                args.force_remake, args.max_length)
    stats = extract_study_features(language if args.modality != "vision" else [],
                                   vision if args.modality != "language" else [],
                                   selections, settings, ray_settings(args))
    print(f"features: wrote {len(stats.written)} files, reused {len(stats.reused)}, "
          f"model loads {dict(stats.loads)}")
    return 0


# --- 2. performance ---------------------------------------------------------------------------

def probe_parser() -> argparse.ArgumentParser:
    parser = _parser("train_linear.py", "MM-IMDb performance: a linear genre probe per language model, the whole "
                     "lr x wd grid trained at once, chosen on dev macro F1, reported on test.")
    parser.add_argument("--layer", type=int, default=-1,
                        help="hidden state probed (-1: the last; 0: the embeddings)")
    parser.add_argument("--epochs", type=cli_args.positive_int, default=EPOCHS)
    parser.add_argument("--lrs", type=_floats, default=LEARNING_RATES, help="learning rates")
    parser.add_argument("--wds", type=_floats, default=WEIGHT_DECAYS, help="weight decays")
    parser.add_argument("--batch_size", type=int, default=BATCH_SIZE, help="0: full batch")
    parser.add_argument("--seed", type=cli_args.non_negative_int, default=0)
    parser.add_argument("--class_idx", type=int, default=None,
                        help="a binary task: the genre at this index of the published order "
                             "(0 drama ... 19 western ... 22 film-noir); default: all 23 genres")
    return parser


def probe_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The parsed flags, with `config` (the probe's `ProbeConfig`) added."""
    args = probe_parser().parse_args(argv)
    _checked_models(args)
    if args.batch_size < 0:
        raise PlatonicError(f"--batch_size must be >= 0 (0: full batch), got {args.batch_size}")
    if args.class_idx is not None:
        check_class_idx(args.class_idx)
    args.config = ProbeConfig(tuple(args.lrs), tuple(args.wds), args.epochs,
                              args.batch_size or None, args.seed)
    return args


def probe_main(argv: list[str] | None = None) -> int:
    from platonic.mmimdb.performance import run_probes

    args = probe_args(argv)
    layout = Layout.at(args.base_dir)
    language, _ = study_models(args.modelset)
    trained = run_probes(layout, [spec.id for spec in language], args.config, args.layer,
                         args.class_idx, stage_device(args.device, bool(args.ray)),
                         args.force_remake, ray_settings(args))
    print(f"performance: trained {trained} probes, reused {len(language) - trained} "
          f"({layout.perf_dir})")
    return 0


# --- 3. alignment -----------------------------------------------------------------------------

def measure_parser() -> argparse.ArgumentParser:
    parser = _parser("measure_alignment.py", "MM-IMDb alignment: every language model with every vision model on the "
                     "test movies (best over all layer pairs, incl. all layers concatenated).")
    cli_args.add_metric_args(parser, cli_args.positive_int)
    parser.add_argument("--precise", action="store_true",
                        help="outlier threshold from one global quantile")
    return parser


def measure_args(argv: list[str] | None = None) -> argparse.Namespace:
    args = measure_parser().parse_args(argv)
    _checked_models(args)
    if not study_models(args.modelset)[1]:
        raise PlatonicError(f"model set {args.modelset!r} has no vision models")
    return args


def measure_main(argv: list[str] | None = None) -> int:
    from platonic.mmimdb.study_alignment import measure_study

    args = measure_args(argv)
    language, vision = study_models(args.modelset)
    measure_study(Layout.at(args.base_dir), args.modelset, [m.id for m in language],
                  [m.id for m in vision], args.device, args.metric, args.topk, args.precise,
                  args.force_remake, ray_settings(args))
    return 0


# --- 4. correlation and plots -----------------------------------------------------------------

def plot_parser() -> argparse.ArgumentParser:
    parser = _parser("plot_alignment.py", "MM-IMDb correlation: per vision family, alignment vs language-model test "
                     "F1 (overall and per genre): figures, correlation.csv, summary.md.", ray=False)
    cli_args.add_metric_args(parser, cli_args.positive_int)
    parser.add_argument("--plot_dir", type=cli_args.folder, default=None,
                        help="default: BASE_DIR/mmimdb_plots")
    parser.add_argument("--dpi", type=cli_args.positive_int, default=300, help="PNG resolution")
    return parser


def plot_args(argv: list[str] | None = None) -> argparse.Namespace:
    args = plot_parser().parse_args(argv)
    study_models(args.modelset)
    return args


def plot_main(argv: list[str] | None = None) -> int:
    from platonic.mmimdb.correlation_plots import plot_correlation

    args = plot_args(argv)
    out = plot_correlation(Layout.at(args.base_dir), args.modelset, args.metric, args.topk,
                           args.plot_dir, args.dpi, force=args.force_remake)
    print(("plots: up to date in " if out.reused else f"plots: wrote {len(out.files)} files in ")
          + str(out.folder))
    print(f"summary: {out.summary}")
    return 0


# --- every stage's flags, before the first stage starts -----------------------------------------

STAGE_ARGS = {"features": extract_args, "performance": probe_args, "alignment": measure_args,
              "plots": plot_args}
STAGE_MARK = "::"


def check_main(argv: list[str] | None = None) -> int:
    """Check the flags of several stages with their own parsers and rules, doing no work.

    argv: `:: STAGE FLAGS... :: STAGE FLAGS...`, STAGE one of `STAGE_ARGS` (the names
    mmimdb/run_mmimdb.sh gives its stages), FLAGS the command line that stage will get.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] != STAGE_MARK:
        raise PlatonicError(f"expected '{STAGE_MARK} STAGE FLAGS...', got {argv[:1]}")
    starts = [i for i, arg in enumerate(argv) if arg == STAGE_MARK] + [len(argv)]
    for start, stop in zip(starts, starts[1:], strict=False):
        stage, *flags = argv[start + 1:stop] or [""]
        if stage not in STAGE_ARGS:
            raise PlatonicError(f"unknown stage {stage!r}; known: {', '.join(STAGE_ARGS)}")
        STAGE_ARGS[stage](flags)
    return 0
