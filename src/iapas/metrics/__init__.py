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

The code, by concept: :mod:`~iapas.metrics.sorting` (input checks; the scores split by label and
sorted), :mod:`~iapas.metrics.ranking` (the sweep; AP, F1-max, AUROC),
:mod:`~iapas.metrics.thresholds` (the fixed-threshold F1-max), :mod:`~iapas.metrics.pro`
(AUPRO) and :mod:`~iapas.metrics.category` (the per-category set). Import the names below
from :mod:`iapas.metrics`.
"""

from __future__ import annotations

from iapas.metrics.category import CategoryMetrics, category_metrics
from iapas.metrics.pro import aupro
from iapas.metrics.ranking import RankingMetrics, auroc, average_precision, f1_max, ranking_metrics
from iapas.metrics.sorting import _split_sorted  # noqa: F401 - the tests check the split by label
from iapas.metrics.thresholds import PAPER_N_THRESHOLDS, f1_max_at_thresholds, paper_thresholds


__all__ = [
    "CategoryMetrics",
    "PAPER_N_THRESHOLDS",
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
