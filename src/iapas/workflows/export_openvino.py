"""``iapas export openvino``: convert a detector and a segmenter to OpenVINO IR ahead of time.

A run with ``--runtime openvino`` converts each model on first use (the detector once per
resized image shape) into the IR cache (:mod:`iapas.models.ov.cache`); this does the same ahead
of time, into ``out`` (give it to the runs as ``$IAPAS_OPENVINO_CACHE``), so that a station's
first image does not wait minutes. The detector's graph depends on the image shape: give the
sizes of the images the runs will see (``image_sizes``, e.g. the camera's).
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)


def parse_size(text: str) -> tuple[int, int]:
    """``'HxW'`` -> (H, W); a one-line ValueError otherwise."""
    match = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", text)
    if not match or min(int(match[1]), int(match[2])) < 1:
        raise ValueError(f"--image-size {text!r}: expected HEIGHTxWIDTH in pixels, e.g. 900x900")
    return int(match[1]), int(match[2])


@dataclass
class ExportReport:
    """What :func:`export_openvino` made: the cache folder's entries and the seconds it took."""

    out: Path
    entries: list[str] = field(default_factory=list)
    seconds: float = 0.0


def export_openvino(detector: str, segmenter: str | None, out: Path,
                    image_sizes: list[tuple[int, int]], int8: bool = False) -> ExportReport:
    """Convert ``detector`` (one graph per resized shape of ``image_sizes``) and ``segmenter``
    (None: skip it) into the IR cache folder ``out``; entries already there are kept. An entry
    that cannot be saved there is an :class:`~iapas.models.ov.cache.IrCacheError` (a run would
    use it unsaved; here the saved entries are the point)."""
    from iapas.models.factory import load_detector, load_segmenter
    from iapas.models.ov.cache import IrCacheError, saving_required

    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise IrCacheError(f"cannot make the IR cache folder {out}: {exc.strerror or exc}") from None
    started = time.perf_counter()
    with saving_required():
        det = load_detector(detector, device="cpu", runtime="openvino", ov_cache=out, ov_int8=int8)
        for height, width in image_sizes:
            det.detect([np.zeros((height, width, 3), np.uint8)], "defect .")  # converts this shape's graph
        if segmenter is not None:
            load_segmenter(segmenter, device="cpu", runtime="openvino", ov_cache=out)  # SAM converts when loaded
    entries = sorted(p.name for p in out.iterdir() if p.is_dir() and not p.name.startswith("."))
    return ExportReport(out, entries, time.perf_counter() - started)
