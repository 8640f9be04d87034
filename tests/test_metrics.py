"""Metrics: hand-computed values, degenerate cases, and randomized agreement with scikit-learn.

scikit-learn is a test dependency only; it is the reference for AP, ROC AUC and the
precision-recall curve (F1-max). AUPRO and the fixed-threshold F1 are checked against slow,
obviously-correct loops written here.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import ndimage

import iapas.metrics as metrics_mod
import iapas.metrics.ranking as metrics_ranking
import iapas.metrics.sorting as metrics_sorting
from iapas.metrics import (
    CategoryMetrics,
    aupro,
    auroc,
    average_precision,
    category_metrics,
    f1_max,
    f1_max_at_thresholds,
    paper_thresholds,
    ranking_metrics,
)

sk = pytest.importorskip("sklearn.metrics")

TOL = 1e-6


# --------------------------------------------------------------------------------------------
# References


def sk_f1_max(labels: np.ndarray, scores: np.ndarray) -> float:
    precision, recall, _ = sk.precision_recall_curve(labels.ravel(), scores.ravel())
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(denom), where=denom > 0)
    return float(f1.max())


def brute_f1_at(scores: np.ndarray, labels: np.ndarray, thresholds: np.ndarray) -> float:
    s = scores.astype(np.float64).ravel()
    y = labels.astype(bool).ravel()
    lo, hi = s.min(), s.max()
    s = (s - lo) / (hi - lo) if hi > lo else np.zeros_like(s)
    best = 0.0
    for t in thresholds:
        pred = s >= t
        tp = int((pred & y).sum())
        best = max(best, 2 * tp / (pred.sum() + y.sum()))
    return best


def brute_aupro(maps: np.ndarray, masks: np.ndarray, limit: float) -> float:
    """Per-threshold loop, regions labelled image by image: slow and obviously right."""
    masks = masks.astype(bool)
    regions = []
    for m in masks:
        lab, n = ndimage.label(m, structure=np.ones((3, 3)))
        regions.append([(lab == k) for k in range(1, n + 1)])
    n_neg = (~masks).sum()
    xs, ys = [0.0], [0.0]
    for t in np.unique(maps)[::-1]:
        pred = maps >= t
        xs.append((pred & ~masks).sum() / n_neg)
        overlaps = [(pred[i] & r).sum() / r.sum() for i in range(len(maps)) for r in regions[i]]
        ys.append(float(np.mean(overlaps)))
    area = 0.0
    for (x0, y0), (x1, y1) in zip(zip(xs, ys), zip(xs[1:], ys[1:])):
        if x1 <= limit:
            area += (x1 - x0) * (y0 + y1) / 2
        else:
            y_lim = y0 + (limit - x0) * (y1 - y0) / (x1 - x0)
            area += (limit - x0) * (y0 + y_lim) / 2
            break
    return area / limit


def random_case(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Scores with plenty of ties (quantised) or continuous, and labels of random prevalence."""
    levels = int(rng.choice([1, 2, 3, 5, 20, 1000]))
    scores = (rng.integers(0, levels, n) / max(levels - 1, 1)).astype(np.float32)
    if rng.random() < 0.3:
        scores = rng.random(n).astype(np.float32)
    labels = rng.random(n) < rng.choice([0.02, 0.3, 0.7])
    return scores, labels


# --------------------------------------------------------------------------------------------
# Hand-computed values

S4 = np.array([0.1, 0.4, 0.35, 0.8])
Y4 = np.array([0, 0, 1, 1])


def test_hand_example() -> None:
    # Thresholds 0.8 (P=1, R=.5), 0.4 (P=.5, R=.5), 0.35 (P=2/3, R=1), 0.1 (P=.5, R=1).
    # AP = .5 * 1 + .5 * 2/3 = 5/6; F1 at 0.35 = 2*2 / (2+1+2) = 0.8; AUROC: 3 of 4 pairs.
    r = ranking_metrics(S4, Y4)
    assert r.average_precision == pytest.approx(5 / 6, abs=1e-12)
    assert r.f1_max == pytest.approx(0.8, abs=1e-12)
    assert r.f1_threshold == pytest.approx(0.35)
    assert r.auroc == pytest.approx(0.75, abs=1e-12)
    assert (r.n_positive, r.n_negative) == (2, 2)
    assert average_precision(S4, Y4) == pytest.approx(0.8333333, abs=1e-7)
    assert f1_max(S4, Y4) == pytest.approx(0.8, abs=1e-12)
    assert auroc(S4, Y4) == pytest.approx(0.75, abs=1e-12)


