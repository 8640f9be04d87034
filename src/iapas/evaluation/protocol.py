"""The paper's evaluation protocol as pure functions: resizing, normalisation, PR curves.

METHOD.md (Stage 2 step 5 and "Evaluation protocol of the paper"), in this order:

1. Stage 2 gives the raw anomaly map at the image's own resolution, ``sum_i s_i * m_i``; the
   image-level score is its maximum (taken here, before anything else touches the map).
2. The map is resized to 400x400 with bicubic interpolation (:func:`resize_map`), the
   ground-truth mask with nearest-neighbour interpolation (:func:`resize_mask`).
3. Per-image min-max normalisation (the reference code's, part of the paper's protocol; on by
   default, ``--no-image-norm`` turns it off): ``(m - min) / (max - min)`` with the RAW
   full-resolution map's ``(min, max)`` (:func:`normalize_image`); a constant map (e.g. all
   zeros: no box kept) becomes all zeros. Bicubic resizing is linear and keeps constants (its
   weights sum to 1), so normalising the resized map with the raw range equals resizing the
   normalised raw map up to float32 rounding (an ulp at the edges of a region, which can make or
   break exact ties between pixels: pixel AP moves by ~1e-5 on the tests' synthetic maps): the
   stored 400x400 maps stay raw and the option is applied when the metrics are computed,
   without segmenting again.
4. The maps of a category are min-max normalised over the category's whole stack
   (:func:`normalize_stack`), then the metrics are computed (image metrics from the scores of 1).

Resizing uses PIL: ``Image.fromarray(float32_map)`` (mode ``F``) ``.resize((S, S), BICUBIC)``.
The reference code resized with OpenCV/torch bicubic; PIL's bicubic is the same a = -0.5 cubic
kernel, but when *shrinking* PIL widens the kernel by the scale factor (antialiasing) where
``cv2.INTER_CUBIC`` samples without it, so maps larger than 400 px differ slightly at region
edges. Bicubic interpolation overshoots: a resized map can dip slightly below 0 and rise slightly
above its maximum next to sharp edges; constant regions stay exactly constant (0 stays 0).

The stack normalisation ``(m - min) / (max - min)`` is a monotone affine map shared by every
pixel of the category, so the exact metrics (AP, F1-max, AUROC, AUPRO, image metrics) do not
depend on it; it matters for the reference code's 100-threshold F1-max, for the reported
thresholds and for the PR curve's threshold grid. The per-image normalisation is NOT shared: it
rescales each image differently (every map with a detection peaks at 1), so it changes the
pixel metrics. It would make every image score 1, which is why the image scores are the raw
maps' maxima.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import TypeVar

import numpy as np

EVAL_SIZE = 400  # the paper's evaluation resolution (square)
PR_POINTS = 101  # thresholds of the stored PR curves (0, 0.01, ..., 1 on normalised maps)

T = TypeVar("T")


def resize_map(anomaly_map: np.ndarray, size: int = EVAL_SIZE) -> np.ndarray:
    """A score map as ``(size, size)`` float32, by PIL bicubic interpolation (see the module docstring)."""
    from PIL import Image

    arr = np.ascontiguousarray(anomaly_map, dtype=np.float32)
    if arr.ndim != 2 or arr.size == 0:
        raise ValueError(f"expected a non-empty (H, W) map, got shape {arr.shape}")
    image = Image.fromarray(arr)  # mode 'F' (32-bit float)
    return np.asarray(image.resize((size, size), Image.Resampling.BICUBIC), dtype=np.float32)


def resize_mask(mask: np.ndarray, size: int = EVAL_SIZE) -> np.ndarray:
    """A boolean mask as ``(size, size)`` bool, by nearest-neighbour interpolation."""
    from PIL import Image

    arr = np.asarray(mask)
    if arr.ndim != 2 or arr.size == 0:
        raise ValueError(f"expected a non-empty (H, W) mask, got shape {arr.shape}")
    image = Image.fromarray(np.where(arr.astype(bool), 255, 0).astype(np.uint8))
    return np.asarray(image.resize((size, size), Image.Resampling.NEAREST)) > 127


def stack_range(maps: np.ndarray) -> tuple[float, float]:
    """``(min, max)`` over a whole stack of maps, as Python floats."""
    arr = np.asarray(maps)
    if arr.size == 0:
        raise ValueError("cannot normalise an empty stack of maps")
    lo, hi = float(arr.min()), float(arr.max())
    if not (np.isfinite(lo) and np.isfinite(hi)):
        raise ValueError("anomaly maps contain NaN or infinite values")
    return lo, hi


def normalize_image(anomaly_map: np.ndarray, lo: float, hi: float, dtype: type = np.float32) -> np.ndarray:
    """One map min-max normalised with the range ``(lo, hi)`` of its raw full-resolution map.

    ``(m - lo) / (hi - lo)`` in float64, returned as ``dtype``; all zeros when ``hi <= lo`` (a
    constant map). On a resized map the result can leave [0, 1] slightly (bicubic overshoot).
    With ``lo, hi`` the map's own range and ``dtype`` float64 this is the reference code's
    ``normalize`` (utils/function.py) to the bit.
    """
    arr = np.asarray(anomaly_map, dtype=np.float64)
    span = float(hi) - float(lo)
    if not (np.isfinite(lo) and np.isfinite(hi)):
        raise ValueError(f"the raw map's range ({lo}, {hi}) is not finite")
    if span <= 0:
        return np.zeros(arr.shape, dtype=dtype)
    return ((arr - float(lo)) / span).astype(dtype, copy=False)


def normalize_full_map(anomaly_map: np.ndarray) -> np.ndarray:
    """A full-resolution float64 map min-max normalised over itself, in float64 (constant: zeros)."""
    arr = np.asarray(anomaly_map, dtype=np.float64)
    lo, hi = stack_range(arr)
    return normalize_image(arr, lo, hi, np.float64)


def normalize_stack(maps: np.ndarray, *, in_place: bool = False) -> tuple[np.ndarray, float, float]:
    """Min-max normalise a ``(N, H, W)`` stack over the whole stack.

    Returns ``(normalised, min, max)``. Arithmetic is float64 per image; the result is float64
    for a float64 stack (the paper protocol's: the reference code's ``normalize`` of its stack,
    bit for bit), else float32. A constant stack becomes all zeros. With ``in_place`` the input
    array is overwritten (saves one copy of the stack, which matters for datasets with a
    thousand test images).
    """
    arr = np.asarray(maps)
    if arr.ndim != 3:
        raise ValueError(f"expected an (N, H, W) stack, got shape {arr.shape}")
    lo, hi = stack_range(arr)
    dtype = np.float64 if arr.dtype == np.float64 else np.float32
    out = arr if (in_place and arr.dtype == dtype) else np.empty(arr.shape, dtype=dtype)
    for i in range(arr.shape[0]):  # one image at a time: no float64 copy of a float32 stack
        out[i] = normalize_image(arr[i], lo, hi, dtype)
    return out, lo, hi


def pr_curve(
    maps: np.ndarray, masks: np.ndarray, n_points: int = PR_POINTS
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pixel precision and recall at ``n_points`` evenly spaced thresholds of normalised maps.

    ``maps`` are normalised to [0, 1]; a pixel is predicted anomalous when its score is
    ``>= t``. Returns ``(thresholds, precision, recall)``; precision is 1 where nothing is
    predicted, recall all nan without anomalous pixels. For plots: the exact metrics come from
    :mod:`iapas.metrics`. Scores are binned image by image (``floor(s * (n - 1))``), so scores
    within one float rounding of a grid threshold may fall in the neighbouring bin.
    """
    arr = np.asarray(maps)
    gt = np.asarray(masks, dtype=bool)
    if arr.shape != gt.shape:
        raise ValueError(f"maps {arr.shape} and masks {gt.shape} differ in shape")
    if n_points < 2:
        raise ValueError("a PR curve needs at least 2 thresholds")
    n = n_points
    pos_hist = np.zeros(n, dtype=np.int64)
    neg_hist = np.zeros(n, dtype=np.int64)
    stack = arr.reshape(-1, *arr.shape[-2:]) if arr.ndim >= 2 else arr.reshape(1, 1, -1)
    gts = gt.reshape(stack.shape)
    for m, g in zip(stack, gts):
        bins = np.clip(np.floor(m.astype(np.float64) * (n - 1)), 0, n - 1).astype(np.int64)
        pos_hist += np.bincount(bins[g], minlength=n)
        neg_hist += np.bincount(bins[~g], minlength=n)
    tp = np.cumsum(pos_hist[::-1])[::-1]  # scores >= t_k
    fp = np.cumsum(neg_hist[::-1])[::-1]
    n_pos = int(pos_hist.sum())
    predicted = tp + fp
    precision = np.divide(tp, predicted, out=np.ones(n, dtype=np.float64), where=predicted > 0)
    recall = tp / n_pos if n_pos else np.full(n, np.nan)
    return np.linspace(0.0, 1.0, n), precision, recall


