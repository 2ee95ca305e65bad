"""The alignment metrics, importable from the repository root as in the original code.

`python metrics.py` prints each metric's value and time on random features (a quick self-check).
"""

from platonic.core.metrics import (
    METRICS,
    AlignmentMetrics,
    get_metric,
    hsic_biased,
    hsic_unbiased,
    register_metric,
    remove_outliers,
    self_check,
)

__all__ = ["METRICS", "AlignmentMetrics", "get_metric", "hsic_biased", "hsic_unbiased",
           "register_metric", "remove_outliers", "self_check"]

if __name__ == "__main__":
    for name, score, seconds in self_check():
        print(f"{name:>18s}: {score:.4f}  ({seconds * 1000:.1f} ms)")
