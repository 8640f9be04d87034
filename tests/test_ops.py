"""The method's arithmetic against hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest

from iapas.core.ops import apply_nms, clip_boxes, fuse_masks, iou_matrix, nms, normalized_areas, size_filter
from iapas.core.types import Detections


def dets(boxes, scores, phrases=None) -> Detections:
    return Detections(np.array(boxes, np.float32), np.array(scores, np.float32), tuple(phrases or ()))


def test_normalized_area_is_w_over_W_times_h_over_H():
    # 50x20 box on a 200x100 image: (50/200) * (20/100) = 0.05
    assert normalized_areas(np.array([[10, 10, 60, 30]]), 200, 100)[0] == pytest.approx(0.05)


def test_iou_by_hand():
    # two 10x10 boxes overlapping in a 5x10 strip: 50 / (100 + 100 - 50) = 1/3
    iou = iou_matrix(np.array([[0, 0, 10, 10]]), np.array([[5, 0, 15, 10]]))
    assert iou[0, 0] == pytest.approx(1 / 3)


def test_nms_keeps_highest_and_drops_overlap_above_half():
    boxes = [[0, 0, 10, 10], [1, 0, 11, 10], [5, 0, 15, 10], [50, 50, 60, 60]]
    keep = nms(np.array(boxes, np.float32), np.array([0.9, 0.95, 0.3, 0.5]), 0.5)
    # 1 has the highest score: it suppresses 0 (IoU 90/110 = 0.818) but not 2 (IoU 60/140 =
    # 0.43); 3 is far away. Kept in score order.
    assert keep.tolist() == [1, 3, 2]


def test_nms_is_class_agnostic_and_threshold_is_strict():
    # IoU exactly 0.5: 10x10 boxes sharing 2/3 of their width -> 66.67/133.33 = 0.5
    boxes = np.array([[0, 0, 30, 10], [10, 0, 40, 10]], np.float32)  # inter 200, union 400
    d = dets(boxes, [0.8, 0.7], ["scratch", "crack"])
    assert len(apply_nms(d, 0.5)) == 2  # not suppressed at IoU == threshold
    assert len(apply_nms(d, 0.49)) == 1  # different phrases still suppress each other


def test_size_filter_keeps_boxes_strictly_below_ratio_times_object():
    # image 100x100, object_size 0.5 -> limit 0.8 * 0.5 = 0.4 of the image
    d = dets(
        [[0, 0, 10, 10], [0, 0, 60, 60], [0, 0, 40, 100], [0, 0, 100, 100]],
        [0.5, 0.4, 0.3, 0.2],
        ["a", "b", "c", "d"],
    )
    # areas: 0.01 (keep), 0.36 (keep), 0.40 (== limit: drop), 1.0 (drop)
    kept, dropped = size_filter(d, 100, 100, object_size=0.5, ratio=0.8)
    assert kept.phrases == ("a", "b")
    assert dropped.phrases == ("c", "d")
    np.testing.assert_allclose(kept.scores, [0.5, 0.4])


def test_size_filter_with_fallback_object_size_one():
    d = dets([[0, 0, 90, 90], [0, 0, 89, 89]], [0.5, 0.6])
    kept, dropped = size_filter(d, 100, 100, object_size=1.0, ratio=0.8)  # limit 0.8
    assert len(kept) == 1 and kept.scores[0] == pytest.approx(0.6)  # 0.7921 < 0.8
    assert len(dropped) == 1  # 0.81


def test_fusion_is_confidence_weighted_sum():
    m1 = np.zeros((4, 5), bool)
    m1[0:2, 0:3] = True
    m2 = np.zeros((4, 5), bool)
    m2[1:3, 2:5] = True
    amap = fuse_masks(np.stack([m1, m2]), np.array([0.3, 0.5]), (4, 5))
    expected = np.array(
        [
            [0.3, 0.3, 0.3, 0.0, 0.0],
            [0.3, 0.3, 0.8, 0.5, 0.5],
            [0.0, 0.0, 0.5, 0.5, 0.5],
            [0.0, 0.0, 0.0, 0.0, 0.0],
        ],
        np.float32,
    )
    np.testing.assert_allclose(amap, expected, rtol=0, atol=1e-7)
    assert amap.dtype == np.float32
    assert amap.max() == pytest.approx(0.8)


def test_fusion_without_masks_is_all_zero():
    amap = fuse_masks(np.zeros((0, 3, 7), bool), np.zeros(0), (3, 7))
    assert amap.shape == (3, 7) and not amap.any()


def test_clip_boxes_clamps_to_image():
    out = clip_boxes(np.array([[-5, -1, 120, 40], [10, 20, 30, 200]]), 100, 50)
    np.testing.assert_array_equal(out, [[0, 0, 100, 40], [10, 20, 30, 50]])


def test_detections_validate_lengths_and_select():
    with pytest.raises(ValueError):
        Detections(np.zeros((2, 4)), np.zeros(3), ("a", "b"))
    d = dets([[0, 0, 1, 1], [0, 0, 2, 2], [0, 0, 3, 3]], [0.1, 0.2, 0.3], ["a", "b", "c"])
    assert d.select([2, 0]).phrases == ("c", "a")
    assert d.select(np.array([False, True, False])).phrases == ("b",)
    assert len(Detections.empty()) == 0
