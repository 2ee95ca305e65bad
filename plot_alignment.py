"""Plot alignment against language performance and caption uniqueness, and tabulate it.

    python plot_alignment.py --dataset minhuh/prh --subset wit_1024 --modelset val \\
        --modality_x language --pool_x avg --modality_y vision --pool_y cls --same_scale \\
        --features_dir "BASE/gpt_u={}_features" --align_dir "BASE/gpt_u={}_alignment" \\
        --plot_dir ./plots

`{}` in a directory stands for the uniqueness level. The work is done by
`platonic.plots.plot_study`; this script only parses the original flags.
"""

from __future__ import annotations

import argparse

from platonic.data import dataset_label, parse_levels
from platonic.errors import run_cli
from platonic.plots import plot_study
from platonic.report import DEFAULT_LEVELS, DEFAULT_PANEL_LEVELS, StudySpec


def topk_value(text: str) -> int | None:
    if text.lower() == "none":
        return None
    try:
        return int(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"topk must be an integer or None: {text!r}") from err


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="minhuh/prh")
    parser.add_argument("--subset", default=None,
                        help="default: the dataset's own (wit_1024 for minhuh/prh, seed0 for embedded)")
    parser.add_argument("--modelset", default="val")
    parser.add_argument("--modality_x", default="language")
    parser.add_argument("--pool_x", default="avg")
    parser.add_argument("--prompt_x", action="store_true")
    parser.add_argument("--modality_y", default="vision")
    parser.add_argument("--pool_y", default="cls")
    parser.add_argument("--prompt_y", action="store_true")
    parser.add_argument("--metric", default="mutual_knn")
    parser.add_argument("--topk", type=topk_value, default=10)
    parser.add_argument("--same_scale", action="store_true",
                        help="one y range for all performance panels, another for all trend plots")
    parser.add_argument("--features_dir", default=None,
                        help="feature folder template with {} for the level (bits per byte of "
                             "the language models); without it, no performance plots")
    parser.add_argument("--align_dir", required=True,
                        help="alignment folder template with {} for the level")
    parser.add_argument("--plot_dir", default="./plots")
    parser.add_argument("--levels", type=parse_levels, default=list(DEFAULT_LEVELS),
                        help="uniqueness levels to read (default: 0,10,...,100)")
    parser.add_argument("--panel_levels", type=parse_levels, default=None,
                        help="levels with a performance panel (default: those of "
                             f"{','.join(map(str, DEFAULT_PANEL_LEVELS))} that are plotted)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    spec = StudySpec(*dataset_label(args.dataset, args.subset), args.modelset,
                     args.modality_x, args.pool_x, args.prompt_x,
                     args.modality_y, args.pool_y, args.prompt_y, args.metric, args.topk)
    outputs = plot_study(spec, args.align_dir, args.features_dir, args.plot_dir,
                         levels=args.levels, panel_levels=args.panel_levels,
                         same_scale=args.same_scale)
    print(outputs.describe())
    return 0


if __name__ == "__main__":
    run_cli(main)