def test_ties_form_one_threshold() -> None:
    # The positive ties with a negative at 0.5: one threshold, P = 1/2 at R = 1/2, then
    # 0.2 adds the second positive: P = 2/3 at R = 1. AP = .5*.5 + .5*2/3 = 7/12.
    s = np.array([0.5, 0.5, 0.2, 0.1])
    y = np.array([1, 0, 1, 0])
    r = ranking_metrics(s, y)
    assert r.average_precision == pytest.approx(7 / 12, abs=1e-12)
    # F1: at 0.5 -> 2/(1+1+2) = .5; at 0.2 -> 4/(2+1+2) = .8; at 0.1 -> 4/(2+2+2)
    assert r.f1_max == pytest.approx(0.8, abs=1e-12)
    assert r.f1_threshold == pytest.approx(0.2)
    # AUROC: pairs (.5,.5) tie 1/2, (.5,.1) 1, (.2,.5) 0, (.2,.1) 1 -> 2.5 / 4
    assert r.auroc == pytest.approx(0.625, abs=1e-12)


def test_f1_ties_resolved_to_the_highest_threshold() -> None:
    # P = 3. F1 = 2TP / (TP + FP + P): at 0.9 2/4; at 0.5 4/6; at 0.3 4/7; at 0.2 4/8;
    # at 0.1 6/9. The maximum 2/3 is reached at 0.5 and at 0.1: the highest one is reported.
    s = np.array([0.9, 0.5, 0.5, 0.3, 0.2, 0.1])
    y = np.array([1, 1, 0, 0, 0, 1])
    r = ranking_metrics(s, y)
    assert r.f1_max == pytest.approx(2 / 3, abs=1e-12)
    assert r.f1_threshold == 0.5


def test_fixed_thresholds_hand_values() -> None:
    # Raw thresholds: >= 0.35 predicts {0.4, 0.35, 0.8} -> F1 0.8 (>= matters: 0.35 is a score).
    assert f1_max_at_thresholds(S4, Y4, [0.35], normalize=False) == pytest.approx(0.8)
    # >= 0.36 predicts {0.4, 0.8}: TP 1, FP 1 -> 2/(1+1+2).
    assert f1_max_at_thresholds(S4, Y4, [0.36], normalize=False) == pytest.approx(0.5)
    # >= 0.5 predicts {0.8}: 2/(1+0+2).
    assert f1_max_at_thresholds(S4, Y4, [0.5], normalize=False) == pytest.approx(2 / 3)
    # Normalised: 0 predicts everything (4/6), 1 predicts only the max (2/3).
    assert f1_max_at_thresholds(S4, Y4, [0.0]) == pytest.approx(2 / 3)
    assert f1_max_at_thresholds(S4, Y4, [1.0]) == pytest.approx(2 / 3)
    # (0.35-0.1)/0.7 = 0.357..; the grid point 35/99 = 0.3535 lies just under it.
    assert f1_max_at_thresholds(S4, Y4) == pytest.approx(0.8)
    # A threshold above everything predicts nothing: F1 0.
    assert f1_max_at_thresholds(S4, Y4, [2.0], normalize=False) == 0.0
    # Normalisation is over the whole input, so an affine rescale does not change the result.
    assert f1_max_at_thresholds(S4 * 50 + 3, Y4) == pytest.approx(f1_max_at_thresholds(S4, Y4))


def test_paper_thresholds() -> None:
    t = paper_thresholds()
    assert t.shape == (100,) and t[0] == 0.0 and t[-1] == 1.0
    t[0] = 5.0  # a fresh array each call: no shared mutable state
    assert paper_thresholds()[0] == 0.0


