"""The reference code's pixel F1-max: the best F1 over a fixed list of thresholds, on min-max
normalised scores (see :mod:`iapas.metrics`)."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from iapas.metrics.sorting import _as_labels, _as_scores, _split_sorted

#: Number of evenly spaced thresholds in [0, 1] the reference code scans for its pixel F1-max.
PAPER_N_THRESHOLDS = 100


def paper_thresholds() -> np.ndarray:
    """The reference code's F1-max thresholds: ``np.linspace(0, 1, 100)`` (a fresh array)."""
    return np.linspace(0.0, 1.0, PAPER_N_THRESHOLDS)


def _count_below(
    sorted_vals: np.ndarray, targets: np.ndarray, transform: Callable[[np.ndarray], np.ndarray]
) -> np.ndarray:
    """For each target ``t``: how many ``v`` of ``sorted_vals`` have ``transform(v) < t``.

    ``transform`` must be non-decreasing; a vectorised bisection evaluates it on O(T log n)
    elements only, so the normalised scores are never materialised.
    """
    n = sorted_vals.size
    lo = np.zeros(targets.size, dtype=np.int64)
    hi = np.full(targets.size, n, dtype=np.int64)
    while True:
        active = lo < hi
        if not active.any():
            return lo
        mid = (lo + hi) // 2
        below = transform(sorted_vals[np.minimum(mid, n - 1)]) < targets
        lo = np.where(active & below, mid + 1, lo)
        hi = np.where(active & ~below, mid, hi)


def _as_thresholds(thresholds: np.ndarray | None) -> np.ndarray:
    if thresholds is None:
        return paper_thresholds()
    thr = np.asarray(thresholds, dtype=np.float64).reshape(-1)
    if thr.size == 0 or not np.all(np.isfinite(thr)):
        raise ValueError("thresholds must be a non-empty list of finite numbers")
    return thr


def _f1_at_thresholds_from_sorted(
    pos: np.ndarray, neg: np.ndarray, thresholds: np.ndarray, normalize: bool
) -> float:
    n_pos, n_neg = int(pos.size), int(neg.size)
    if n_pos == 0:
        return float("nan")
    transform: Callable[[np.ndarray], np.ndarray]
    if normalize:
        lows = [a[0] for a in (pos, neg) if a.size]
        highs = [a[-1] for a in (pos, neg) if a.size]
        lo, hi = float(min(lows)), float(max(highs))
        if not (math.isfinite(lo) and math.isfinite(hi)):
            raise ValueError("cannot min-max normalise scores with infinite values")
        span = hi - lo
        if span > 0:
            transform = lambda v: (v.astype(np.float64) - lo) / span  # noqa: E731
        else:
            transform = lambda v: np.zeros(v.shape, dtype=np.float64)  # noqa: E731
    else:
        transform = lambda v: v.astype(np.float64)  # noqa: E731
    tp = n_pos - _count_below(pos, thresholds, transform)
    fp = (n_neg - _count_below(neg, thresholds, transform)) if n_neg else np.zeros_like(tp)
    # the reference's calculate_max_f1, operation for operation (2 TP / (TP + FP + P) can differ in the last bit)
    predicted = tp + fp
    precision = np.divide(tp, predicted, out=np.zeros(tp.shape), where=predicted > 0)
    recall = tp / n_pos
    both = precision + recall
    f1 = np.divide(2 * precision * recall, both, out=np.zeros(tp.shape), where=both > 0)
    return float(max(0.0, float(np.max(f1))))


def f1_max_at_thresholds(
    scores: np.ndarray,
    labels: np.ndarray,
    thresholds: np.ndarray | None = None,
    *,
    normalize: bool = True,
) -> float:
    """Best F1 over a fixed list of thresholds (default: the reference code's 100 in [0, 1]).

    With ``normalize`` the scores are first min-max normalised over the whole input (float64
    arithmetic; a constant input becomes all zeros); an element is predicted anomalous when its
    (normalised) score is ``>= t``. Returns nan without positives.
    """
    thr = _as_thresholds(thresholds)
    s = _as_scores(scores)
    pos, neg = _split_sorted(s, _as_labels(labels, s.shape))
    return _f1_at_thresholds_from_sorted(pos, neg, thr, normalize)

