"""OpenCV's ``cv2.resize`` arithmetic in numpy: ``INTER_CUBIC`` for maps, ``INTER_NEAREST`` for masks.

The paper's reference code resizes its maps and masks to 400x400 with OpenCV
(``process_specify_resolution`` in its utils/function.py); ``--protocol paper`` does the same
arithmetic here, without OpenCV at run time (the tests compare with ``opencv-python-headless``).

Cubic (:func:`resize_map_cubic`), separable, horizontal pass first, as OpenCV's generic resize:

* scale ``s = src / dst`` (from OpenCV's ``inv_scale = dst / src`` in double); destination
  pixel ``d`` samples the source at ``f = (d + 0.5) * s - 0.5`` (double), ``i = floor(f)``,
  ``t = float32(f - i)``, and the 4 source pixels ``i - 1 .. i + 2`` clamped to the image
  (OpenCV's ``BORDER_REPLICATE``); the horizontal pass's rows and the result are float32;
* weights (float32), the cubic convolution kernel with ``A = -0.75`` and no antialiasing when
  shrinking (PIL's bicubic uses ``A = -0.5`` and widens the kernel by the scale)::

      w0 = ((A (t + 1) - 5A)(t + 1) + 8A)(t + 1) - 4A
      w1 = ((A + 2) t - (A + 3)) t t + 1
      w2 = ((A + 2)(1 - t) - (A + 3))(1 - t)(1 - t) + 1
      w3 = 1 - w0 - w1 - w2

Nearest (:func:`resize_mask_nearest`): destination pixel ``d`` takes source pixel
``min(floor(d * s), src - 1)`` with ``s = 1 / (dst / src)`` in double: OpenCV's
``INTER_NEAREST`` rule (the top-left of the source cell, not its centre, which is
``INTER_NEAREST_EXACT``'s and PIL's rule).
"""

from __future__ import annotations

import numpy as np

CUBIC_A = -0.75  # OpenCV's (and torch's) cubic convolution coefficient

__all__ = ["CUBIC_A", "cubic_taps", "nearest_index", "resize_map_cubic", "resize_mask_nearest"]


def cubic_taps(src: int, dst: int) -> tuple[np.ndarray, np.ndarray]:
    """``(index, weight)``, both ``(dst, 4)``: the clamped source pixels and float32 weights of each output pixel."""
    if src < 1 or dst < 1:
        raise ValueError(f"sizes must be >= 1, got {src} -> {dst}")
    scale = 1.0 / (dst / src)
    f = (np.arange(dst, dtype=np.float64) + 0.5) * scale - 0.5
    i = np.floor(f)
    t = (f - i).astype(np.float32)
    a = np.float32(CUBIC_A)
    one = np.float32(1.0)
    t1 = t + one
    w0 = ((a * t1 - np.float32(5) * a) * t1 + np.float32(8) * a) * t1 - np.float32(4) * a
    w1 = ((a + np.float32(2)) * t - (a + np.float32(3))) * t * t + one
    u = one - t
    w2 = ((a + np.float32(2)) * u - (a + np.float32(3))) * u * u + one
    w3 = one - w0 - w1 - w2
    weights = np.stack([w0, w1, w2, w3], axis=1).astype(np.float32)
    index = np.clip(i.astype(np.int64)[:, None] + np.arange(-1, 3)[None, :], 0, src - 1)
    return index, weights


def resize_map_cubic(anomaly_map: np.ndarray, size: int) -> np.ndarray:
    """``(size, size)`` float32, as ``cv2.resize(map, (size, size), interpolation=cv2.INTER_CUBIC)``."""
    arr = np.asarray(anomaly_map, dtype=np.float32)
    if arr.ndim != 2 or arr.size == 0:
        raise ValueError(f"expected a non-empty (H, W) map, got shape {arr.shape}")
    h, w = arr.shape
    xi, xw = cubic_taps(w, size)
    yi, yw = cubic_taps(h, size)
    rows = np.zeros((h, size), dtype=np.float32)  # horizontal pass
    for k in range(4):
        rows += arr[:, xi[:, k]] * xw[None, :, k]
    out = np.zeros((size, size), dtype=np.float32)  # vertical pass
    for k in range(4):
        out += rows[yi[:, k], :] * yw[:, k, None]
    return out


def nearest_index(src: int, dst: int) -> np.ndarray:
    """The source pixel of each of ``dst`` output pixels under OpenCV's ``INTER_NEAREST``."""
    if src < 1 or dst < 1:
        raise ValueError(f"sizes must be >= 1, got {src} -> {dst}")
    scale = 1.0 / (dst / src)
    return np.minimum(np.floor(np.arange(dst, dtype=np.float64) * scale).astype(np.int64), src - 1)


def resize_mask_nearest(mask: np.ndarray, size: int) -> np.ndarray:
    """``(size, size)`` bool, as ``cv2.resize(mask, (size, size), interpolation=cv2.INTER_NEAREST)``."""
    arr = np.asarray(mask)
    if arr.ndim != 2 or arr.size == 0:
        raise ValueError(f"expected a non-empty (H, W) mask, got shape {arr.shape}")
    h, w = arr.shape
    return np.ascontiguousarray(arr.astype(bool)[nearest_index(h, size)[:, None], nearest_index(w, size)[None, :]])
