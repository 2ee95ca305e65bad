"""The command line of the plot stage (`plot_alignment.py`): flags to `plots.Settings`, then
`plots.run`, which leaves figures made from the same study with the same settings."""

from __future__ import annotations

import argparse

from platonic.data.datasets import dataset_label
from platonic.data.levels import parse_levels
from platonic.run import cli_args
from platonic.stages import plots
from platonic.stages.study import StudySpec
from platonic.stages.study_statistics import DEFAULT_PANEL_LEVELS


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Plot alignment against language performance and caption uniqueness, and "
                    "tabulate it.")
    cli_args.add_alignment_args(parser, topk_type=cli_args.topk_value)
    parser.add_argument("--same_scale", action="store_true",
                        help="one y range for all performance panels, another for all trend plots")
    cli_args.add_features_dir(parser, default=None,
                         help="feature folder template with {} for the level (bits per byte of "
                              "the language models); without it, no performance plots")
    cli_args.add_align_dir(parser, default=None, required=True,
                      help="alignment folder template with {} for the level")
    parser.add_argument("--plot_dir", type=cli_args.folder, default="./plots")
    cli_args.add_levels_arg(parser, "the levels to read (default: all)", parsed_default=True)
    parser.add_argument("--panel_levels", type=parse_levels, default=None,
                        help="levels with a performance panel (default: those of "
                             f"{','.join(map(str, DEFAULT_PANEL_LEVELS))} that are plotted)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    spec = StudySpec(*dataset_label(args.dataset, args.subset), args.modelset,
                     args.modality_x, args.pool_x, args.prompt_x,
                     args.modality_y, args.pool_y, args.prompt_y, args.metric, args.topk)
    outputs = plots.run(plots.Settings(spec, args.align_dir, args.features_dir, args.plot_dir,
                                       levels=args.levels, panel_levels=args.panel_levels,
                                       same_scale=args.same_scale))
    print(outputs.describe())
    return 0
