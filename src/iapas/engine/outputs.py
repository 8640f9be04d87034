"""Per-image output files: the 16-bit map, the binary mask and the colour overlay.

The kinds are one table, :data:`OUTPUT_KINDS`: a run's writer, its resume check and clean-up, and the
station's store and picture routes all read it. A new kind is a row and its drawing function here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from iapas.core.files import save_png
from iapas.core.maps import encode_map
from iapas.core.names import path_inside
from iapas.core.types import SegmentationResult
from iapas.product.decision import output_mask


LABEL_TEXT = (255, 255, 255)
KEPT_COLOUR = (220, 0, 0)
DROPPED_COLOUR = (160, 160, 160)
OBJECT_COLOUR = (0, 200, 0)
OK_COLOUR = (0, 160, 0)


def label_font(shape: tuple[int, ...]) -> Any:
    """Pillow's scalable default font at a size that reads on an image of this ``shape``: 1/40
    of its longer side (22 px on a 900 px image), at most 1/8 of its shorter, never under 10 px."""
    from PIL import ImageFont

    height, width = shape[:2]
    size = max(10, round(min(max(height, width) / 40, min(height, width) / 8)))
    try:
        return ImageFont.load_default(size=size)
    except (OSError, ImportError):  # a Pillow built without FreeType: its fixed bitmap font
        return ImageFont.load_default()


def label_rect(
    draw: Any, text: str, font: Any, anchor: tuple[float, float], size: tuple[int, int], avoid: list[float] | None = None
) -> tuple[list[float], tuple[float, float]]:
    """Where a label goes: ``(background rectangle, text position)``. Its bottom left corner is
    at ``anchor`` (a box's top left corner, so the label sits on the box); with no room above,
    just below ``anchor`` (inside the box); then moved left or up to stay inside the ``size``
    (width, height) image, and below the rectangle ``avoid`` (the verdict's) if it would cover it."""
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    pad = max(1, round((bottom - top) / 6))
    w, h = right - left + 2 * pad, bottom - top + 2 * pad
    x, y = anchor
    y = y - h if y - h >= 0 else y
    if avoid is not None and x < avoid[2] and x + w > avoid[0] and y < avoid[3] and y + h > avoid[1]:
        y = avoid[3] + 1
    x, y = max(0, min(x, size[0] - w)), max(0, min(y, size[1] - h))
    return [x, y, x + w - 1, y + h - 1], (x + pad - left, y + pad - top)


def draw_label(draw: Any, text: str, font: Any, anchor: tuple[float, float], size: tuple[int, int],
               fill: tuple[int, int, int], avoid: list[float] | None = None) -> list[float]:
    """White ``text`` on a ``fill`` rectangle placed by :func:`label_rect` (the font made
    smaller where the text is wider than the image); returns the rectangle."""
    rect, at = label_rect(draw, text, font, anchor, size, avoid)
    if rect[2] - rect[0] + 1 > size[0] and hasattr(font, "font_variant"):
        font = font.font_variant(size=max(6, int(font.size * size[0] / (rect[2] - rect[0] + 1))))
        rect, at = label_rect(draw, text, font, anchor, size, avoid)
    draw.rectangle(rect, fill=fill)
    draw.text(at, text, font=font, fill=LABEL_TEXT)
    return rect


def render_overlay(
    rgb: np.ndarray,
    result: SegmentationResult,
    *,
    vmax: float = 1.0,
    alpha: float = 0.5,
    draw_boxes: bool = True,
    verdict: Any = None,
    show_dropped: bool = False,
) -> np.ndarray:
    """The image with the map as a heat colour where it is > 0, kept boxes in red with their
    phrase and score, the object box in green, and, with ``show_dropped``, the boxes the size
    filter dropped in grey.

    The colour scale is the same for every image: 0 to ``vmax``, or, with a ``verdict``
    (:class:`iapas.product.decision.ImageDecision`), the decision's normalised score (the threshold at
    the middle of the scale); the verdict and its score are written in the top left corner
    (green OK, red NG). Labels are written in a font that scales with the image
    (:func:`label_font`), on a filled background, inside the image."""
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
    size = image.size
    width = max(1, round(max(rgb.shape[:2]) / 400))
    font = label_font(rgb.shape)
    verdict_label, verdict_rect = None, None
    if verdict is not None:
        verdict_label = f"{verdict.verdict} {verdict.score:.4f} (threshold {verdict.threshold:.4f})"
        verdict_rect = label_rect(draw, verdict_label, font, (0, 0), size)[0]
    for box in result.dropped.boxes if show_dropped else ():
        draw.rectangle([float(v) for v in box], outline=DROPPED_COLOUR, width=width)
    if result.object_box is not None:
        draw.rectangle([float(v) for v in result.object_box], outline=OBJECT_COLOUR, width=width)
    for box in result.kept.boxes:
        draw.rectangle([float(v) for v in box], outline=KEPT_COLOUR, width=width)
    for box, score, phrase in zip(result.kept.boxes, result.kept.scores, result.kept.phrases):
        draw_label(draw, f"{phrase} {score:.2f}", font, (float(box[0]), float(box[1])), size, KEPT_COLOUR, verdict_rect)
    if verdict is not None:
        colour = KEPT_COLOUR if verdict.verdict == "NG" else OK_COLOUR
        draw.rectangle([0, 0, size[0] - 1, size[1] - 1], outline=colour, width=2 * width)
        draw_label(draw, verdict_label, font, (0, 0), size, colour)
    return np.asarray(image)


@dataclass(frozen=True)
class OutputInputs:
    """What an output kind is drawn from: the image, stage 2's result, the mask level, the verdict."""

    rgb: np.ndarray
    result: SegmentationResult
    threshold: float
    verdict: Any = None  # an iapas.product.decision.ImageDecision, or None without a decision
    show_dropped: bool = False


@dataclass(frozen=True)
class OutputKind:
    """One kind of per-image output: its name in records and URLs, its folder, how it is drawn."""

    name: str
    folder: str
    draw: Callable[[OutputInputs], np.ndarray]
    compress_level: int = 6
    optional: bool = False  # left out by --no-overlay


OUTPUT_KINDS: tuple[OutputKind, ...] = (
    OutputKind("map", "maps", lambda o: encode_map(o.result.anomaly_map)),
    # with a verdict the decision mask (empty exactly when the verdict is OK), else the map >= threshold
    OutputKind("mask", "masks", lambda o: output_mask(o.result.anomaly_map, o.verdict, o.threshold)),
    # overlays are for looking at: fast compression (they are photographic, and the largest)
    OutputKind("overlay", "overlays", lambda o: render_overlay(o.rgb, o.result, verdict=o.verdict, show_dropped=o.show_dropped),
               compress_level=1, optional=True),
)
KINDS: tuple[str, ...] = tuple(kind.name for kind in OUTPUT_KINDS)
OUTPUT_FOLDERS: tuple[str, ...] = tuple(kind.folder for kind in OUTPUT_KINDS)


def output_kind(name: str) -> OutputKind:
    return next(kind for kind in OUTPUT_KINDS if kind.name == name)


def output_names(key: str, overlay: bool = True) -> dict[str, str]:
    """The files of one image's outputs, relative to the output folder, by kind."""
    return {kind.name: f"{kind.folder}/{key}.png" for kind in OUTPUT_KINDS if overlay or not kind.optional}


def write_image_outputs(
    out_dir: Path,
    key: str,
    rgb: np.ndarray,
    result: SegmentationResult,
    threshold: float,
    overlay: bool = True,
    verdict: Any = None,
    show_dropped: bool = False,
) -> dict[str, str]:
    """Write each kind of :data:`OUTPUT_KINDS` (``maps/KEY.png``, ``masks/KEY.png``, ``overlays/KEY.png``) atomically.

    With a ``verdict`` (:class:`iapas.product.decision.ImageDecision`) the mask is the decision mask
    (empty exactly when the verdict is OK) and the overlay shows the verdict; without, the mask
    is the map >= ``threshold``; ``show_dropped`` draws the dropped boxes on the overlay.
    Returns the written paths relative to ``out_dir``.
    """
    written = output_names(key, overlay)
    inputs = OutputInputs(rgb, result, threshold, verdict, show_dropped)
    for name, relative in written.items():  # a key is a relative path: each file must stay inside out_dir
        kind = output_kind(name)
        save_png(path_inside(out_dir, relative), kind.draw(inputs), compress_level=kind.compress_level)
    return written
