"""What the station holds for requests in flight, bounded: upload bytes and image pixels.

Every request reserves what it holds from a :class:`Budget` shared by all requests and gives it
back when it is answered: the bytes of its upload as they arrive (so that stalled or slow
uploads cannot pin more than ``--max-inflight-mb`` together), and the pixels of its image,
read from the header before anything is decoded (so that large images in flight, decoded,
queued and run through the models, stay under ``--pixel-budget-mpx`` together). What does not
fit now is answered 503 with ``Retry-After``; what could never fit, 413.
"""

from __future__ import annotations

import io
import threading
import warnings
from dataclasses import dataclass, field


@dataclass
class Budget:
    """A total shared by all requests in flight (bytes or pixels), thread-safe."""

    total: int
    used: int = 0
    peak: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def take(self, amount: int) -> bool:
        """Reserve ``amount`` if it fits; False (nothing reserved) when it does not."""
        with self._lock:
            if self.used + amount > self.total:
                return False
            self.used += amount
            self.peak = max(self.peak, self.used)
            return True

    def give(self, amount: int) -> None:
        with self._lock:
            self.used -= amount


@dataclass
class Held:
    """What one request holds of each budget; :meth:`release` gives it all back."""

    budgets: dict[str, Budget]
    amounts: dict[str, int] = field(default_factory=dict)

    def take(self, name: str, amount: int) -> bool:
        if not self.budgets[name].take(amount):
            return False
        self.amounts[name] = self.amounts.get(name, 0) + amount
        return True

    def release(self) -> None:
        for name, amount in self.amounts.items():
            self.budgets[name].give(amount)
        self.amounts.clear()


def header_pixels(data: bytes, formats: tuple[str, ...], max_pixels: int) -> int | None:
    """Width x height read from the image header only (PIL opens lazily: nothing is decoded);
    None when PIL cannot open it (the decoder then says why). PIL's own bomb limit is raised to
    ``max_pixels`` as the decoder raises it, so that an image the decoder will accept is never
    unreadable here (and so never left out of the budget)."""
    from PIL import Image

    from iapas.core.images import _pil_pixel_limit

    try:
        with warnings.catch_warnings(), _pil_pixel_limit(max_pixels):
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(data), formats=formats) as im:
                width, height = im.size
    except Exception:  # noqa: BLE001 - any failure is reported by the real decode
        return None
    return int(width) * int(height)
