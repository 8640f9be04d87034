"""``--protocol paper`` is the reference code's arithmetic to the last bit (issue 19, part 1).

The oracles are OpenCV (``cv2.resize``) and scikit-learn (``average_precision_score``), and the
reference's chain written out plainly here (its ``normalize``, ``process_specify_resolution``,
``calculate_max_f1``): never iapas's own code. Every comparison is ``==``.
"""

from __future__ import annotations

import numpy as np
import pytest

from iapas.evaluation.cvresize import resize_map_cubic
from iapas.metrics import average_precision, f1_max_at_thresholds

cv2 = pytest.importorskip("cv2")
sk = pytest.importorskip("sklearn.metrics")

# real map shapes (H, W): MTD's 103..632 x 222..403, MVTec AD's 700/900/1000, KSDD1's 500x1257,
# and corner cases (a single row or column, the evaluation size itself)
SHAPES = [(103, 222), (115, 349), (196, 403), (228, 247), (316, 335), (400, 286), (632, 362), (225, 222),
          (700, 700), (900, 900), (1000, 1000), (1024, 1024), (500, 1257), (1257, 500), (400, 400), (1, 5), (3, 2)]


def plateau_map(shape: tuple[int, int], rng: np.random.Generator, n: int = 4) -> np.ndarray:
    """A fused map as stage 2 makes them: a float64 sum of confidence-weighted rectangles and
    discs (float32 box scores), so the map is plateaus with exact ties."""
    h, w = shape
    out = np.zeros(shape, dtype=np.float64)
    yy, xx = np.mgrid[0:h, 0:w]
    for k in range(n):
        score = float(np.float32(rng.uniform(0.1, 0.6)))
        y0, x0 = int(rng.integers(0, h)), int(rng.integers(0, w))
        y1, x1 = min(h, y0 + 1 + int(rng.integers(0, max(1, h // 3)))), min(w, x0 + 1 + int(rng.integers(0, max(1, w // 3))))
        if k % 2:
            region = (yy - (y0 + y1) / 2) ** 2 / max(1, (y1 - y0)) ** 2 + (xx - (x0 + x1) / 2) ** 2 / max(1, (x1 - x0)) ** 2 < 0.25
        else:
            region = np.zeros(shape, dtype=bool)
            region[y0:y1, x0:x1] = True
        out[region] += score
    return out


@pytest.mark.parametrize("shape", SHAPES)
def test_cubic_resize_of_a_float64_map_is_bit_identical_to_opencv(shape: tuple[int, int]) -> None:
    rng = np.random.default_rng(shape[0] * 7919 + shape[1])
    for amap in (plateau_map(shape, rng), rng.random(shape)):
        ours = resize_map_cubic(amap, 400)
        assert ours.dtype == np.float64
        assert np.array_equal(ours, cv2.resize(amap, (400, 400), interpolation=cv2.INTER_CUBIC))


def test_average_precision_is_sklearns_float_on_ties_and_plateaus() -> None:
    rng = np.random.default_rng(19)
    for trial in range(60):
        n = int(rng.integers(2, 30000))
        scores = np.round(rng.random(n) * rng.choice([2, 9, 500, 1e9])) / 7.0  # few to no ties
        if trial % 3 == 0:
            scores = scores.astype(np.float32)
        labels = rng.random(n) < rng.uniform(0.01, 0.9)
        if not labels.any() or labels.all():
            continue
        assert average_precision(scores, labels) == sk.average_precision_score(labels, scores), trial


def reference_max_f1(gt: np.ndarray, pred: np.ndarray) -> float:
    """The reference's calculate_max_f1 (utils/function.py), as it is written."""
    best_f1 = 0
    for thres in np.linspace(0, 1, 100):
        pred_binary = (pred >= thres).astype(int)
        tp = (gt * pred_binary).sum()
        fp = pred_binary.sum() - tp
        fn = gt.sum() - tp
        precision = tp / (tp + fp) if (tp + fp) > 0 else 0
        recall = tp / (tp + fn) if (tp + fn) > 0 else 0
        f1 = (2 * precision * recall / (precision + recall)) if (precision + recall) > 0 else 0
        if f1 > best_f1:
            best_f1 = f1
    return float(best_f1)


def test_100_threshold_f1_max_is_the_reference_loop_exactly() -> None:
    rng = np.random.default_rng(5)
    for trial in range(40):
        n = int(rng.integers(5, 5000))
        pred = np.round(rng.random(n) * rng.choice([3, 50, 1e6])) / rng.choice([3, 50, 1e6])
        pred = (pred - pred.min()) / (pred.max() - pred.min()) if pred.max() > pred.min() else np.zeros(n)
        gt = (rng.random(n) < rng.uniform(0.05, 0.7)).astype(int)
        if not gt.any():
            continue
        assert f1_max_at_thresholds(pred, gt) == reference_max_f1(gt, pred), trial