def limit_samples(
    samples: Sequence[T], limit: int | None, seed: int = 0, *, label: Callable[[T], int] | None = None
) -> list[T]:
    """At most ``limit`` of ``samples``, drawn with ``seed`` and stratified by label, in their original order.

    ``label(sample)`` is the sample's image label (default: its ``label`` attribute, as on
    :class:`~iapas.data.Sample`); non-zero is anomalous. The anomalous and the normal samples are
    each shuffled with ``seed``, then taken alternately (anomalous first; when one class runs
    out, the other goes on), so a draw of ``limit >= 2`` holds both classes whenever both exist
    (a uniform draw could pick only normal images and leave every metric undefined). The draw is
    a prefix of that one fixed sequence, so a larger limit keeps every image of a smaller one (a
    quick check can be extended and resumed). ``None``: all samples.
    """
    items = list(samples)
    if limit is None or limit >= len(items):
        return items
    if limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")
    get = label if label is not None else (lambda item: int(getattr(item, "label")))
    anomalous = [i for i, item in enumerate(items) if int(get(item)) != 0]
    normal = [i for i, item in enumerate(items) if int(get(item)) == 0]
    rng = random.Random(seed)
    rng.shuffle(anomalous)
    rng.shuffle(normal)
    order: list[int] = []
    for k in range(max(len(anomalous), len(normal))):
        order += anomalous[k : k + 1] + normal[k : k + 1]
    chosen = sorted(order[:limit])
    return [items[i] for i in chosen]
