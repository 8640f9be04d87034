"""Checked inputs of the metrics, and the scores split by label into two sorted copies."""

from __future__ import annotations

import numpy as np

# Elements per block when splitting scores by label.
_SELECT_BLOCK = 1 << 22


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

