"""Evaluation metrics for anomaly maps: AP, F1-max, AUROC, AUPRO and the paper's per-category set.

Every function takes numpy arrays of any shape: ``scores`` (any real dtype; float16 is widened to
float32, integers and bools to float64, float32/float64 are used as they are) and ``labels`` of the
same shape (bool, or integers/floats that are all 0 or 1; 1 = anomalous). Scores must not be NaN
(``ValueError``); +-inf is allowed except where a min-max normalisation needs finite bounds.

Definitions (all exact unless said otherwise)
---------------------------------------------
Thresholds. A threshold ``t`` predicts "anomalous" for every element with ``score >= t``. The
exact metrics use every *distinct* score value as a threshold, scanned from the highest down, so
tied scores always move together. With ``P`` positives and, at threshold ``t``, ``TP(t)`` and
``FP(t)`` the positives and negatives scoring ``>= t``:

* precision ``TP / (TP + FP)``, recall ``TP / P``, FPR ``FP / N`` (``N`` negatives).
* **average_precision**: ``sum_k (R_k - R_{k-1}) * P_k`` over the distinct thresholds in
  decreasing order with ``R_0 = 0`` (the step-wise, non-interpolated AP), in scikit-learn's
  ``average_precision_score`` arithmetic to the last bit: ``R_k = TP_k / P`` and ``P_k = TP_k /
  (TP_k + FP_k)`` in float64, one term ``(R_{k-1} - R_k) * P_k`` per distinct threshold (zero
  where the recall does not move), laid out from the lowest threshold up and summed by
  ``-np.sum`` (numpy's pairwise summation), so ties and plateaus give sklearn's very float.
* **f1_max**: ``max_t 2 TP / (2 TP + FP + FN) = 2 TP / (TP + FP + P)`` over the distinct thresholds
  (the best F1 that any threshold actually achieves; what ``precision_recall_curve`` gives).
  Ties between thresholds are resolved towards the highest threshold (reported by
  :func:`ranking_metrics` as ``f1_threshold``).
* **auroc**: trapezoidal area under (FPR, TPR) through (0, 0) and every distinct threshold (what
  scikit-learn's ``roc_auc_score`` computes). It is evaluated as the equal Mann-Whitney count
  (each positive beats the negatives below it and ties with those at its score for 1/2) in exact
  integer arithmetic, and divided by ``P * N`` once at the end.
* **f1_max_at_thresholds** (the reference code's 100-threshold variant of pixel F1-max): the
  scores are min-max normalised over the *whole* input, ``s' = (s - min) / (max - min)`` computed
  in float64 (a constant input normalises to all zeros), and the best F1 over a fixed list of
  thresholds, by default ``np.linspace(0, 1, 100)``, again predicting anomalous when
  ``s' >= t``. It is a lower bound of :func:`f1_max`. This is the reference code's
  ``calculate_max_f1`` (utils/function.py), in its arithmetic: ``np.linspace(0, 1, 100)``,
  ``pred >= thres``, ``p = TP / (TP + FP)`` (0 when nothing is predicted), ``r = TP / P``,
  ``F1 = 2 * p * r / (p + r)`` (0 where ``p + r`` is 0), the maximum and 0 at worst; it scans
  the already normalised stack, which the min-max here leaves bit for bit unchanged (its minimum
  is 0 and its maximum 1, so ``(s - 0) / 1 = s``).
* **aupro**: the standard MVTec AD per-region overlap. Ground-truth regions are the 8-connected
  components of each 2-D mask (``scipy.ndimage.label`` with a 3x3 structure; components never
  span two images). At threshold ``t``, PRO(t) is the mean over *all* regions of the stack of the
  fraction of the region's pixels scoring ``>= t``, and FPR(t) the fraction of all mask-0 pixels
  scoring ``>= t``. The curve (FPR, PRO) through (0, 0) and every distinct threshold is integrated
  with the trapezoid rule up to ``fpr_limit`` (linearly interpolated at the limit) and divided by
  ``fpr_limit``, so the result is in [0, 1]. It uses every distinct threshold (no fixed grid), so
  it is exact up to float64 rounding of the region weights.

Degenerate inputs (documented choices, not warnings)
----------------------------------------------------
* Empty input: ``ValueError``.
* No positive: AP, F1-max (both variants), AUROC and AUPRO are **nan** (undefined: recall has no
  denominator). scikit-learn (1.9) warns and returns 0.0 for AP here; we do not copy that.
* No negative (everything anomalous): AP = 1.0 and F1-max = 1.0 (precision is 1 at every
  threshold, the lowest threshold reaches recall 1; scikit-learn's sum of the recall steps can
  give 1 - 1e-16 here); AUROC and AUPRO are **nan** (FPR undefined;
  scikit-learn raises for ROC AUC).
* Constant scores with both classes: one threshold, so AP = precision = ``P / (P + N)``,
  F1-max = ``2P / (2P + N)``, AUROC = 0.5.

Cost and memory
---------------
The scores are split by label, block by block, into two copies (total: one copy of the scores in
their own dtype, i.e. 4 bytes per element for float32) which are sorted in place; nothing else of
the input's size is allocated (a non-C-contiguous input is first copied). The curves are then
swept in windows of at most about 2^20 elements per class, so the int64 counts and float64 terms
never exist for the whole input (measured on 1,725 x 400 x 400 float32 maps: 1.16 GiB above the
inputs, see benchmarks/README.md), except AP's float64 terms, one per distinct score (8 bytes
each, kept to be summed in scikit-learn's order).
Heavily tied values (for example the many zeros of a map with no detection) are counted with
binary searches, never expanded. :func:`aupro` additionally holds ~32 bytes per anomalous pixel
(region weights and an argsort of the anomalous scores) and labels masks in batches of about
4 million pixels. :func:`category_metrics` shares the sorted arrays between all pixel metrics,
so a category is sorted once.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass

import numpy as np

__all__ = [
    "CategoryMetrics",
    "RankingMetrics",
    "aupro",
    "auroc",
    "average_precision",
    "category_metrics",
    "f1_max",
    "f1_max_at_thresholds",
    "paper_thresholds",
    "ranking_metrics",
]

#: Number of evenly spaced thresholds in [0, 1] the reference code scans for its pixel F1-max.
PAPER_N_THRESHOLDS = 100

# Window of the sweep, in elements per class; bounds the per-window temporaries (~25 bytes each).
_SWEEP_CHUNK = 1 << 20
# Elements per block when splitting scores by label.
_SELECT_BLOCK = 1 << 22
# Pixels per batch when labelling connected components.
_LABEL_BATCH_PIXELS = 1 << 22


def paper_thresholds() -> np.ndarray:
    """The reference code's F1-max thresholds: ``np.linspace(0, 1, 100)`` (a fresh array)."""
    return np.linspace(0.0, 1.0, PAPER_N_THRESHOLDS)


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


