"""Alignment between language and vision models, best over all layer pairs.

Thin command line over `platonic.stages.measure`; `compute_score` and `prepare_features` are importable
from here as in the original code.
"""

from platonic.core.alignment import compute_score, prepare_features
from platonic.errors import run_cli
from platonic.stages.measure import main

__all__ = ["compute_score", "prepare_features", "main"]

if __name__ == "__main__":
    run_cli(main)