def test_aupro_hand_example() -> None:
    # One 1x6 image; regions {1, 2} and {5}; normal pixels 0, 3, 4.
    # Curve: (0,0) (0,.25) (1/3,.25) (1/3,.75) (1/3,1) (2/3,1) (1,1)
    maps = np.array([[[0.1, 0.9, 0.5, 0.7, 0.2, 0.6]]])
    masks = np.array([[[0, 1, 1, 0, 0, 1]]], dtype=bool)
    assert aupro(maps, masks, fpr_limit=1.0) == pytest.approx(0.75, abs=1e-12)
    assert aupro(maps, masks, fpr_limit=0.5) == pytest.approx((1 / 12 + 1 / 6) / 0.5, abs=1e-12)
    assert aupro(maps, masks, fpr_limit=0.3) == pytest.approx(0.25, abs=1e-12)
    assert aupro(maps[0], masks[0]) == pytest.approx(0.25, abs=1e-12)  # a single (H, W) image


def test_aupro_interpolates_a_tied_segment() -> None:
    # The region pixel ties with a normal pixel: the curve goes straight from (0,0) to (.5, 1);
    # at FPR .3 PRO is .6, area .3 * .6 / 2 = .09, normalised .3.
    maps = np.array([[0.5, 0.5, 0.0]])
    masks = np.array([[1, 0, 0]], dtype=bool)
    assert aupro(maps, masks, fpr_limit=0.3) == pytest.approx(0.3, abs=1e-12)


def test_aupro_regions_are_8_connected_and_per_image() -> None:
    # Diagonal neighbours form one region; the same pixels in two images form two regions.
    mask = np.array([[1, 0], [0, 1]], dtype=bool)
    maps = np.array([[0.9, 0.0], [0.1, 0.2]])
    # One region of 2 pixels: at 0.9 PRO .5 FPR 0; at 0.2 PRO 1 FPR 0; then FPR rises.
    assert aupro(maps, mask, fpr_limit=0.3) == pytest.approx(1.0, abs=1e-12)
    stack_maps = np.stack([maps, np.array([[0.0, 0.0], [0.0, 0.8]])])
    stack_masks = np.stack([mask, mask])
    r = category_metrics(stack_maps, stack_masks)
    assert r.n_regions == 2
    assert r.pixel_aupro == pytest.approx(brute_aupro(stack_maps, stack_masks, 0.3), abs=1e-12)


# --------------------------------------------------------------------------------------------
# Degenerate cases


def test_no_positive_is_nan() -> None:
    s = np.array([0.3, 0.1, 0.7])
    y = np.zeros(3, dtype=bool)
    r = ranking_metrics(s, y)
    assert math.isnan(r.average_precision) and math.isnan(r.f1_max) and math.isnan(r.auroc)
    assert math.isnan(r.f1_threshold)
    assert math.isnan(f1_max_at_thresholds(s, y))
    assert math.isnan(aupro(s[None], y[None]))


def test_all_positive() -> None:
    s = np.array([0.3, 0.1, 0.7, 0.7])
    y = np.ones(4, dtype=bool)
    r = ranking_metrics(s, y)
    assert r.average_precision == 1.0
    assert r.f1_max == 1.0 and r.f1_threshold == pytest.approx(0.1)
    assert math.isnan(r.auroc)
    assert sk.average_precision_score(y, s) == pytest.approx(1.0)
    assert f1_max_at_thresholds(s, y) == 1.0
    assert math.isnan(aupro(s[None], y[None]))


def test_constant_scores_with_both_classes() -> None:
    s = np.full(10, 0.25, dtype=np.float32)
    y = np.arange(10) < 3  # P = 3, N = 7
    r = ranking_metrics(s, y)
    assert r.average_precision == pytest.approx(0.3, abs=1e-12)
    assert r.f1_max == pytest.approx(6 / 13, abs=1e-12)
    assert r.auroc == 0.5
    assert r.average_precision == pytest.approx(sk.average_precision_score(y, s), abs=TOL)
    # A constant input normalises to zeros: threshold 0 predicts everything.
    assert f1_max_at_thresholds(s, y) == pytest.approx(6 / 13, abs=1e-12)


