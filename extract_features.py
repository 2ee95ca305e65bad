"""Extract per-layer language and vision features at every uniqueness level, in one pass.

Thin command line over `platonic.run.extract_features` (the stage: `platonic.stages.extract`;
`python extract_features.py --help` for the flags).
Examples:
  python extract_features.py --modelset demo --dataset embedded --levels all \\
      --output_dir 'results/u={}_features'          # offline, the embedded default
  python extract_features.py --dataset minhuh/prh --subset wit_1024 --modelset val \\
      --json_perturbations perturbed/data.json --levels all --output_dir 'BASE/gpt_u={}_features'
"""

from platonic.run.exit_codes import run_cli
from platonic.run.extract_features import main

__all__ = ["main"]

if __name__ == "__main__":
    run_cli(main)
