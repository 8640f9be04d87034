"""Reading images as factory cameras write them, and writing files atomically.

Every reader error is an :class:`ImageReadError` whose message names the file and the problem.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import tempfile
import threading
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
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


def _is_hidden(path: Path, root: Path) -> bool:
    return any(part.startswith(".") for part in path.relative_to(root).parts)


# Ground-truth masks, by the names the dataset loaders (iapas.data) give them. An image search of a
# folder or a glob pattern never takes them as inspection images; a file named by itself is taken.
MASK_NAME_SUFFIXES = ("_mask", "_label", "_gt")  # MVTec layout, folder datasets; KSDD1, DAGM; KSDD2 (_GT)
MASK_FOLDERS = ("ground_truth", "label", "masks")  # MVTec layout; DAGM's Label/; VisA's Data/Masks/, folder datasets
MTD_IMAGE_FOLDER = "imgs"  # MTD: MT_<Class>/Imgs/<name>.png is the mask of the <name>.jpg beside it


def mask_rule(path: Path, root: Path | None = None) -> str | None:
    """The naming rule by which ``path`` is a dataset's ground-truth mask (``'*_label.*'``,
    ``'ground_truth/'``, ...), or None. Folder names count from ``root`` (the folder searched,
    itself included) down to the file; without ``root``, the file's own folder only."""
    stem = path.stem.lower()
    for suffix in MASK_NAME_SUFFIXES:
        if stem.endswith(suffix) and len(stem) > len(suffix):
            return f"*{suffix}.*"
    folder = Path(os.path.abspath(path)).parent
    folders = [folder.name]
    if root is not None:
        base = Path(os.path.abspath(root))
        with contextlib.suppress(ValueError):
            folders = [base.name, *folder.relative_to(base).parts]
    for name in folders:
        if name.lower() in MASK_FOLDERS:
            return f"{name}/"
    if folder.name.lower() == MTD_IMAGE_FOLDER and path.suffix.lower() == ".png":
        others = [s for s in IMAGE_SUFFIXES if s != ".png"]
        if any(path.with_suffix(s).is_file() for s in others + [s.upper() for s in others]):
            return f"{folder.name}/<name>.png beside <name>.jpg"
    return None


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


def _images_in(folder: Path, search: "ImageSearch", mask_root: Path | None = None) -> list[Path]:
    """Image files under ``folder``, recursively, skipping hidden files and folders (such as
    macOS ``._name.png`` companions). Ground-truth masks (see :func:`mask_rule`, with folder
    names counted from ``mask_root``, by default ``folder``) go to ``search.masks``; links named as
    images that cannot be followed are kept (reading them fails with the reason), other such
    links are logged, one line each."""
    images: list[Path] = []
    for q in sorted(folder.rglob("*")):
        if _is_hidden(q, folder):
            continue
        reason = broken_link(q)
        if q.suffix.lower() not in IMAGE_SUFFIXES:
            if reason:
                logger.warning("%s: %s; not searched", q, reason)
            continue
        if not (reason or q.is_file()):
            continue
        rule = mask_rule(q, mask_root or folder)
        if rule:
            search.masks.append((q, rule))
        else:
            images.append(q)
    return images


def glob_root(pattern: str) -> Path:
    """The folder a glob pattern searches: its leading components without wildcards
    (``parts/*/good/*.png`` -> ``parts``)."""
    parts = Path(os.path.expanduser(pattern)).parts
    fixed: list[str] = []
    for part in parts:
        if any(ch in part for ch in "*?["):
            break
        fixed.append(part)
    return Path(*fixed) if fixed else Path(".")


