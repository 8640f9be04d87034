"""Pictures a person can read, made by the station from the stored PNGs (nothing in a
``segment`` folder changes): ``heat.png``, the map in colour with a colour bar in score units
(the 16-bit ``map.png`` shows as a nearly black or saturated grey in a browser), and
``outline.png``, the overlay with the decision mask's outline instead of a bare binary mask."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from iapas.core.images import open_own_png
from iapas.core.maps import decode_map

OUTLINE = (0, 255, 255)
GT_OUTLINE = (255, 0, 255)


def _font(size: int) -> Any:
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: one bitmap size
        return ImageFont.load_default()


def _png(array: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def heat(map_png: bytes, threshold: float | None) -> bytes:
    """The map in the jet colours over 0 .. ``vmax`` (twice the threshold, or the map's maximum
    when larger), a colour bar on the right with 0, the threshold and ``vmax`` written on it."""
    import matplotlib
    from PIL import Image, ImageDraw

    with open_own_png(map_png) as im:
        scores = decode_map(np.asarray(im))
    h, w = scores.shape
    t = threshold if threshold is not None and threshold > 0 else None
    vmax = max(float(scores.max()), 2 * t if t else 0.0, 1e-6)
    colour = (matplotlib.colormaps["jet"](np.clip(scores / vmax, 0, 1))[..., :3] * 255).round().astype(np.uint8)
    size = max(12, round(h / 22))
    bar_w = max(12, w // 16)
    label_w = 5 * size
    canvas = Image.new("RGB", (w + bar_w + label_w + 8, h), (255, 255, 255))
    canvas.paste(Image.fromarray(colour), (0, 0))
    ramp = matplotlib.colormaps["jet"](np.linspace(1, 0, h))[:, :3] * 255
    canvas.paste(Image.fromarray(np.repeat(ramp[:, None, :], bar_w, axis=1).round().astype(np.uint8)), (w + 4, 0))
    draw, font = ImageDraw.Draw(canvas), _font(size)
    for value in (0.0, *([t] if t else []), vmax):
        y = min(h - size, max(0, round((1 - value / vmax) * (h - 1)) - size // 2))
        draw.line([(w + 4, round((1 - value / vmax) * (h - 1))), (w + 4 + bar_w, round((1 - value / vmax) * (h - 1)))], fill=(0, 0, 0))
        draw.text((w + bar_w + 8, y), f"{value:.3g}" + (" thr" if t and value == t else ""), fill=(0, 0, 0), font=font)
    return _png(np.asarray(canvas))


def outline(overlay_png: bytes, mask_png: bytes, colour: tuple[int, int, int] = OUTLINE) -> bytes:
    """The overlay with the mask's outline drawn over it in ``colour`` (thicker on larger images)."""
    with open_own_png(overlay_png) as im:
        rgb = np.asarray(im.convert("RGB")).copy()
    with open_own_png(mask_png) as im:
        mask = np.asarray(im) > 0
    if mask.shape != rgb.shape[:2]:
        return overlay_png
    padded = np.pad(mask, 1)
    inner = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    edge = mask & ~inner
    for _ in range(max(0, round(max(mask.shape) / 300) - 1)):  # thicken: grow the edge by one pixel
        p = np.pad(edge, 1)
        edge = edge | p[:-2, 1:-1] | p[2:, 1:-1] | p[1:-1, :-2] | p[1:-1, 2:]
    rgb[edge] = colour
    return _png(rgb)


async def png_answer(result_id: str, make: Any, bad_request: Any, valid_id: Any) -> Response:
    """The PNG ``make()`` gives for a result (run in a worker thread), or 404 for an invalid id or
    a result the store does not have: the one answer of every picture route of the station."""
    if not valid_id(result_id):
        raise bad_request(404, "invalid result id (32 lowercase hex digits)")
    data = await run_in_threadpool(make)
    if data is None:
        raise bad_request(404, f"no result {result_id} (results in memory are kept for the last ones only)")
    return Response(data, media_type="image/png", headers={"Cache-Control": "private, max-age=3600"})


def add_picture_routes(app: Any, store: Any, bad_request: Any, valid_id: Any) -> None:
    """``heat.png``, ``outline.png`` and (a reviewed evaluate folder's) ``gt.png`` of a result
    (register before the map/mask/overlay route)."""

    async def made(result_id: str, make: Any) -> Response:
        return await png_answer(result_id, make, bad_request, valid_id)

    @app.get("/v1/results/{result_id}/heat.png", summary="A result's map in colour with a colour bar",
             responses={200: {"content": {"image/png": {}}}})
    async def result_heat(result_id: str) -> Response:
        def make() -> bytes | None:
            record, data = store.get(result_id), store.png(result_id, "map")
            return None if record is None or data is None else heat(data, record.get("threshold"))
        return await made(result_id, make)

    @app.get("/v1/results/{result_id}/gt.png", summary="A reviewed evaluate result's overlay with the ground truth's outline",
             responses={200: {"content": {"image/png": {}}}})
    async def result_gt(result_id: str) -> Response:
        def make() -> bytes | None:
            truth = getattr(store, "ground_truth", None)
            mask = truth(result_id) if truth is not None else None
            overlay = store.png(result_id, "overlay") if mask is not None else None
            return None if overlay is None else outline(overlay, _png(np.where(mask, 255, 0).astype(np.uint8)), GT_OUTLINE)
        return await made(result_id, make)

    @app.get("/v1/results/{result_id}/outline.png", summary="A result's overlay with the mask's outline",
             responses={200: {"content": {"image/png": {}}}})
    async def result_outline(result_id: str) -> Response:
        def make() -> bytes | None:
            overlay, mask = store.png(result_id, "overlay"), store.png(result_id, "mask")
            return None if overlay is None or mask is None else outline(overlay, mask)
        return await made(result_id, make)
