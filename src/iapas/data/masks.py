"""Ground-truth masks as boolean arrays, whatever the file stores.

Datasets store masks as 0/255 PNGs (MVTec AD), anti-aliased 8-bit PNGs (MTD), palette BMPs whose raw
indices are 0/1 (KSDD1), 1-bit images, 16-bit PNGs, or small label maps (VisA). The rule, on the
file's RAW values (palette indices, not palette colours):

- values only 0 and 1 (or a 1-bit image): defect where > 0;
- integer values all below half the range (max < 128 for 8-bit, < 32768 for 16-bit): a label map
  (0 = background, integers = defect or instance ids; VisA masks number their instances, so they
  can have any number of distinct values): defect where > 0;
- otherwise: defect where the value is > 128/255 of the largest value the format can hold
  (> 128 for 8-bit, as the paper's reference code's ``cv2.threshold(gt, 128, 255,
  THRESH_BINARY)``; > 32896 for 16-bit), which binarises anti-aliased edges at about 50% (a 0/255
  mask with a few anti-aliased values in between has max 255, so it is binarised, not a label map).

Colour masks use the largest channel, so a pure red mask is read as a mask.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

class MaskError(ValueError):
    """A mask file is unreadable or does not fit its image; the message names the file(s)."""


def _raw_values(image: "Image.Image") -> tuple[np.ndarray, float]:  # noqa: F821 - PIL imported lazily
    """The raw pixel values (2-D) and the largest value the mode can hold."""
    mode = image.mode
    if mode == "1":
        return np.asarray(image, dtype=np.uint8), 1.0
    if mode in ("L", "P"):
        return np.asarray(image, dtype=np.uint8), 255.0
    if mode in ("I;16", "I;16B", "I;16L", "I;16N"):
        return np.asarray(image).astype(np.uint32), 65535.0
    if mode == "I":
        arr = np.asarray(image, dtype=np.int64)
        return arr, 255.0 if int(arr.max(initial=0)) <= 255 else 65535.0
    if mode == "F":
        arr = np.nan_to_num(np.asarray(image, dtype=np.float64))
        return arr, 1.0 if float(arr.max(initial=0.0)) <= 1.0 else 255.0
    if mode in ("LA", "PA"):
        return np.asarray(image, dtype=np.uint8)[..., 0], 255.0
    # RGB, RGBA, CMYK, YCbCr, ...: the largest colour channel.
    rgb = np.asarray(image.convert("RGB"), dtype=np.uint8)
    return rgb.max(axis=2), 255.0


def _distinct_values(values: np.ndarray) -> np.ndarray:
    if values.dtype.kind in "ub" or (values.dtype.kind == "i" and int(values.min()) >= 0):
        counts = np.bincount(values.ravel().astype(np.int64))
        return np.flatnonzero(counts)
    return np.unique(values)


def binarize_mask(values: np.ndarray, max_value: float = 255.0) -> np.ndarray:
    """Boolean defect mask from raw values (see the module docstring for the rule)."""
    values = np.asarray(values)
    if values.size == 0:
        return np.zeros(values.shape, dtype=bool)
    if values.dtype == bool:
        return values.copy()
    distinct = _distinct_values(values)
    if np.all((distinct == 0) | (distinct == 1)):
        return values > 0
    integral = bool(np.all(np.mod(distinct, 1) == 0))
    if integral and float(distinct.max()) < max_value / 2:
        return values > 0  # a label map, however many ids
    return values > max_value * 128 / 255  # exact: 8-bit > 128 (the reference's threshold), 16-bit > 32896


def _size_of(path: Path) -> tuple[int, int]:
    """(H, W) of an image file, from its header."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            width, height = im.size
    except FileNotFoundError:
        raise MaskError(f"{path}: image file not found") from None
    except (UnidentifiedImageError, OSError) as exc:
        raise MaskError(f"{path}: cannot read the image header: {exc}") from None
    return height, width


def load_mask(
    path: str | Path,
    expected_size: tuple[int, int] | None = None,
    image_path: str | Path | None = None,
) -> np.ndarray:
    """Read a mask file as a ``(H, W)`` bool array (True = defect).

    ``expected_size`` is the image's ``(H, W)``; when it is None and ``image_path`` is given, the
    image header gives it. A mask of another size raises :class:`MaskError` naming both files.
    The raw file values are used, not EXIF orientation or palette colours.
    """
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if expected_size is None and image_path is not None:
        expected_size = _size_of(Path(image_path))
    try:
        with Image.open(path) as im:
            im.load()
            values, max_value = _raw_values(im)
    except FileNotFoundError:
        raise MaskError(f"{path}: mask file not found") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise MaskError(f"{path}: not a readable mask image: {exc}") from None
    mask = binarize_mask(values, max_value)
    if expected_size is not None and tuple(mask.shape) != tuple(expected_size):
        h, w = expected_size
        image = f"its image {image_path}" if image_path is not None else "its image"
        raise MaskError(
            f"mask {path} is {mask.shape[1]}x{mask.shape[0]} (WxH) but {image} is {w}x{h}: "
            "the mask must have the image's size"
        )
    return mask


def sample_mask(sample: "Sample", expected_size: tuple[int, int] | None = None) -> np.ndarray:  # noqa: F821
    """The ground truth of a :class:`~iapas.data.base.Sample` at its image's size.

    All zeros when the sample has no mask file (normal samples). The image's size is read from its
    header unless ``expected_size`` gives it.
    """
    if expected_size is None:
        expected_size = _size_of(Path(sample.path))
    if sample.mask_path is None:
        return np.zeros(expected_size, dtype=bool)
    return load_mask(sample.mask_path, expected_size, image_path=sample.path)


def check_mask(sample: "Sample") -> str | None:  # noqa: F821
    """A problem with a sample's mask as one sentence, or None when it reads and fits its image."""
    if sample.mask_path is None:
        return None
    try:
        load_mask(sample.mask_path, image_path=sample.path)
    except MaskError as exc:
        return str(exc)
    return None