def test_bad_inputs_raise() -> None:
    with pytest.raises(ValueError, match="empty"):
        average_precision(np.array([]), np.array([], dtype=bool))
    with pytest.raises(ValueError, match="NaN"):
        average_precision(np.array([0.1, np.nan]), np.array([1, 0]))
    with pytest.raises(ValueError, match="only 0 and 1"):
        average_precision(np.array([0.1, 0.2]), np.array([2, 0]))
    with pytest.raises(ValueError, match="shape"):
        average_precision(np.zeros((2, 3)), np.zeros((3, 2), dtype=bool))
    with pytest.raises(TypeError):
        average_precision(np.array(["a", "b"]), np.array([1, 0]))
    with pytest.raises(ValueError, match="fpr_limit"):
        aupro(np.zeros((2, 2)), np.eye(2, dtype=bool), fpr_limit=0.0)
    with pytest.raises(ValueError, match="infinite"):
        f1_max_at_thresholds(np.array([0.0, np.inf]), np.array([1, 0]))
    with pytest.raises(ValueError, match="thresholds"):
        f1_max_at_thresholds(S4, Y4, [])
    with pytest.raises(ValueError, match=r"\(N, H, W\)"):
        category_metrics(np.zeros((4, 4)), np.zeros((4, 4), dtype=bool))
    with pytest.raises(ValueError, match="image_scores"):
        category_metrics(np.zeros((2, 3, 3)), np.zeros((2, 3, 3), bool), image_scores=[1.0])


def test_infinite_scores_are_ordinary_thresholds() -> None:
    s = np.array([np.inf, 0.5, -np.inf, 0.2])
    y = np.array([1, 0, 1, 0])
    assert average_precision(s, y) == pytest.approx(sk.average_precision_score(y, [3, 2, 0, 1]))


# --------------------------------------------------------------------------------------------
# Input types and shapes


def test_label_and_score_dtypes_agree() -> None:
    rng = np.random.default_rng(3)
    s = rng.integers(0, 50, (6, 7, 8))
    y = rng.random((6, 7, 8)) < 0.3
    want = ranking_metrics(s.astype(np.float64).ravel(), y.ravel())
    for scores in (s, s.astype(np.float16), s.astype(np.float32), s.astype(np.uint8)):
        for labels in (y, y.astype(np.uint8), y.astype(np.int64), y.astype(np.float32)):
            got = ranking_metrics(scores, labels)
            assert got.average_precision == pytest.approx(want.average_precision, abs=1e-12)
            assert got.f1_max == pytest.approx(want.f1_max, abs=1e-12)
            assert got.auroc == pytest.approx(want.auroc, abs=1e-12)


def test_float64_scores_keep_their_precision() -> None:
    # Distinct in float64, equal in float32: must stay two thresholds.
    s = np.array([1.0, 1.0 + 1e-12, 0.0])
    y = np.array([0, 1, 0])
    assert average_precision(s, y) == 1.0
    assert auroc(s, y) == 1.0


# --------------------------------------------------------------------------------------------
# Randomized agreement with scikit-learn (small windows force the windowed sweep)


@pytest.mark.parametrize("chunk", [1, 2, 7, 1 << 20])
def test_random_against_sklearn(monkeypatch: pytest.MonkeyPatch, chunk: int) -> None:
    monkeypatch.setattr(metrics_ranking, "_SWEEP_CHUNK", chunk)
    rng = np.random.default_rng(chunk)
    checked = 0
    for _ in range(60):
        scores, labels = random_case(rng, int(rng.integers(1, 300)))
        r = ranking_metrics(scores, labels)
        if labels.any():
            want_ap = sk.average_precision_score(labels, scores)
            assert r.average_precision == pytest.approx(want_ap, abs=TOL)
            assert r.f1_max == pytest.approx(sk_f1_max(labels, scores), abs=TOL)
            checked += 1
        if labels.any() and not labels.all():
            assert r.auroc == pytest.approx(sk.roc_auc_score(labels, scores), abs=TOL)
    assert checked > 40