@dataclass(frozen=True)
class CategoryMetrics:
    """The paper's metric set for one category (all values in [0, 1], nan when undefined)."""

    pixel_ap: float
    pixel_f1_max: float
    pixel_auroc: float
    pixel_aupro: float  # integrated to fpr_limit and divided by it
    image_auroc: float
    image_ap: float
    image_f1_max: float
    pixel_f1_max_100: float  # the reference code's 100-threshold F1-max on min-max normalised maps
    pixel_f1_threshold: float
    image_f1_threshold: float
    fpr_limit: float
    n_images: int
    n_anomalous_images: int
    n_pixels: int
    n_anomalous_pixels: int
    n_regions: int
    # the reference code's 100-threshold F1-max of the image scores (see category_metrics)
    image_f1_max_100: float = float("nan")
    n_pixel_excluded: int = 0  # images left out of the pixel metrics (kept in the image metrics)

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)


# ---------------------------------------------------------------------------------------------
# Input handling


def _as_scores(scores: np.ndarray, name: str = "scores") -> np.ndarray:
    arr = np.asarray(scores)
    if arr.dtype == np.float16:
        arr = arr.astype(np.float32)
    elif arr.dtype.kind in "biu":
        arr = arr.astype(np.float64)
    elif arr.dtype.kind == "f":
        if arr.dtype not in (np.float32, np.float64):
            arr = arr.astype(np.float64)
    else:
        raise TypeError(f"{name} must be a real numeric array, got dtype {arr.dtype}")
    if arr.size == 0:
        raise ValueError(f"{name} is empty")
    return arr


