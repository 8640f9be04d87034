"""The method's arithmetic on boxes and masks: NMS, the size filter and score fusion.

Pure numpy, no model code, so each rule of METHOD.md can be tested with hand-made numbers.
"""

from __future__ import annotations

import numpy as np

from iapas.core.types import Detections


# The paper's size threshold: a kept box is smaller than this fraction of the object's area.
DEFAULT_SIZE_THRESHOLD = 0.8


def clip_boxes(boxes: np.ndarray, width: int, height: int) -> np.ndarray:
    """Clamp ``(N, 4)`` xyxy boxes to the image ``[0, width] x [0, height]``."""
    out = np.asarray(boxes, dtype=np.float32).reshape(-1, 4).copy()
    out[:, [0, 2]] = out[:, [0, 2]].clip(0, width)
    out[:, [1, 3]] = out[:, [1, 3]].clip(0, height)
    return out


def box_areas(boxes: np.ndarray) -> np.ndarray:
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    return (b[:, 2] - b[:, 0]).clip(min=0) * (b[:, 3] - b[:, 1]).clip(min=0)


def normalized_areas(boxes: np.ndarray, width: int, height: int) -> np.ndarray:
    """Box area as a fraction of the image: ``(w / W) * (h / H)``."""
    return box_areas(boxes) / float(width * height)


def top_box(dets: Detections, width: int, height: int) -> tuple[int, float] | None:
    """Index and normalised area of the highest-scoring box (ties: the first): the object's size
    in stage 2, and each reference image's object size in stage 1. None without a box or when
    that box has no area."""
    if len(dets) == 0:
        return None
    top = int(np.argmax(dets.scores))
    area = float(normalized_areas(dets.boxes[top][None], width, height)[0])
    return (top, area) if area > 0 else None


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    x0 = np.maximum(a[:, None, 0], b[None, :, 0])
    y0 = np.maximum(a[:, None, 1], b[None, :, 1])
    x1 = np.minimum(a[:, None, 2], b[None, :, 2])
    y1 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = (x1 - x0).clip(min=0) * (y1 - y0).clip(min=0)
    union = box_areas(a)[:, None] + box_areas(b)[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float = 0.5) -> np.ndarray:
    """Class-agnostic greedy non-maximum suppression.

    Returns the indices of the boxes kept, highest score first (ties keep input order). A box is
    suppressed when its IoU with an already kept box is strictly greater than ``iou_threshold``.
    """
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    if scores.size == 0:
        return np.zeros((0,), dtype=np.int64)
    order = np.argsort(-scores, kind="stable")
    iou = iou_matrix(boxes, boxes)
    suppressed = np.zeros(scores.size, dtype=bool)
    keep: list[int] = []
    for i in order:
        if suppressed[i]:
            continue
        keep.append(int(i))
        suppressed |= iou[i] > iou_threshold
    return np.asarray(keep, dtype=np.int64)


def apply_nms(dets: Detections, iou_threshold: float = 0.5) -> Detections:
    return dets.select(nms(dets.boxes, dets.scores, iou_threshold))


def size_filter(
    dets: Detections, width: int, height: int, object_size: float, ratio: float = DEFAULT_SIZE_THRESHOLD
) -> tuple[Detections, Detections]:
    """Split detections into (kept, dropped) by METHOD.md stage 2 step 3.

    A box is kept only if its normalised area is strictly below ``ratio * object_size``.
    """
    areas = normalized_areas(dets.boxes, width, height)
    keep = areas < ratio * float(object_size)
    return dets.select(keep), dets.select(~keep)


def fuse_masks(masks: np.ndarray, scores: np.ndarray, shape: tuple[int, int], dtype: type = np.float32) -> np.ndarray:
    """Anomaly map ``sum_i s_i * m_i`` of ``shape`` (all zeros without masks), added box by box in
    ``dtype`` with the float32 scores. float64 is the reference code's fusion to the bit
    (``np.sum([m_i * s_i.item()], axis=0)``: float64, summed in box order)."""
    out = np.zeros(shape, dtype=dtype)
    masks = np.asarray(masks)
    for mask, score in zip(masks, np.asarray(scores, dtype=np.float32).reshape(-1)):
        out[mask.astype(bool)] += dtype(score)
    return out
