"""The exact threshold-free metrics (AP, F1-max, AUROC): one sweep over the distinct thresholds
of two sorted score arrays (see :mod:`iapas.metrics`)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict, dataclass

import numpy as np

from iapas.metrics.sorting import _as_labels, _as_scores, _split_sorted

# Window of the sweep, in elements per class; bounds the per-window temporaries (~25 bytes each).
_SWEEP_CHUNK = 1 << 20


@dataclass(frozen=True)
class RankingMetrics:
    """The exact threshold-free metrics of one set of scores (see the module docstring)."""

    average_precision: float
    f1_max: float
    f1_threshold: float  # the (highest) threshold reaching f1_max; nan when undefined
    auroc: float
    n_positive: int
    n_negative: int

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)


def _sweep(
    pos: np.ndarray, neg: np.ndarray, chunk: int | None = None
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Walk every distinct value of ``pos`` and ``neg`` (both sorted ascending) from the top.

    Yields, window by window in decreasing threshold order, ``(thresholds, pos_below,
    neg_below)``: the distinct thresholds and, for each, how many positives and negatives score
    strictly below it (int64). Windows are delimited by pivot values taken every ``chunk``
    elements of each array; a pivot's own (possibly huge) run of ties is counted by binary
    search, and the open interval between two pivots holds at most ``chunk`` elements of each
    array, so the temporaries stay small whatever the ties.
    """
    chunk = _SWEEP_CHUNK if chunk is None else chunk
    parts = [a[::chunk] for a in (pos, neg) if a.size] + [a[-1:] for a in (pos, neg) if a.size]
    pivots = np.unique(np.concatenate(parts))
    for i in range(pivots.size - 1, -1, -1):
        hi = pivots[i]
        p_hi = int(np.searchsorted(pos, hi, side="left"))
        n_hi = int(np.searchsorted(neg, hi, side="left"))
        thr = [np.array([hi])]
        pb = [np.array([p_hi], dtype=np.int64)]
        nb = [np.array([n_hi], dtype=np.int64)]
        if i > 0:
            lo = pivots[i - 1]
            p_lo = int(np.searchsorted(pos, lo, side="right"))
            n_lo = int(np.searchsorted(neg, lo, side="right"))
            if p_hi > p_lo or n_hi > n_lo:
                u, pos_before, neg_before = _merge_runs(pos[p_lo:p_hi], neg[n_lo:n_hi])
                thr.append(u[::-1])
                pb.append(p_lo + pos_before[::-1])
                nb.append(n_lo + neg_before[::-1])
        yield np.concatenate(thr), np.concatenate(pb), np.concatenate(nb)


def _merge_runs(p: np.ndarray, n: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Distinct values of two sorted arrays, ascending, with how many of each lie strictly below."""
    merged = np.concatenate([p, n])
    order = np.argsort(merged, kind="stable")  # timsort: a linear merge of the two sorted runs
    values = merged[order]
    starts = np.flatnonzero(np.concatenate(([True], values[1:] != values[:-1])))
    pos_cum = np.concatenate(([0], np.cumsum(order < p.size, dtype=np.int64)))
    pos_before = pos_cum[starts]
    neg_before = starts - pos_before
    return values[starts], pos_before, neg_before


def _ranking_from_sorted(pos: np.ndarray, neg: np.ndarray) -> RankingMetrics:
    n_pos, n_neg = int(pos.size), int(neg.size)
    if n_pos + n_neg == 0:
        raise ValueError("scores is empty")
    if n_pos == 0:
        nan = float("nan")
        return RankingMetrics(nan, nan, nan, nan, n_pos, n_neg)
    # Only thresholds where TP grows matter: AP's terms are (R_k - R_{k-1}) P_k; F1 = 2TP /
    # (TP + FP + P) is, for a fixed TP, largest at the highest threshold (fewest FP); and the
    # ROC area is the Mann-Whitney count sum_k dTP_k (2 * negatives_below_k + dFP_k), i.e. each
    # positive beats the negatives below it and ties with those at its own score for 1/2.
    ap_terms: list[np.ndarray] = []  # sklearn's (R_{k-1} - R_k) * P_k, highest threshold first
    r_prev = 0.0
    u2 = 0  # 2 * P * N * AUROC, exact (Python int accumulates the int64 window sums)
    best_f1, best_thr = -1.0, float("nan")
    pos_below_prev, neg_below_prev = n_pos, n_neg
    for thr, pos_below, neg_below in _sweep(pos, neg):
        all_tp = n_pos - pos_below
        recall = all_tp / n_pos
        ap_terms.append((np.concatenate(([r_prev], recall[:-1])) - recall) * (all_tp / (all_tp + (n_neg - neg_below))))
        r_prev = float(recall[-1])
        d_pos = np.concatenate(([pos_below_prev], pos_below[:-1])) - pos_below  # dTP
        k = np.flatnonzero(d_pos)
        if k.size:
            d_tp = d_pos[k]
            nb = neg_below[k]
            nb_prev = np.where(k > 0, neg_below[np.maximum(k - 1, 0)], neg_below_prev)
            tp = n_pos - pos_below[k]
            fp = n_neg - nb
            u2 += int(np.dot(d_tp, 2 * nb + (nb_prev - nb)))
            f1 = 2.0 * tp / (tp + fp + n_pos)
            j = int(np.argmax(f1))
            if f1[j] > best_f1:
                best_f1, best_thr = float(f1[j]), float(thr[k[j]])
        pos_below_prev, neg_below_prev = int(pos_below[-1]), int(neg_below[-1])
    roc = u2 / (2.0 * n_pos * n_neg) if n_neg else float("nan")
    ap = _sklearn_sum(ap_terms) if n_neg else 1.0  # sklearn's sum of recall steps can miss 1 by an ulp
    return RankingMetrics(ap, best_f1, best_thr, roc, n_pos, n_neg)


def _sklearn_sum(terms_desc: list[np.ndarray]) -> float:
    """``max(0, -np.sum(terms))`` over the terms laid out from the lowest threshold up, as
    scikit-learn's ``_binary_uninterpolated_average_precision`` sums them (a contiguous array:
    numpy's pairwise summation depends on the layout, so the order is sklearn's)."""
    terms = np.ascontiguousarray(np.concatenate(terms_desc)[::-1])
    return float(max(0.0, -np.sum(terms)))


def ranking_metrics(scores: np.ndarray, labels: np.ndarray) -> RankingMetrics:
    """AP, F1-max (and its threshold) and AUROC in one sort; see the module docstring."""
    s = _as_scores(scores)
    pos, neg = _split_sorted(s, _as_labels(labels, s.shape))
    return _ranking_from_sorted(pos, neg)


def average_precision(scores: np.ndarray, labels: np.ndarray) -> float:
    """Exact average precision (scikit-learn's definition); nan without positives."""
    return ranking_metrics(scores, labels).average_precision


def f1_max(scores: np.ndarray, labels: np.ndarray) -> float:
    """Best F1 over every distinct threshold (``score >= t``); nan without positives."""
    return ranking_metrics(scores, labels).f1_max


def auroc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Exact area under the ROC curve; nan unless both classes are present."""
    return ranking_metrics(scores, labels).auroc