def _as_labels(labels: np.ndarray, shape: tuple[int, ...], name: str = "labels") -> np.ndarray:
    arr = np.asarray(labels)
    if arr.shape != shape:
        raise ValueError(f"{name} has shape {arr.shape} but the scores have shape {shape}")
    if arr.dtype == np.bool_:
        return arr
    if arr.dtype.kind not in "iuf":
        raise TypeError(f"{name} must be bool or 0/1 numbers, got dtype {arr.dtype}")
    if not np.all((arr == 0) | (arr == 1)):
        raise ValueError(f"{name} must contain only 0 and 1 (or be bool)")
    return arr != 0


def _check_no_nan(sorted_arrays: tuple[np.ndarray, ...], name: str = "scores") -> None:
    # NaN sorts last, so one look at each sorted array is enough.
    for arr in sorted_arrays:
        if arr.size and np.isnan(arr[-1]):
            raise ValueError(f"{name} contain NaN")


def _select(scores: np.ndarray, labels: np.ndarray, positive: bool) -> np.ndarray:
    """``scores[labels]`` (or ``scores[~labels]``) filled block by block.

    Same result as plain boolean indexing, without the input-sized ``~labels`` temporary.
    C-contiguous inputs are not copied.
    """
    flat_s, flat_l = scores.reshape(-1), labels.reshape(-1)
    n_true = int(np.count_nonzero(flat_l))
    out = np.empty(n_true if positive else flat_s.size - n_true, dtype=flat_s.dtype)
    filled = 0
    for start in range(0, flat_s.size, _SELECT_BLOCK):
        block_l = flat_l[start : start + _SELECT_BLOCK]
        picked = flat_s[start : start + _SELECT_BLOCK][block_l if positive else ~block_l]
        out[filled : filled + picked.size] = picked
        filled += picked.size
    return out


def _sorted_selection(
    scores: np.ndarray, labels: np.ndarray, positive: bool, name: str = "scores"
) -> np.ndarray:
    out = _select(scores, labels, positive)
    out.sort()
    _check_no_nan((out,), name)
    return out


