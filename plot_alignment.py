"""Plot alignment against language performance and caption uniqueness, and tabulate it.

    python plot_alignment.py --dataset minhuh/prh --subset wit_1024 --modelset val \\
        --modality_x language --pool_x avg --modality_y vision --pool_y cls --same_scale \\
        --features_dir "BASE/gpt_u={}_features" --align_dir "BASE/gpt_u={}_alignment" \\
        --plot_dir ./plots

`{}` in a directory stands for the uniqueness level. Thin command line over
`platonic.run.plot_alignment` (the stage: `platonic.stages.plots`).
"""

from platonic.run.exit_codes import run_cli
from platonic.run.plot_alignment import main

__all__ = ["main"]

if __name__ == "__main__":
    run_cli(main)
