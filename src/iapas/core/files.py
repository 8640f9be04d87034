"""Writing files so that nothing already written is lost: atomic writes, PNGs, stale temporary files."""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np


RESULTS_FILE = "results.jsonl"  # a segment run folder's records (iapas.engine.records writes both)
RUN_FILE = "run.json"


def is_run_folder(folder: Path) -> bool:
    """Whether ``folder`` holds an iapas run (a segment run, an evaluation's predictions, a
    station store's category): its ``run.json`` and ``results.jsonl``."""
    return (folder / RUN_FILE).is_file() and (folder / RESULTS_FILE).is_file()


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
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp" + path.suffix, dir=path.parent)
    except OSError as exc:  # name the file the caller asked for, not the temporary one
        raise type(exc)(exc.errno, exc.strerror, str(path)) from None
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
    except OSError as exc:
        if exc.filename != str(tmp_path):
            raise
        raise type(exc)(exc.errno, exc.strerror, str(path)) from None
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
