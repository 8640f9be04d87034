"""Per-image output files: the 16-bit map, the binary mask and the colour overlay."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from iapas.io import save_png
from iapas.names import path_inside
from iapas.types import SegmentationResult

# A map pixel value v is stored as round(v * MAP_SCALE) in a 16-bit PNG (so 1.0 -> 10000).
MAP_SCALE = 10000
MAP_MAX = 65535 / MAP_SCALE


def encode_map(anomaly_map: np.ndarray) -> np.ndarray:
    """Float map -> uint16 for a 16-bit PNG; values above MAP_MAX (6.5535) saturate."""
    return np.round(np.clip(anomaly_map, 0.0, MAP_MAX) * MAP_SCALE).astype(np.uint16)


def decode_map(encoded: np.ndarray) -> np.ndarray:
    """The inverse of :func:`encode_map` (to 1e-4)."""
    return np.asarray(encoded, dtype=np.float32) / MAP_SCALE


def binary_mask(anomaly_map: np.ndarray, threshold: float) -> np.ndarray:
    """``uint8`` mask, 255 where the map is >= threshold (and > 0), else 0."""
    on = (anomaly_map >= threshold) & (anomaly_map > 0)
    return np.where(on, 255, 0).astype(np.uint8)


def render_overlay(
    rgb: np.ndarray,
    result: SegmentationResult,
    *,
    vmax: float = 1.0,
    alpha: float = 0.5,
    draw_boxes: bool = True,
    verdict: Any = None,
) -> np.ndarray:
    """The image with the map as a heat colour where it is > 0, kept boxes in red with their
    phrase and score, dropped boxes in grey and the object box in green.

    The colour scale is the same for every image: 0 to ``vmax``, or, with a ``verdict``
    (:class:`iapas.decision.ImageDecision`), the decision's normalised score (the threshold at
    the middle of the scale); the verdict and its score are written in the top left corner
    (green OK, red NG)."""
    import matplotlib
    from PIL import Image, ImageDraw

    amap = result.anomaly_map
    base = rgb.astype(np.float32)
    if verdict is not None:
        level = np.clip((amap - verdict.threshold) / verdict.score_span + 0.5, 0, 1)
    else:
        level = np.clip(amap / max(vmax, 1e-6), 0, 1)
    heat = matplotlib.colormaps["jet"](level)[..., :3] * 255.0
    weight = np.where(amap > 0, alpha, 0.0)[..., None]
    blended = (base * (1 - weight) + heat * weight).round().astype(np.uint8)
    if not draw_boxes:
        return blended
    image = Image.fromarray(blended)
    draw = ImageDraw.Draw(image)
    width = max(1, round(max(rgb.shape[:2]) / 400))
    for box in result.dropped.boxes:
        draw.rectangle([float(v) for v in box], outline=(160, 160, 160), width=width)
    if result.object_box is not None:
        draw.rectangle([float(v) for v in result.object_box], outline=(0, 200, 0), width=width)
    for box, score, phrase in zip(result.kept.boxes, result.kept.scores, result.kept.phrases):
        draw.rectangle([float(v) for v in box], outline=(255, 0, 0), width=width)
        draw.text((float(box[0]) + 2, float(box[1]) + 1), f"{phrase} {score:.2f}", fill=(255, 255, 0))
    if verdict is not None:
        label = f"{verdict.verdict} {verdict.score:.4f} (threshold {verdict.threshold:.4f})"
        colour = (220, 0, 0) if verdict.verdict == "NG" else (0, 160, 0)
        x1, y1 = draw.textbbox((4, 4), label)[2:]
        draw.rectangle([0, 0, x1 + 4, y1 + 4], fill=colour)
        draw.text((4, 4), label, fill=(255, 255, 255))
        draw.rectangle([0, 0, rgb.shape[1] - 1, rgb.shape[0] - 1], outline=colour, width=2 * width)
    return np.asarray(image)


def output_names(key: str, overlay: bool = True) -> dict[str, str]:
    """The files of one image's outputs, relative to the output folder, by kind."""
    names = {"map": f"maps/{key}.png", "mask": f"masks/{key}.png"}
    if overlay:
        names["overlay"] = f"overlays/{key}.png"
    return names


def write_image_outputs(
    out_dir: Path,
    key: str,
    rgb: np.ndarray,
    result: SegmentationResult,
    threshold: float,
    overlay: bool = True,
    verdict: Any = None,
) -> dict[str, str]:
    """Write ``maps/KEY.png``, ``masks/KEY.png`` and ``overlays/KEY.png`` atomically.

    With a ``verdict`` (:class:`iapas.decision.ImageDecision`) the mask is the decision mask
    (empty exactly when the verdict is OK) and the overlay shows the verdict; without, the mask
    is the map >= ``threshold``. Returns the written paths relative to ``out_dir``.
    """
    written = output_names(key, overlay)
    paths = {kind: path_inside(out_dir, name) for kind, name in written.items()}  # a key is a relative path
    save_png(paths["map"], encode_map(result.anomaly_map))
    if verdict is not None:
        mask = np.where(verdict.mask, 255, 0).astype(np.uint8)
    else:
        mask = binary_mask(result.anomaly_map, threshold)
    save_png(paths["mask"], mask)
    if overlay:
        # overlays are for looking at: fast compression (they are photographic, and the largest)
        save_png(paths["overlay"], render_overlay(rgb, result, verdict=verdict), compress_level=1)
    return written
