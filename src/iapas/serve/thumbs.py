"""Small pictures for the history strip (``GET /v1/results/{id}/thumb.png``): the overlay
scaled to fit :data:`THUMB_SIZE` pixels, kept in a bounded cache, so that a page listing many
parts downloads a few kB per part instead of each full overlay."""

from __future__ import annotations

import io
import threading
from collections import OrderedDict
from typing import Any

from fastapi.responses import Response

from iapas.serve.pictures import png_answer

THUMB_SIZE = 160
CACHE_BYTES = 32 * 2**20


def thumbnail(png: bytes, size: int = THUMB_SIZE) -> bytes:
    """``png`` scaled (never up) to fit ``size`` x ``size``, aspect kept, as PNG bytes."""
    from PIL import Image

    from iapas.core.images import open_own_png

    with open_own_png(png) as im:
        im = im.convert("RGB")
        im.thumbnail((size, size), Image.BILINEAR)
        buffer = io.BytesIO()
        im.save(buffer, format="PNG", compress_level=6)
    return buffer.getvalue()


class ThumbCache:
    """Thumbnails by result id, the least recently used dropped past ``max_bytes``."""

    def __init__(self, max_bytes: int = CACHE_BYTES) -> None:
        self.max_bytes = max_bytes
        self._items: OrderedDict[str, bytes] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, store: Any, result_id: str) -> bytes | None:
        """The thumbnail of ``result_id``'s overlay in ``store``; None when it has none."""
        with self._lock:
            if result_id in self._items:
                self._items.move_to_end(result_id)
                return self._items[result_id]
        overlay = store.png(result_id, "overlay")
        if overlay is None:
            return None
        data = thumbnail(overlay)
        with self._lock:
            if result_id not in self._items:
                self._items[result_id] = data
                self._bytes += len(data)
            while self._bytes > self.max_bytes and len(self._items) > 1:
                _, old = self._items.popitem(last=False)
                self._bytes -= len(old)
        return data


def add_thumb_route(app: Any, store: Any, bad_request: Any, valid_id: Any) -> None:
    """``GET /v1/results/{id}/thumb.png`` on ``app`` (register it before the map/mask/overlay route)."""
    cache = ThumbCache()

    @app.get("/v1/results/{result_id}/thumb.png", summary="A result's overlay, at most 160 px",
             responses={200: {"content": {"image/png": {}}}})
    async def result_thumb(result_id: str) -> Response:
        return await png_answer(result_id, lambda: cache.get(store, result_id), bad_request, valid_id)
