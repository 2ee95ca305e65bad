"""Statistics a study reports, on plain arrays: OLS slope, Spearman rho, the mean rho of several
series against one axis (levels), and its bootstrap interval.

An undefined statistic (too few points, a constant axis, a missing value) is NaN, never an
error: the report shows it as "undefined".
"""

from __future__ import annotations

import math

import numpy as np
from scipy import stats

N_BOOTSTRAP = 2000
BOOTSTRAP_SEED = 0
MIN_LEVELS_FOR_RHO = 3


def ols_slope(x: np.ndarray, y: np.ndarray) -> float:
    """OLS slope of y on x; NaN with fewer than 2 points or a constant x."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    keep = np.isfinite(x) & np.isfinite(y)
    x, y = x[keep], y[keep]
    if x.size < 2 or np.ptp(x) == 0:
        return math.nan
    return float(stats.linregress(x, y).slope)


def spearman_rho(x: np.ndarray, y: np.ndarray) -> float:
    """scipy's Spearman rho; NaN with fewer than 3 points, a missing value or a constant side."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if x.size < MIN_LEVELS_FOR_RHO or not (np.isfinite(x).all() and np.isfinite(y).all()):
        return math.nan
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        return math.nan
    return float(stats.spearmanr(x, y).statistic)


def _rowwise_spearman(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Spearman rho along the last axis (Pearson of average ranks, as scipy); NaN if constant."""
    rx = stats.rankdata(x, axis=-1)
    ry = stats.rankdata(y, axis=-1)
    rx -= rx.mean(axis=-1, keepdims=True)
    ry -= ry.mean(axis=-1, keepdims=True)
    denom = np.sqrt((rx**2).sum(axis=-1) * (ry**2).sum(axis=-1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, (rx * ry).sum(axis=-1) / denom, np.nan)


def mean_rho(levels: np.ndarray, scores: np.ndarray) -> float:
    """Mean over series (rows of `scores`, one per vision model) of Spearman rho against level."""
    rhos = [spearman_rho(levels, row) for row in scores]
    return nanmean(rhos)


def bootstrap_mean_rho(levels: np.ndarray, scores: np.ndarray, n_boot: int = N_BOOTSTRAP,
                       seed: int = BOOTSTRAP_SEED) -> tuple[float, float]:
    """95% percentile interval of `mean_rho`, resampling levels with replacement.

    The levels are the units resampled, because rho is a statistic of the (level, score) pairs:
    the pairs bootstrap of a correlation. One draw of levels is shared by every series (vision
    model) of the family, which keeps the dependence between sizes measured on the same captions.
    Resampling sizes instead would give a degenerate interval for families of 1-4 models.
    Replicates with fewer than 3 distinct levels have no rho and are dropped; NaN if fewer than
    3 levels or no replicate is defined.
    """
    levels = np.asarray(levels, dtype=float)
    scores = np.atleast_2d(np.asarray(scores, dtype=float))
    if levels.size < MIN_LEVELS_FOR_RHO or scores.size == 0:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, levels.size, size=(n_boot, levels.size))
    distinct = np.array([np.unique(d).size for d in draws]) >= MIN_LEVELS_FOR_RHO
    draws = draws[distinct]
    x = np.broadcast_to(levels[draws][:, None, :], (draws.shape[0], *scores.shape))
    y = np.moveaxis(scores[:, draws], 1, 0)
    rhos = _rowwise_spearman(x, y)
    defined = ~np.isnan(rhos)
    counts = defined.sum(axis=1)
    means = np.where(counts > 0, np.where(defined, rhos, 0).sum(axis=1) / np.maximum(counts, 1),
                     np.nan)
    means = means[~np.isnan(means)]
    if means.size == 0:
        return math.nan, math.nan
    low, high = np.percentile(means, [2.5, 97.5])
    return float(low), float(high)


def nanmean(values: list[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return float(np.mean(finite)) if finite else math.nan
