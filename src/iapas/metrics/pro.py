"""AUPRO: the per-region overlap of the ground-truth regions, integrated up to an FPR limit
(see :mod:`iapas.metrics`)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from iapas.metrics.ranking import _sweep
from iapas.metrics.sorting import _as_image_stack, _check_fpr_limit, _check_no_nan, _sorted_selection

# Pixels per batch when labelling connected components.
_LABEL_BATCH_PIXELS = 1 << 22


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

