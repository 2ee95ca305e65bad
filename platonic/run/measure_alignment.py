"""The command line of the measure stage (`measure_alignment.py`): flags to `measure.Settings`,
then `measure.run` here or, with --ray, `ray_stages.measure_on_ray`."""

from __future__ import annotations

import argparse

from platonic.data.datasets import dataset_label
from platonic.data.levels import parse_levels
from platonic.errors import PlatonicError
from platonic.models.registry import get_models
from platonic.run import cli_args
from platonic.run.cli_args import ray_settings
from platonic.stages import measure
from platonic.stages.measure import Side


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="Alignment between every x model and every y model (best over all layer "
                    "pairs), from feature files written by extract_features.py.")
    cli_args.add_alignment_args(p)
    p.add_argument("--models_x", nargs="+", help="x models by id (default: the model set's)")
    p.add_argument("--models_y", nargs="+", help="y models by id (default: the model set's)")
    cli_args.add_levels_arg(p, "the dirs then hold '{}' for the level (else a u=<level> sub-folder)")
    cli_args.add_features_dir(p, "--input_dir")
    cli_args.add_align_dir(p, "--output_dir")
    p.add_argument("--precise", action="store_true",
                   help="outlier threshold from one global quantile (else the mean of per-sample ones)")
    p.add_argument("--null", type=int, default=0, metavar="N",
                   help="also the score's null distribution from N random pairings of the "
                        "samples (each through the same best-over-layer-pairs search): null "
                        "mean, 95th percentile, p-value, calibrated score; 0: off")
    p.add_argument("--bootstrap", type=int, default=1000, metavar="B",
                   help="with --null: bootstrap replicates (over samples) of the score's 95%% CI "
                        "at the chosen layers")
    p.add_argument("--null_seed", type=int, default=0, help="seed of the permutations and bootstrap")
    p.add_argument("--force_remake", action="store_true")
    cli_args.add_device_arg(p)
    cli_args.add_ray_args(p)
    return p


def side_from_args(args: argparse.Namespace, axis: str) -> Side:
    modality = getattr(args, f"modality_{axis}")
    models = getattr(args, f"models_{axis}") or [m.id for m in get_models(args.modelset, modality)]
    if not models:
        raise PlatonicError(f"model set {args.modelset!r} has no {modality} models")
    return Side(modality, getattr(args, f"pool_{axis}"), getattr(args, f"prompt_{axis}"), models)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    dataset, subset = dataset_label(args.dataset, args.subset)
    settings = measure.Settings(
        input_dir=args.input_dir, output_dir=args.output_dir, dataset=dataset, subset=subset,
        modelset=args.modelset, x=side_from_args(args, "x"), y=side_from_args(args, "y"),
        levels=parse_levels(args.levels) if args.levels else [None], metric=args.metric,
        topk=args.topk, precise=args.precise, null=args.null, bootstrap=args.bootstrap,
        null_seed=args.null_seed, force_remake=args.force_remake, device=args.device)
    ray = ray_settings(args)
    if ray is not None:
        from platonic.run.ray_stages import measure_on_ray

        measure_on_ray(settings, ray)
    else:
        measure.run(settings)
    return 0
