"""Reading images as factory cameras write them.

Every reader error is an :class:`ImageReadError` whose message names the file and the problem.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import threading
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
# Refuse images above this many pixels before decoding them (decompression bombs).
DEFAULT_MAX_PIXELS = 200_000_000
MIN_SIDE = 8

logger = logging.getLogger(__name__)


class ImageReadError(ValueError):
    """An image could not be used; the message names the file (:func:`show_path`) and why."""


def show_path(path: str | Path) -> str:
    """A file name for a one-line message: as it is, or quoted like ``repr`` (``'a\\nb.png'``)
    when it holds a newline or another unprintable character that would break or hide in the line."""
    text = str(path)
    return text if text.isprintable() else repr(text)


@dataclass(frozen=True)
class LoadedImage:
    path: Path
    rgb: np.ndarray  # (H, W, 3) uint8, EXIF orientation applied
    mode: str  # the file's original PIL mode, e.g. 'L', 'I;16', 'RGBA', 'P', 'CMYK'

    @property
    def height(self) -> int:
        return int(self.rgb.shape[0])

    @property
    def width(self) -> int:
        return int(self.rgb.shape[1])


def high_bit_depth_to_uint8(values: np.ndarray) -> np.ndarray:
    """Integer data of 8 to 16 bits per pixel to uint8, linearly over the smallest of 8, 10, 12,
    14 or 16 bits that holds the maximum (so 12-bit camera data is not left nearly black)."""
    arr = np.asarray(values, dtype=np.float64)
    top = float(arr.max(initial=0.0))
    bits = next((b for b in (8, 10, 12, 14) if top < 2**b), 16)
    return np.clip(arr * (255.0 / (2**bits - 1)), 0, 255).round().astype(np.uint8)


def to_rgb8(image: "Image.Image") -> np.ndarray:  # noqa: F821 - PIL imported lazily
    """Any PIL image to ``(H, W, 3)`` uint8 RGB.

    16-bit and 32-bit integer images are mapped linearly from [0, 2^b - 1] to [0, 255], where b
    is the smallest of 8, 10, 12, 14 and 16 bits that holds the image's maximum (cameras store
    10/12-bit data in 16-bit files); float images from [0, 1] (or [0, 255] when their maximum is
    above 1). Alpha is composited on black, palettes and CMYK are converted by PIL.
    """
    from PIL import Image

    mode = image.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        arr = high_bit_depth_to_uint8(np.asarray(image))
        return np.repeat(arr[..., None], 3, axis=2)
    if mode == "F":
        arr = np.asarray(image, dtype=np.float64)
        arr = np.nan_to_num(arr, nan=0.0, posinf=0.0, neginf=0.0)
        scale = 255.0 if float(arr.max(initial=0.0)) <= 1.0 else 1.0
        arr = np.clip(arr * scale, 0, 255).round().astype(np.uint8)
        return np.repeat(arr[..., None], 3, axis=2)
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        black = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        image = Image.alpha_composite(black, rgba)
    return np.asarray(image.convert("RGB"), dtype=np.uint8)


_pil_limit_lock = threading.Lock()
_pil_limits: list[int] = []  # the max_pixels of the reads in progress
_pil_saved_limit: list[int | None] = []  # PIL's own limit before the first of them


@contextlib.contextmanager
def _pil_pixel_limit(max_pixels: int) -> Iterator[None]:
    """While reads are in progress, raise PIL's global decompression-bomb limit to the largest
    ``max_pixels`` among them (never lower it), so that PIL does not refuse an image our own
    limit allows; PIL's own value comes back when the last read ends. Our check on the header's
    size is what enforces each call's limit."""
    from PIL import Image

    with _pil_limit_lock:
        if not _pil_limits:
            _pil_saved_limit[:] = [Image.MAX_IMAGE_PIXELS]
        _pil_limits.append(max_pixels)
        _apply_pil_limit(Image)
    try:
        yield
    finally:
        with _pil_limit_lock:
            _pil_limits.remove(max_pixels)
            if _pil_limits:
                _apply_pil_limit(Image)
            else:
                Image.MAX_IMAGE_PIXELS = _pil_saved_limit[0]