def test_large_stack_against_sklearn(monkeypatch: pytest.MonkeyPatch) -> None:
    # Several windows of realistic size, one value (0) with a huge tie straddling them.
    monkeypatch.setattr(metrics_ranking, "_SWEEP_CHUNK", 4096)
    rng = np.random.default_rng(11)
    maps = rng.random((20, 64, 64)).astype(np.float32) ** 3
    maps[maps < 0.2] = 0.0
    maps = np.round(maps * 5000) / 5000
    masks = rng.random((20, 64, 64)) < maps * 0.6
    r = ranking_metrics(maps, masks)
    assert r.average_precision == pytest.approx(
        sk.average_precision_score(masks.ravel(), maps.ravel()), abs=TOL
    )
    assert r.f1_max == pytest.approx(sk_f1_max(masks, maps), abs=TOL)
    assert r.auroc == pytest.approx(sk.roc_auc_score(masks.ravel(), maps.ravel()), abs=TOL)


def test_fixed_thresholds_random_against_loop() -> None:
    rng = np.random.default_rng(5)
    for _ in range(20):
        scores, labels = random_case(rng, int(rng.integers(2, 200)))
        scores = scores * 3 - 1  # not in [0, 1]: normalisation matters
        if not labels.any():
            continue
        want = brute_f1_at(scores, labels, paper_thresholds())
        got = f1_max_at_thresholds(scores, labels)
        assert got == pytest.approx(want, abs=1e-12)
        assert got <= f1_max(scores, labels) + 1e-12


@pytest.mark.parametrize("chunk", [3, 1 << 20])
def test_aupro_random_against_loop(monkeypatch: pytest.MonkeyPatch, chunk: int) -> None:
    monkeypatch.setattr(metrics_ranking, "_SWEEP_CHUNK", chunk)
    rng = np.random.default_rng(chunk + 100)
    for _ in range(8):
        maps = np.round(rng.random((3, 9, 11)) * int(rng.choice([3, 50, 10**6]))).astype(
            np.float32
        )
        masks = ndimage.binary_dilation(rng.random((3, 9, 11)) < 0.05, iterations=1)
        masks[0] = False  # one normal image
        if not masks.any():
            continue
        for limit in (0.05, 0.3, 1.0):
            want = brute_aupro(maps, masks, limit)
            assert aupro(maps, masks, fpr_limit=limit) == pytest.approx(want, abs=1e-9)


# --------------------------------------------------------------------------------------------
# category_metrics


