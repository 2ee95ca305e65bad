"""The command line of the extract stage (`extract_features.py`): flags to `extract.Settings`
and the models, captions and images to extract, then `extract.run` here or, with
--ray, `ray_stages.extract_on_ray`."""

from __future__ import annotations

import argparse

from platonic.data.datasets import dataset_label, load_data
from platonic.data.levels import parse_levels
from platonic.errors import PlatonicError
from platonic.models.devices import stage_device
from platonic.run import cli_args
from platonic.run.cli_args import ray_settings
from platonic.stages import extract
from platonic.stages.extract import (
    STORAGE_DTYPES,
    Settings,
    select_models,
    texts_by_level,
)

COMMAND_DESCRIPTION = """Extract per-layer language and vision features at every uniqueness level, in one pass.

Examples:
  python extract_features.py --modelset demo --dataset embedded --levels all \\
      --output_dir 'results/u={}_features'          # offline, the embedded default
  python extract_features.py --dataset minhuh/prh --subset wit_1024 --modelset val \\
      --json_perturbations perturbed/data.json --levels all --output_dir 'BASE/gpt_u={}_features'
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=COMMAND_DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    data = parser.add_argument_group("data")
    cli_args.add_dataset_args(data)
    data.add_argument("--caption_idx", type=int, default=0, help="which caption of a caption list")
    data.add_argument("--num_samples", type=int, default=None, help="first N pairs (embedded: N pairs, default 256)")
    cli_args.add_levels_arg(data, "all extracted in one pass; without it (and without "
                             "--text_percentage_perturbation) the plain captions are used and "
                             "--output_dir holds no level")
    data.add_argument("--json_perturbations", default=None,
                      help="caption file in the published format ('Caption k - P%%' per 'Index - i'); "
                           "each sample's 'Caption 0 - 0%%' must be the dataset's caption")
    data.add_argument("--allow_caption_mismatch", action="store_true",
                      help="use a --json_perturbations file whose level-0 captions differ from the "
                           "dataset's (matched by index only)")
    data.add_argument("--text_percentage_perturbation", type=int, default=None,
                      help="a single level (the original's flag); same as --levels P")
    data.add_argument("--text_operations", default=None,
                      help="rule-based levels when no caption file: comma list of shuffle,delete,replace "
                           "(level P touches each word with probability P/100)")
    data.add_argument("--image_perturbations", action="store_true",
                      help="perturb images with --noise_percentage (implied by a nonzero percentage)")
    data.add_argument("--noise_percentage", type=float, default=0.0,
                      help="replace this %% of each image's pixels by random colours (seeded per image)")
    models = parser.add_argument_group("models")
    cli_args.add_modelset_arg(models)
    models.add_argument("--models", default=None,
                        help="comma list of model ids instead of a set: Hub id, local folder, .gguf "
                             "file, timm name, or 'timm_arch@/path/checkpoint'; Hub vision ids "
                             "(dinov2, clip, siglip, ...) load through transformers")
    models.add_argument("--modality", default="all", choices=["language", "vision", "all"])
    models.add_argument("--pool", default="avg", choices=["avg", "last", "cls"],
                        help="language pooling (avg or last); vision always uses cls (ViT CLS / CNN pooled)")
    models.add_argument("--qlora", action="store_true", help="load language models in 4 bit (bitsandbytes, CUDA)")
    run = parser.add_argument_group("run")
    run.add_argument("--batch_size", type=int, default=32,
                     help="most captions/images per forward pass (halved on out-of-memory)")
    cli_args.add_device_arg(run)
    run.add_argument("--dtype", default="bfloat16", choices=list(STORAGE_DTYPES),
                     help="feature storage precision (default bfloat16: 16 bit with fp32's range). "
                          "Computation is fp32 on the CPU and bf16 (or fp16 before compute "
                          "capability 8) on a GPU; float32 also forces fp32 computation")
    cli_args.add_features_dir(run, "--output_dir",
                         help="feature root; may hold '{}' for the level ('BASE/u={}_features'), "
                              "else levels go to <output_dir>/u=<level>")
    run.add_argument("--force_remake", action="store_true", help="remake files even when current")
    run.add_argument("--force_download", action="store_true",
                     help="ignore the de-quantised GGUF cache ($PLATONIC_CACHE) and rebuild it")
    cli_args.add_ray_args(parser.add_argument_group("ray"))
    return parser


def _levels(args: argparse.Namespace) -> list[int] | None:
    if args.levels and args.text_percentage_perturbation is not None:
        raise PlatonicError("give --levels or --text_percentage_perturbation, not both")
    if args.levels:
        return parse_levels(args.levels)
    if args.text_percentage_perturbation is not None:
        return parse_levels(str(args.text_percentage_perturbation))
    return None


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    if args.pool == "cls" and args.modality != "vision":
        raise PlatonicError("--pool cls is for vision; language pooling is avg or last")
    levels = _levels(args)
    if levels is None and "{}" in args.output_dir:
        raise PlatonicError(f"--output_dir {args.output_dir!r} holds '{{}}' for a level: give --levels")
    dataset, subset = dataset_label(args.dataset, args.subset)
    language_specs, vision_specs = select_models(
        args.modelset, args.models.split(",") if args.models else None, args.modality)
    data = load_data(args.dataset, subset, args.num_samples, args.caption_idx)
    operations = args.text_operations.split(",") if args.text_operations else None
    captions = texts_by_level(data, levels, args.json_perturbations, operations,
                              allow_caption_mismatch=args.allow_caption_mismatch)
    settings = Settings(
        output_dir=args.output_dir, dataset=dataset, subset=data.subset or subset,
        pool=args.pool if args.pool != "cls" else "avg", batch_size=args.batch_size,
        device=stage_device(args.device, bool(args.ray)), dtype=args.dtype,
        force_remake=args.force_remake, qlora=args.qlora, force_download=args.force_download,
        noise_percentage=args.noise_percentage if args.image_perturbations or args.noise_percentage else 0.0)
    ray = ray_settings(args)
    if ray is not None:
        from platonic.run.ray_stages import extract_on_ray

        stats = extract_on_ray(language_specs, vision_specs, captions, data.images, settings, ray)
    else:
        stats = extract.run(language_specs, vision_specs, captions, data.images, settings)
    print(f"wrote {len(stats.written)} feature files, reused {len(stats.reused)}, "
          f"model loads {dict(stats.loads)}, {stats.seconds:.1f} s")
    return 0