@contextlib.contextmanager
def open_own_png(source: bytes | str | Path) -> Iterator[Any]:
    """A PNG that iapas wrote (bytes or a file), opened with PIL and allowed its own size, read
    from its header: maps and pictures of images taken under a ``--max-pixels`` above PIL's
    decompression-bomb limit are that large, and PIL would refuse to open them."""
    import io

    from PIL import Image

    if isinstance(source, bytes):
        head, opened = source[:24], io.BytesIO(source)
    else:
        with open(source, "rb") as file:
            head, opened = file.read(24), source
    is_png = head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR"
    pixels = int.from_bytes(head[16:20], "big") * int.from_bytes(head[20:24], "big") if is_png else 0
    with _pil_pixel_limit(pixels), Image.open(opened, formats=("PNG",)) as im:
        yield im


def _apply_pil_limit(image_module: Any) -> None:
    saved = _pil_saved_limit[0]
    image_module.MAX_IMAGE_PIXELS = None if saved is None else max(saved, *_pil_limits)


def read_image(path: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> LoadedImage:
    """Read one image file for the models; raise :class:`ImageReadError` on any problem."""
    path = Path(path)
    name = show_path(path)
    link_problem = broken_link(path)
    if link_problem:
        raise ImageReadError(f"{name}: {link_problem}")
    if not path.exists():
        raise ImageReadError(f"{name}: file not found")
    if path.is_dir():
        raise ImageReadError(f"{name}: is a directory, not an image")
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise ImageReadError(f"{name}: cannot stat: {exc.strerror or exc}") from None
    if size == 0:
        raise ImageReadError(f"{name}: empty file (0 bytes)")
    return _decode(path, path, name, max_pixels)


# The formats an upload may be in (the type is read from the content, never from a name).
UPLOAD_FORMATS = ("PNG", "JPEG", "BMP", "TIFF", "WEBP")


def read_image_bytes(data: bytes, name: str, max_pixels: int = DEFAULT_MAX_PIXELS) -> LoadedImage:
    """Decode an image sent as bytes (an upload) with :func:`read_image`'s checks and messages;
    ``name`` stands for the file in messages and in ``LoadedImage.path``. Only the formats of
    :data:`UPLOAD_FORMATS` are read, whatever the name says."""
    import io as _io

    shown = show_path(name)
    if not data:
        raise ImageReadError(f"{shown}: empty file (0 bytes)")
    return _decode(_io.BytesIO(data), Path(name), shown, max_pixels, formats=UPLOAD_FORMATS)


def _decode(source: Any, path: Path, name: str, max_pixels: int, formats: tuple[str, ...] | None = None) -> LoadedImage:
    """Open ``source`` (a path or a binary file object) with PIL under the pixel guard."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with warnings.catch_warnings(), _pil_pixel_limit(max_pixels):
            # our own limit below is the one that counts; PIL's warning would only be noise
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(source, formats=formats) as im:
                width, height = im.size
                if width * height > max_pixels:
                    raise ImageReadError(
                        f"{name}: {width}x{height} pixels is over the limit of {max_pixels:,} "
                        "(a decompression-bomb guard); raise it with --max-pixels if the image is genuine"
                    )
                if min(width, height) < MIN_SIDE:
                    raise ImageReadError(f"{name}: {width}x{height} pixels is too small (each side must be >= {MIN_SIDE})")
                im.load()
                mode = im.mode
                im = ImageOps.exif_transpose(im)
                rgb = to_rgb8(im)
    except ImageReadError:
        raise
    except PermissionError:
        raise ImageReadError(f"{name}: permission denied") from None
    except UnidentifiedImageError:
        raise ImageReadError(f"{name}: not an image file PIL can read (unknown or unsupported format)") from None
    except Image.DecompressionBombError:
        raise ImageReadError(
            f"{name}: refused as a decompression bomb (a frame or layer is over the limit of {max_pixels:,} pixels); "
            "raise it with --max-pixels if the image is genuine"
        ) from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageReadError(f"{name}: corrupt or truncated image: {exc}") from None
    return LoadedImage(path=path, rgb=np.ascontiguousarray(rgb), mode=mode)


def broken_link(path: str | Path) -> str | None:
    """What is wrong with ``path`` when it is a symbolic link that cannot be followed, else None."""
    if not os.path.islink(path):
        return None
    try:
        os.stat(path)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "symbolic link loop (following it leads back to a link already followed)"
        if exc.errno in (errno.ENOENT, errno.ENOTDIR):
            try:
                target = os.readlink(path)
            except OSError:
                target = "?"
            return f"dangling symbolic link (its target {target!r} does not exist)"
        return f"cannot follow the symbolic link: {exc.strerror or exc}"
    return None
