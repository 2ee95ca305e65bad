"""Alignment between language and vision models, best over all layer pairs.

Thin command line over `platonic.run.measure_alignment` (the stage: `platonic.stages.measure`);
`compute_score` and `prepare_features` are importable from here as in the original code.
"""

from platonic.core.alignment import compute_score, prepare_features
from platonic.run.exit_codes import run_cli
from platonic.run.measure_alignment import main

__all__ = ["compute_score", "prepare_features", "main"]

if __name__ == "__main__":
    run_cli(main)
