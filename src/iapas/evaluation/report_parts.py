"""The pieces of the HTML report that its two halves share: escaping, inlined PNGs, the pictures
of one prediction (image, ground truth, overlay), its image score and its boxes as text.

:mod:`iapas.evaluation.report` (the page) and :mod:`iapas.evaluation.report_tool` (threshold
figures, image table) both import them from here.
"""

from __future__ import annotations

import base64
import html
import io
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from iapas.core.names import path_inside

logger = logging.getLogger(__name__)

THUMB = 192  # longest side of gallery pictures, in pixels


def _esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def png_data_uri(array: np.ndarray) -> str:
    """An ``(H, W)`` or ``(H, W, 3)`` uint8 array as a ``data:image/png;base64,...`` URI."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array)).save(buf, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _img(array: np.ndarray, alt: str) -> str:
    return f'<img src="{png_data_uri(array)}" alt="{_esc(alt)}" width="{array.shape[1]}" height="{array.shape[0]}">'


def _fit(width: int, height: int, size: int) -> tuple[int, int]:
    scale = size / max(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def _placeholder(width: int, height: int) -> np.ndarray:
    return np.full((height, width, 3), 200, dtype=np.uint8)


def _scaled(records: Sequence[Mapping[str, Any]], sx: float, sy: float) -> Any:
    from iapas.core.types import Detections

    if not records:
        return Detections.empty()
    boxes = np.array([r["box"] for r in records], dtype=np.float32) * np.array([sx, sy, sx, sy], dtype=np.float32)
    return Detections(boxes, np.array([r["score"] for r in records], dtype=np.float32), tuple(str(r.get("phrase", "")) for r in records))


def gallery_panels(
    out_dir: Path, record: Mapping[str, Any], vmax: float, size: int = THUMB, *, image_norm: bool = False
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(image, ground truth, overlay) of one prediction, fitted into ``size`` pixels.

    The overlay shows the map as the metrics saw it before the stack normalisation (per-image
    normalised when ``image_norm``), coloured up to ``vmax``.
    """
    from PIL import Image

    from iapas.evaluation.predictions import evaluated_map, load_map_file
    from iapas.core.images import ImageReadError, read_image
    from iapas.engine.outputs import render_overlay
    from iapas.core.types import SegmentationResult

    width, height = int(record.get("width", 400)), int(record.get("height", 400))
    w, h = _fit(width, height, size)
    try:
        rgb = read_image(record["image"]).rgb
        rgb = np.asarray(Image.fromarray(rgb).resize((w, h), Image.Resampling.BILINEAR))
    except (ImageReadError, OSError, KeyError) as exc:
        logger.warning("report: %s", exc)
        rgb = _placeholder(w, h)
    try:
        amap, mask = load_map_file(path_inside(out_dir, str(record["map"])))
        amap = evaluated_map(amap, record, image_norm)
    except (OSError, KeyError, ValueError) as exc:
        logger.warning("report: %s: %s", record.get("map"), exc)
        amap, mask = np.zeros((h, w), np.float32), np.zeros((h, w), bool)
    amap_d = np.asarray(Image.fromarray(np.clip(amap, 0, None).astype(np.float32)).resize((w, h), Image.Resampling.BILINEAR))
    mask_d = np.asarray(Image.fromarray(np.where(mask, 255, 0).astype(np.uint8)).resize((w, h), Image.Resampling.NEAREST))
    sx, sy = w / width, h / height
    obj = record.get("object") or {}
    box = obj.get("box")
    result = SegmentationResult(
        anomaly_map=amap_d.astype(np.float32),
        kept=_scaled(record.get("kept", []), sx, sy),
        dropped=_scaled(record.get("dropped", []), sx, sy),
        masks=np.zeros((0, h, w), bool),
        object_box=None if box is None else np.array(box, np.float32) * np.array([sx, sy, sx, sy], np.float32),
        object_score=obj.get("score"),
        object_size=float(obj.get("size", 1.0)),
        object_size_source=str(obj.get("source", "")),
    )
    overlay = render_overlay(rgb, result, vmax=vmax if vmax > 0 else 1.0)
    return rgb, mask_d, overlay


def image_score(record: Mapping[str, Any]) -> float:
    """The image-level score of a prediction, as the image metrics use it: the raw
    full-resolution map's maximum (``map_max``; older records: ``image_score``, then ``score``)."""
    for key in ("map_max", "image_score", "score"):
        if record.get(key) is not None:
            return float(record[key])
    return 0.0


def _boxes_text(records: Sequence[Mapping[str, Any]], limit: int = 8) -> str:
    """'phrase score, ...' of at most ``limit`` boxes (highest scores first), HTML-escaped."""
    if not records:
        return "none"
    ranked = sorted(records, key=lambda r: -float(r.get("score", 0.0)))
    text = ", ".join(f"{_esc(r.get('phrase', ''))} {float(r.get('score', 0.0)):.2f}" for r in ranked[:limit])
    return text + (f" and {len(ranked) - limit} more" if len(ranked) > limit else "")