def _stack(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    masks = np.zeros((6, 16, 16), dtype=bool)
    masks[1, 2:6, 3:7] = True
    masks[2, 10:14, 10:12] = True
    masks[2, 0:2, 0:2] = True
    masks[4, 5:12, 5:9] = True
    maps = (rng.random(masks.shape) * 0.5 + masks * rng.random(masks.shape) * 0.6).astype(
        np.float32
    )
    return maps, masks


def test_category_metrics_matches_the_single_metrics() -> None:
    rng = np.random.default_rng(8)
    maps, masks = _stack(rng)
    r = category_metrics(maps, masks)
    assert isinstance(r, CategoryMetrics)
    assert r.pixel_ap == pytest.approx(sk.average_precision_score(masks.ravel(), maps.ravel()))
    assert r.pixel_f1_max == pytest.approx(sk_f1_max(masks, maps), abs=TOL)
    assert r.pixel_auroc == pytest.approx(sk.roc_auc_score(masks.ravel(), maps.ravel()))
    assert r.pixel_aupro == pytest.approx(brute_aupro(maps, masks, 0.3), abs=1e-9)
    assert r.pixel_f1_max_100 == pytest.approx(brute_f1_at(maps, masks, paper_thresholds()))
    img_scores = maps.reshape(6, -1).max(axis=1)
    img_labels = np.array([0, 1, 1, 0, 1, 0], dtype=bool)
    assert r.image_auroc == pytest.approx(sk.roc_auc_score(img_labels, img_scores))
    assert r.image_ap == pytest.approx(sk.average_precision_score(img_labels, img_scores))
    assert r.image_f1_max == pytest.approx(sk_f1_max(img_labels, img_scores), abs=TOL)
    assert (r.n_images, r.n_anomalous_images, r.n_regions) == (6, 3, 4)
    assert (r.n_pixels, r.n_anomalous_pixels) == (6 * 256, int(masks.sum()))
    d = r.to_dict()
    assert d["pixel_ap"] == r.pixel_ap and d["fpr_limit"] == 0.3 and len(d) == 18


def test_category_metrics_explicit_image_scores_and_labels() -> None:
    rng = np.random.default_rng(9)
    maps, masks = _stack(rng)
    scores = np.array([0.1, 0.9, 0.8, 0.2, 0.3, 0.85])
    labels = np.array([0, 1, 1, 0, 1, 0])
    r = category_metrics(maps, masks, image_scores=scores, image_labels=labels)
    assert r.image_auroc == pytest.approx(sk.roc_auc_score(labels, scores))
    assert r.image_ap == pytest.approx(sk.average_precision_score(labels, scores))
    assert r.n_anomalous_images == 3


def test_category_metrics_all_normal_and_all_anomalous() -> None:
    maps = np.random.default_rng(10).random((3, 5, 5)).astype(np.float32)
    normal = category_metrics(maps, np.zeros(maps.shape, dtype=bool))
    for v in (normal.pixel_ap, normal.pixel_f1_max, normal.pixel_auroc, normal.pixel_aupro,
              normal.pixel_f1_max_100, normal.image_ap, normal.image_auroc):
        assert math.isnan(v)
    assert normal.n_regions == 0 and normal.n_anomalous_pixels == 0
    anomalous = category_metrics(maps, np.ones(maps.shape, dtype=bool))
    assert anomalous.pixel_ap == 1.0 and anomalous.pixel_f1_max == 1.0
    assert anomalous.image_ap == 1.0 and anomalous.image_f1_max == 1.0
    assert math.isnan(anomalous.pixel_auroc) and math.isnan(anomalous.pixel_aupro)
    assert anomalous.n_regions == 3


def test_category_metrics_constant_maps() -> None:
    maps = np.zeros((4, 6, 6), dtype=np.float32)  # e.g. no box kept anywhere
    masks = np.zeros(maps.shape, dtype=bool)
    masks[1, 1:3, 1:3] = True  # P = 4 of 144 pixels
    r = category_metrics(maps, masks)
    assert r.pixel_ap == pytest.approx(4 / 144)
    assert r.pixel_f1_max == pytest.approx(8 / (8 + 140))
    assert r.pixel_f1_max_100 == pytest.approx(8 / (8 + 140))
    assert r.pixel_auroc == 0.5 and r.image_auroc == 0.5
    # One threshold: straight line from (0,0) to (1,1); its area to .3 is .045 -> .15.
    assert r.pixel_aupro == pytest.approx(0.15, abs=1e-12)


def test_split_by_blocks_matches_boolean_indexing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(metrics_sorting, "_SELECT_BLOCK", 5)
    rng = np.random.default_rng(12)
    s = rng.random((4, 3, 7)).astype(np.float32)
    y = rng.random((4, 3, 7)) < 0.4
    pos, neg = metrics_mod._split_sorted(s, y)
    np.testing.assert_array_equal(pos, np.sort(s[y]))
    np.testing.assert_array_equal(neg, np.sort(s[~y]))
    # Non-contiguous views work too.
    pos_t, neg_t = metrics_mod._split_sorted(s.transpose(2, 0, 1), y.transpose(2, 0, 1))
    np.testing.assert_array_equal(pos_t, pos)
    np.testing.assert_array_equal(neg_t, neg)
    with pytest.raises(ValueError, match="maps contain NaN"):
        bad = s.copy()
        bad[0, 0, 0] = np.nan
        aupro(bad, np.zeros(bad.shape, dtype=bool) | (np.arange(7) == 3))
