"""COCO run-length encoding of binary masks, in numpy (no pycocotools needed).

COCO's convention: the mask is read in column-major order (down the first column, then the
next), the runs alternate 0s and 1s and the first run counts 0s (it is 0 when the mask starts
with a 1). The compressed form is pycocotools' string (``rleToString`` of its ``maskApi.c``):
each count, from the third on as the difference to the count two before, written in 5-bit
groups, low group first, as the characters ``chr(48 + group)`` with ``0x20`` set on every group
but the last. ``{"size": [height, width], "counts": "..."}`` is what ``pycocotools.mask.decode``
and COCO annotation files take.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def mask_runs(mask: np.ndarray) -> list[int]:
    """The uncompressed COCO counts of a 2-D mask (anything non-zero is 1).

    Only the columns from the first to the last that hold a 1 are scanned (the columns around
    them add to the first and last runs of 0s): a defect's mask on a large image is cheap."""
    arr = np.asarray(mask).astype(bool, copy=False)
    if arr.size == 0:
        return []
    height = arr.shape[0]
    columns = np.flatnonzero(arr.any(axis=0))
    if columns.size == 0:
        return [arr.size]
    first, last = int(columns[0]), int(columns[-1])
    flat = arr[:, first:last + 1].ravel(order="F")
    changes = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    runs = np.diff(np.concatenate(([0], changes, [flat.size]))).tolist()
    if flat[0]:
        runs.insert(0, 0)
    runs[0] += first * height
    after = (arr.shape[1] - 1 - last) * height
    if after:
        if flat[-1]:
            runs.append(after)
        else:
            runs[-1] += after
    return runs


def runs_to_string(counts: list[int]) -> str:
    """pycocotools' compressed string of uncompressed ``counts`` (vectorised: a 1000-column mask
    encodes in well under a millisecond)."""
    x = np.asarray(counts, dtype=np.int64)
    if x.size == 0:
        return ""
    x = x.copy()
    x[3:] -= np.asarray(counts, dtype=np.int64)[1:-2]  # from the fourth count on, the difference to two before
    # a value takes k 5-bit groups, the fewest that hold it as a signed 5k-bit number
    groups = np.ones(x.shape, dtype=np.int64)
    while True:
        bound = np.int64(1) << (5 * groups - 1)
        short = (x < -bound) | (x >= bound)
        if not short.any():
            break
        groups += short
    width = int(groups.max())
    shifts = 5 * np.arange(width, dtype=np.int64)
    chars = (x[:, None] >> shifts[None, :]) & 0x1F
    used = np.arange(width)[None, :] < groups[:, None]
    chars |= np.where(np.arange(width)[None, :] < groups[:, None] - 1, 0x20, 0)
    return (chars[used] + 48).astype(np.uint8).tobytes().decode("ascii")


def string_to_runs(text: str) -> list[int]:
    """The uncompressed counts of pycocotools' compressed string (the inverse of :func:`runs_to_string`)."""
    counts: list[int] = []
    pos = 0
    while pos < len(text):
        x, shift, more = 0, 0, True
        while more:
            if pos >= len(text):
                raise ValueError("a COCO RLE string ends inside a count")
            c = ord(text[pos]) - 48
            if not 0 <= c < 64:
                raise ValueError(f"a COCO RLE string has a character out of range: {text[pos]!r}")
            x |= (c & 0x1F) << shift
            more = bool(c & 0x20)
            pos += 1
            shift += 5
            if not more and c & 0x10:
                x |= -1 << shift
        if len(counts) > 2:
            x += counts[-2]
        counts.append(x)
    return counts


def encode_mask(mask: np.ndarray) -> dict[str, Any]:
    """``{"size": [height, width], "counts": compressed string}`` of a 2-D binary mask."""
    arr = np.asarray(mask)
    if arr.ndim != 2:
        raise ValueError(f"a mask to encode must be 2-D, got shape {arr.shape}")
    return {"size": [int(arr.shape[0]), int(arr.shape[1])], "counts": runs_to_string(mask_runs(arr))}


def rle_runs(rle: dict[str, Any]) -> list[int]:
    """The uncompressed counts of an RLE (compressed string or list), checked against its size."""
    try:
        height, width = (int(v) for v in rle["size"])
        counts = rle["counts"]
    except (KeyError, TypeError, ValueError):
        raise ValueError("an RLE must be {'size': [height, width], 'counts': ...}") from None
    runs = string_to_runs(counts) if isinstance(counts, str) else [int(c) for c in counts]
    if any(r < 0 for r in runs) or sum(runs) != height * width:
        raise ValueError(f"an RLE's runs do not cover its {height}x{width} mask")
    return runs


def decode_mask(rle: dict[str, Any]) -> np.ndarray:
    """The ``(height, width)`` bool mask of an RLE (compressed string or uncompressed list)."""
    runs = rle_runs(rle)
    height, width = (int(v) for v in rle["size"])
    values = np.zeros(len(runs), dtype=bool)
    values[1::2] = True
    flat = np.repeat(values, runs)
    return flat.reshape((height, width), order="F")


def rle_area(rle: dict[str, Any]) -> int:
    """How many pixels of the RLE's mask are 1."""
    return int(sum(rle_runs(rle)[1::2]))