@dataclass
class ImageSearch:
    """What :func:`search_images` found: images, each with the folder its output key is relative
    to; messages for inputs that matched nothing; ground-truth masks left out (with the rule that
    matched); inputs whose images all lie inside the excluded folder."""

    found: list[tuple[Path, Path]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    masks: list[tuple[Path, str]] = field(default_factory=list)
    excluded_inputs: list[str] = field(default_factory=list)

    @property
    def paths(self) -> list[Path]:
        return [q for q, _ in self.found]


def search_images(inputs: list[str], exclude: Path | None = None, *, keep_missing: bool = False) -> ImageSearch:
    """Expand files, folders (recursively) and glob patterns into image paths.

    Files named explicitly are kept whatever their suffix or name (so a bad one gets a clear
    error later, and a mask named by itself is taken). Folder and pattern searches leave out
    ground-truth masks (:func:`mask_rule`; one log line says how many and why) and hidden files,
    and keep links named as images that cannot be followed (reading them fails with the reason).
    Anything under ``exclude`` (e.g. the run's own output folder) is left out. With
    ``keep_missing``, files named explicitly that do not exist, and links that cannot be
    followed, are returned too (so that a run can record them as failed) instead of as problems.

    Each image comes with the folder its output key is relative to, which depends on its own
    input only: a folder given (or a pattern's fixed leading folders) when it is the only input
    that found images, else that folder's parent (so keys start with the folder's name); a file's
    own folder for a file named explicitly (its key is its name).
    """
    import glob

    search = ImageSearch()
    excluded = os.path.abspath(exclude) if exclude is not None else None
    per_input: list[tuple[str, Path, bool, list[Path]]] = []  # item, its root, searched (not a file), images
    for item in inputs:
        p = Path(item).expanduser()
        masks_before = len(search.masks)
        if p.is_dir():
            found = _images_in(p, search)
            if not found:
                masks = len(search.masks) - masks_before
                but = f"; only {masks} ground-truth mask(s), left out" if masks else ""
                search.problems.append(f"{show_path(p)}: directory has no images ({', '.join(IMAGE_SUFFIXES)}){but}")
            per_input.append((item, p, True, found))
        elif p.exists() or p.is_symlink():
            per_input.append((item, p.parent, False, [p]))
        elif any(ch in item for ch in "*?["):
            root = glob_root(item)
            found = []
            for match in sorted(glob.glob(os.path.expanduser(item), recursive=True)):
                q = Path(match)
                if q.is_dir():
                    found.extend(_images_in(q, search, root))
                elif q.is_file() or broken_link(q):
                    rule = mask_rule(q, root)
                    if rule:
                        search.masks.append((q, rule))
                    else:
                        found.append(q)
            if not found:
                search.problems.append(f"{show_path(item)}: pattern matched no files")
            per_input.append((item, root, True, found))
        elif keep_missing:
            per_input.append((item, p.parent, False, [p]))
        else:
            search.problems.append(f"{show_path(p)}: file not found")
    unique: dict[str, tuple[Path, int]] = {}
    for index, (item, _root, _searched, found) in enumerate(per_input):
        inside = 0
        for q in found:
            absolute = os.path.abspath(q)
            if excluded is not None and (absolute == excluded or absolute.startswith(excluded.rstrip(os.sep) + os.sep)):
                inside += 1
                continue
            reason = broken_link(q)
            if reason and not keep_missing:
                search.problems.append(f"{show_path(q)}: {reason}")
                continue
            unique.setdefault(os.path.realpath(q), (q, index))  # realpath: never raises, even on a loop
        if found and inside == len(found):
            search.excluded_inputs.append(item)
    several = len({index for q, index in unique.values() if q.exists()}) > 1
    for q, index in unique.values():
        _item, root, searched, _found = per_input[index]
        search.found.append((q, Path(os.path.abspath(root)).parent if searched and several else root))
    _log_masks(search)
    return search


def _log_masks(search: ImageSearch) -> None:
    """One line on the masks a search left out: how many, by which rules, an example."""
    masks = {os.path.realpath(q): (q, rule) for q, rule in search.masks}
    if masks:
        counts: dict[str, int] = {}
        for _q, rule in masks.values():
            counts[rule] = counts.get(rule, 0) + 1
        rules = ", ".join(f"{rule} {n}" for rule, n in counts.items())
        example = next(iter(masks.values()))[0]
        logger.warning(
            "left out %d mask image(s), named as datasets name their ground-truth masks (%s; e.g. %s); "
            "name a file by itself to take it", len(masks), rules, example,
        )


def find_images_with_roots(
    inputs: list[str], exclude: Path | None = None, *, keep_missing: bool = False
) -> tuple[list[tuple[Path, Path]], list[str]]:
    """:func:`search_images` as ``(found, problems)``: each image with the folder its output key
    is relative to (see :func:`iapas.runner.assign_keys`)."""
    search = search_images(inputs, exclude, keep_missing=keep_missing)
    return search.found, search.problems


def find_images(inputs: list[str], exclude: Path | None = None) -> tuple[list[Path], list[str]]:
    """:func:`search_images` as ``(paths, problems)``: problems are messages for inputs that
    matched nothing."""
    search = search_images(inputs, exclude)
    return search.paths, search.problems


def file_stamp(path: str | Path) -> dict[str, int] | None:
    """Size and modification time of a file, to notice a changed input (None if unreadable)."""
    try:
        st = Path(path).stat()
    except OSError:
        return None
    return {"size": int(st.st_size), "mtime_ns": int(st.st_mtime_ns)}


_umask_lock = threading.Lock()
_umask_cache: list[int] = []


def current_umask() -> int:
    """The process umask, read without changing it where the system allows (Linux's
    /proc/self/status); elsewhere set-and-restored once, under a lock, and cached."""
    with _umask_lock:
        if not _umask_cache:
            try:
                with open("/proc/self/status", encoding="ascii") as fh:
                    for line in fh:
                        if line.startswith("Umask:"):
                            _umask_cache.append(int(line.split()[1], 8))
                            break
            except (OSError, ValueError):
                pass
            if not _umask_cache:
                mask = os.umask(0o022)
                os.umask(mask)
                _umask_cache.append(mask)
        return _umask_cache[0]


# Temporary names of atomic_path: '.NAME.XXXXXXXX.tmp.SUFFIX' (mkstemp's eight random characters).
_TEMP_NAME = re.compile(r"^\..+\.[a-z0-9_]{8}\.tmp(\.[^.]+)?$")


def clean_stale_temp_files(folder: str | Path) -> int:
    """Remove the half-written temporary files that atomic writes of a killed process left
    anywhere under ``folder``; returns how many. Call it before a run writes into ``folder``."""
    removed = 0
    for dirpath, _dirs, files in os.walk(folder):
        for name in files:
            if _TEMP_NAME.match(name):
                try:
                    os.unlink(os.path.join(dirpath, name))
                    removed += 1
                except FileNotFoundError:
                    pass
    return removed


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | Path, *, sync_folder: bool = False) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it is synced to disk and renamed over
    ``path``, with the permissions a plainly created file would get (0666 less the umask).
    ``sync_folder`` also syncs the folder, so that the rename itself survives a power cut."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp" + path.suffix, dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        os.chmod(tmp_path, 0o666 & ~current_umask())  # mkstemp makes 0600 files
        yield tmp_path
        _fsync_path(tmp_path)
        os.replace(tmp_path, path)
        if sync_folder:
            with contextlib.suppress(OSError):  # not every system can sync a folder
                _fsync_path(path.parent)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically and durably (data and folder entry synced)."""
    with atomic_path(path, sync_folder=True) as tmp:
        with open(tmp, "wb") as fh:
            fh.write(data)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def save_png(path: str | Path, array: np.ndarray, compress_level: int = 6) -> None:
    """Save a 2-D uint8/uint16 or ``(H, W, 3)`` uint8 array as PNG, atomically.

    ``compress_level`` is zlib's 0-9: 1 is several times faster for photographic content."""
    from PIL import Image

    arr = np.ascontiguousarray(array)
    if arr.dtype == np.uint16 and arr.ndim != 2:
        raise ValueError("16-bit PNGs must be 2-D")
    if arr.dtype not in (np.uint8, np.uint16):
        raise ValueError(f"save_png takes uint8 or uint16 arrays, got {arr.dtype}")
    image = Image.fromarray(arr)
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG", compress_level=compress_level)
