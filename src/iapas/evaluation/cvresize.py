"""OpenCV's ``cv2.resize`` arithmetic in numpy: ``INTER_CUBIC`` for maps, ``INTER_NEAREST`` for masks.

The paper's reference code resizes its maps and masks to 400x400 with OpenCV
(``process_specify_resolution`` in its utils/function.py); ``--protocol paper`` does the same
arithmetic here, without OpenCV at run time (the tests compare with ``opencv-python-headless``).

Cubic (:func:`resize_map_cubic`), separable, horizontal pass first, as OpenCV's generic resize:

* scale ``s = 1 / (dst / src)`` (OpenCV's ``inv_scale = dst / src`` in double, inverted);
  destination pixel ``d`` samples the source at ``fx = (float)((d + 0.5) * s - 0.5)`` (computed
  in double, rounded to float32: OpenCV's ``resizeGeneric`` rule), ``i = floor(fx)``,
  ``t = fx - i`` (float32), and the 4 source pixels ``i - 1 .. i + 2`` clamped to the image
  (OpenCV's ``BORDER_REPLICATE``);
* a float64 map (OpenCV's ``CV_64F``, what ``--protocol paper`` resizes, as the reference code
  does) is interpolated in float64 with the float32 weights: each pass sums its 4 products left
  to right, which is bit-identical to ``cv2.resize`` (the tests compare with equality on many
  sizes); a float32 map keeps float32 rows and result (within float32 rounding of OpenCV's
  vectorised ``CV_32F`` path);
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
    fx = ((np.arange(dst, dtype=np.float64) + 0.5) * scale - 0.5).astype(np.float32)  # OpenCV: (float)(...)
    i = np.floor(fx)
    t = (fx - i).astype(np.float32)
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
    """``(size, size)`` as ``cv2.resize(map, (size, size), interpolation=cv2.INTER_CUBIC)``.

    A float64 map gives float64, bit-identical to OpenCV; anything else is resized as float32.
    """
    arr = np.asarray(anomaly_map)
    dtype = np.float64 if arr.dtype == np.float64 else np.float32
    arr = arr.astype(dtype, copy=False)
    if arr.ndim != 2 or arr.size == 0:
        raise ValueError(f"expected a non-empty (H, W) map, got shape {arr.shape}")
    h, w = arr.shape
    xi, xw = cubic_taps(w, size)
    yi, yw = cubic_taps(h, size)
    xw, yw = xw.astype(dtype), yw.astype(dtype)  # float32 weights, exact in float64
    # horizontal pass, then vertical, each ((a + b) + c) + d in the map's precision, as OpenCV
    rows = arr[:, xi[:, 0]] * xw[None, :, 0]
    for k in range(1, 4):
        rows += arr[:, xi[:, k]] * xw[None, :, k]
    out = rows[yi[:, 0], :] * yw[:, 0, None]
    for k in range(1, 4):
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