def _split_sorted(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Copies of the positive and the negative scores, each sorted ascending."""
    return _sorted_selection(scores, labels, True), _sorted_selection(scores, labels, False)


# ---------------------------------------------------------------------------------------------
# The sweep over distinct thresholds


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


# ---------------------------------------------------------------------------------------------
# Fixed thresholds (the reference code's F1-max)


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


# ---------------------------------------------------------------------------------------------
# AUPRO


def _region_structure() -> np.ndarray:
    # 8-connectivity inside each image, nothing across the stack axis.
    structure = np.zeros((3, 3, 3), dtype=bool)
    structure[1] = True
    return structure


def _label_components() -> Callable[..., tuple[np.ndarray, int]]:
    try:
        from scipy import ndimage
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "AUPRO needs scipy (scipy.ndimage.label for the connected components of the "
            "ground-truth masks); install scipy"
        ) from exc
    return ndimage.label


def _positives_with_regions(
    maps: np.ndarray, masks: np.ndarray
) -> tuple[np.ndarray, np.ndarray, int]:
    """Sorted anomalous scores and, per position, the PRO weight of all scores from there up.

    Returns ``(pos, pro_from, n_regions)`` where ``pos`` is sorted ascending and
    ``pro_from[i] = sum_{j >= i} 1 / (n_regions * size(region(j)))``, length ``pos.size + 1``
    (so PRO at a threshold with ``b`` positives below it is ``pro_from[b]``).
    """
    label = _label_components()
    structure = _region_structure()
    n_img, h, w = maps.shape
    batch = max(1, _LABEL_BATCH_PIXELS // max(1, h * w))
    scores_parts: list[np.ndarray] = []
    sizes_parts: list[np.ndarray] = []
    n_regions = 0
    for b0 in range(0, n_img, batch):
        m = masks[b0 : b0 + batch]
        if not m.any():
            continue
        lab, n = label(m, structure=structure)
        sizes = np.bincount(lab.reshape(-1), minlength=n + 1)
        scores_parts.append(maps[b0 : b0 + batch][m])
        sizes_parts.append(sizes[lab[m]])
        n_regions += int(n)
    if not scores_parts:
        return np.zeros(0, dtype=maps.dtype), np.zeros(1), 0
    raw = np.concatenate(scores_parts)
    del scores_parts
    order = np.argsort(raw)
    pos = raw[order]
    del raw
    inv = 1.0 / np.concatenate(sizes_parts)[order].astype(np.float64)
    del order, sizes_parts
    pro_from = np.zeros(pos.size + 1)
    np.cumsum(inv[::-1], out=pro_from[-2::-1])  # suffix sums: accurate where PRO is small
    pro_from /= n_regions
    return pos, pro_from, n_regions


def _aupro_from_sorted(
    pos: np.ndarray, pro_from: np.ndarray, neg: np.ndarray, fpr_limit: float
) -> float:
    n_neg = int(neg.size)
    if pos.size == 0 or n_neg == 0:
        return float("nan")
    area = 0.0
    x_prev, y_prev = 0.0, 0.0
    for _thr, pos_below, neg_below in _sweep(pos, neg):
        x = np.concatenate(([x_prev], (n_neg - neg_below) / n_neg))
        y = np.concatenate(([y_prev], pro_from[pos_below]))
        over = np.flatnonzero(x[1:] > fpr_limit)
        if over.size:
            j = int(over[0])  # x[j] <= fpr_limit < x[j + 1]
            area += float(np.sum((x[1 : j + 1] - x[:j]) * (y[1 : j + 1] + y[:j]))) / 2.0
            y_lim = y[j] + (fpr_limit - x[j]) * (y[j + 1] - y[j]) / (x[j + 1] - x[j])
            area += (fpr_limit - x[j]) * (y[j] + y_lim) / 2.0
            return area / fpr_limit
        area += float(np.sum((x[1:] - x[:-1]) * (y[1:] + y[:-1]))) / 2.0
        x_prev, y_prev = float(x[-1]), float(y[-1])
    return area / fpr_limit  # fpr_limit == 1: the curve ended exactly at FPR 1


def _as_image_stack(maps: np.ndarray, masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    maps_a = _as_scores(maps, "maps")
    if maps_a.ndim < 2:
        raise ValueError(f"maps must be (H, W) or (N, H, W), got shape {maps_a.shape}")
    masks_a = _as_labels(masks, maps_a.shape, "masks")
    h, w = maps_a.shape[-2:]
    return maps_a.reshape(-1, h, w), masks_a.reshape(-1, h, w)


def _check_fpr_limit(fpr_limit: float) -> float:
    limit = float(fpr_limit)
    if not 0.0 < limit <= 1.0:
        raise ValueError(f"fpr_limit must be in (0, 1], got {fpr_limit}")
    return limit


# ---------------------------------------------------------------------------------------------
# Public API


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


def aupro(maps: np.ndarray, masks: np.ndarray, fpr_limit: float = 0.3) -> float:
    """Area under the per-region-overlap curve up to ``fpr_limit``, divided by ``fpr_limit``.

    ``maps`` and ``masks`` are ``(H, W)`` or ``(..., H, W)``: the last two axes are an image,
    regions are 8-connected components per image. nan when there is no anomalous or no normal
    pixel. Needs scipy.
    """
    limit = _check_fpr_limit(fpr_limit)
    maps3, masks3 = _as_image_stack(maps, masks)
    pos, pro_from, _ = _positives_with_regions(maps3, masks3)
    _check_no_nan((pos,), "maps")
    neg = _sorted_selection(maps3, masks3, False, "maps")
    return _aupro_from_sorted(pos, pro_from, neg, limit)


def _pixel_metrics(
    maps: np.ndarray, masks: np.ndarray, limit: float, thresholds: np.ndarray
) -> tuple[RankingMetrics, float, float, int]:
    """Exact pixel metrics, AUPRO, the fixed-threshold F1-max and the region count, from one sort."""
    pos, pro_from, n_regions = _positives_with_regions(maps, masks)
    _check_no_nan((pos,), "maps")
    neg = _sorted_selection(maps, masks, False, "maps")
    pixel = _ranking_from_sorted(pos, neg)
    pixel_aupro = _aupro_from_sorted(pos, pro_from, neg, limit)
    del pro_from
    return pixel, pixel_aupro, _f1_at_thresholds_from_sorted(pos, neg, thresholds, normalize=True), n_regions


def category_metrics(
    maps: np.ndarray,
    masks: np.ndarray,
    image_scores: np.ndarray | None = None,
    image_labels: np.ndarray | None = None,
    *,
    fpr_limit: float = 0.3,
    thresholds: np.ndarray | None = None,
    pixel_images: np.ndarray | None = None,
    normalize_image_scores: bool | None = None,
) -> CategoryMetrics:
    """The paper's metric set for one category's stack of ``(N, H, W)`` maps and masks.

    Pixel AP, F1-max, AUROC and AUPRO (to ``fpr_limit``) are exact and share one sort of the
    pixels; ``pixel_f1_max_100`` is :func:`f1_max_at_thresholds` with ``thresholds`` (default
    the reference code's 100) on the stack min-max normalised as a whole. Image scores default
    to each map's maximum (the reference code's image score when ``maps`` is its normalised
    stack), image labels to ``mask.any()``. ``image_f1_max_100`` is the 100-threshold F1-max of
    the image scores: as they are when ``normalize_image_scores`` is False (the reference scans
    its image scores, maxima of the normalised stack, without normalising them again), min-max
    normalised first when True; the default (None) is False for the default image scores and
    True for given ones. ``pixel_images`` (bool, one per map; default all) chooses the images
    whose pixels enter the pixel metrics (e.g. leave out defective images that have no mask);
    every image enters the image metrics. Needs scipy (AUPRO).
    """
    limit = _check_fpr_limit(fpr_limit)
    thr = _as_thresholds(thresholds)
    maps_a = _as_scores(maps, "maps")
    if maps_a.ndim != 3:
        raise ValueError(f"maps must be (N, H, W), got shape {maps_a.shape}")
    masks_a = _as_labels(masks, maps_a.shape, "masks")
    n_img = maps_a.shape[0]

    if image_scores is None:
        img_scores = maps_a.reshape(n_img, -1).max(axis=1)
    else:
        img_scores = _as_scores(image_scores, "image_scores").reshape(-1)
        if img_scores.size != n_img:
            raise ValueError(f"image_scores has {img_scores.size} values for {n_img} maps")
    if image_labels is None:
        img_labels = masks_a.reshape(n_img, -1).any(axis=1)
    else:
        img_labels = _as_labels(np.asarray(image_labels).reshape(-1), (n_img,), "image_labels")
    img_pos, img_neg = _split_sorted(img_scores, img_labels)
    image = _ranking_from_sorted(img_pos, img_neg)
    normalize = image_scores is not None if normalize_image_scores is None else normalize_image_scores
    image_f1_100 = _f1_at_thresholds_from_sorted(img_pos, img_neg, thr, normalize=normalize)

    n_excluded = 0
    if pixel_images is not None:
        chosen = _as_labels(np.asarray(pixel_images).reshape(-1), (n_img,), "pixel_images")
        n_excluded = int(n_img - np.count_nonzero(chosen))
        if n_excluded:
            maps_a, masks_a = maps_a[chosen], masks_a[chosen]

    if maps_a.shape[0] == 0:  # every image left out: the pixel metrics are undefined
        nan = float("nan")
        pixel = RankingMetrics(nan, nan, nan, nan, 0, 0)
        pixel_aupro = pixel_f1_100 = nan
        n_regions = n_pixels = n_anomalous_pixels = 0
    else:
        pixel, pixel_aupro, pixel_f1_100, n_regions = _pixel_metrics(maps_a, masks_a, limit, thr)
        n_pixels, n_anomalous_pixels = int(maps_a.size), pixel.n_positive

    return CategoryMetrics(
        pixel_ap=pixel.average_precision,
        pixel_f1_max=pixel.f1_max,
        pixel_auroc=pixel.auroc,
        pixel_aupro=pixel_aupro,
        image_auroc=image.auroc,
        image_ap=image.average_precision,
        image_f1_max=image.f1_max,
        pixel_f1_max_100=pixel_f1_100,
        pixel_f1_threshold=pixel.f1_threshold,
        image_f1_threshold=image.f1_threshold,
        fpr_limit=limit,
        n_images=n_img,
        n_anomalous_images=int(img_labels.sum()),
        n_pixels=n_pixels,
        n_anomalous_pixels=n_anomalous_pixels,
        n_regions=n_regions,
        image_f1_max_100=image_f1_100,
        n_pixel_excluded=n_excluded,
    )
