"""ROC points and threshold trade-off curves of a detector score (what the report plots).

A detector flags an input when ``score > threshold`` (docs/design.md); triggered inputs are the
positives. :func:`roc_points` lists the (FPR, TPR) pairs as the threshold sweeps every distinct
score, from (0, 0) to (1, 1); its trapezoid area equals the rank AUROC of
:func:`peftshield.evaluation.metrics.auroc` (ties count half). :func:`sweep_thresholds` gives the
thresholds at which :mod:`peftshield.grid.evaluate` reads the FRR / ASR trade-off.
"""

from __future__ import annotations

from typing import Any

import numpy as np

#: Points kept per curve (enough for a plot, small in JSON).
MAX_POINTS = 101


def _thin(n: int, max_points: int) -> np.ndarray:
    """Indices of at most ``max_points`` evenly spread items of ``n``, first and last included."""
    if n <= max_points:
        return np.arange(n)
    return np.unique(np.round(np.linspace(0, n - 1, max_points)).astype(int))


def roc_points(scores_clean: Any, scores_poison: Any, max_points: int = MAX_POINTS) -> dict[str, list[float]]:
    """``{"fpr": [...], "tpr": [...]}`` from (0, 0) to (1, 1), thinned to ``max_points`` points."""
    c = np.sort(np.asarray(scores_clean, dtype=float))
    p = np.sort(np.asarray(scores_poison, dtype=float))
    if c.size == 0 or p.size == 0:
        return {"fpr": [], "tpr": []}
    cuts = np.unique(np.concatenate([c, p]))[::-1]  # descending: each cut admits one more score value
    # share of scores >= cut = 1 - share below cut
    fpr = 1.0 - np.searchsorted(c, cuts, side="left") / c.size
    tpr = 1.0 - np.searchsorted(p, cuts, side="left") / p.size
    fpr = np.concatenate([[0.0], fpr])
    tpr = np.concatenate([[0.0], tpr])
    keep = _thin(fpr.size, max_points)
    return {"fpr": [round(float(x), 5) for x in fpr[keep]], "tpr": [round(float(x), 5) for x in tpr[keep]]}


def roc_area(roc: dict[str, list[float]]) -> float:
    """Trapezoid area under ROC points (equals the rank AUROC when no point was thinned away)."""
    fpr, tpr = np.asarray(roc["fpr"]), np.asarray(roc["tpr"])
    if fpr.size < 2:
        return float("nan")
    return float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2.0))


def sweep_thresholds(*score_arrays: Any, n: int = 51) -> np.ndarray:
    """Ascending thresholds at ``n`` quantiles of the pooled scores (distinct values only).

    The lowest rejects everything above the smallest score, the highest (the largest score)
    rejects nothing, so the swept FRR runs from about 1 down to 0.
    """
    pooled = np.concatenate([np.asarray(s, dtype=float).ravel() for s in score_arrays])
    if pooled.size == 0:
        return np.zeros(0)
    return np.unique(np.quantile(pooled, np.linspace(0.0, 1.0, n)))
