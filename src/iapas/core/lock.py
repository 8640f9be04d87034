"""One run per output folder: an exclusive lock file ``OUT/.iapas.lock``.

Two runs writing into one folder would segment every image twice and interleave their
``results.jsonl`` lines. A run takes the lock with :func:`output_lock` before it writes anything;
a second run into the same folder is refused with :class:`OutputLockedError`, whose message names
the holder (command, pid, host, start time).

The lock file holds the holder's pid, host and command as JSON. It appears under its final name
already locked with ``fcntl.flock`` (written to a temporary name, locked, then hard-linked into
place, which fails when the name exists, as ``O_EXCL`` would), and it is removed when the run
ends. A run killed before it could remove it leaves the file behind, but the operating system
drops the ``flock`` with the process: such a stale lock from this host is taken over, with a log
line. A lock from another host is refused (its process cannot be checked from here); the message
says which file to remove when no run is active there.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

try:  # not on Windows: there, only the pid is checked
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]

logger = logging.getLogger(__name__)

LOCK_FILE = ".iapas.lock"


class OutputLockedError(RuntimeError):
    """Another run holds the output folder."""


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    except OSError:  # pragma: no cover
        return False
    return True


def _try_flock(fd: int) -> bool:
    """Lock ``fd`` exclusively without waiting; False when another process holds it."""
    if fcntl is None:  # pragma: no cover
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _read_holder(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def describe_holder(holder: dict[str, Any]) -> str:
    """``'iapas segment' (pid 123 on host h, since 2026-12-01 10:00:00)``"""
    command = holder.get("command") or "a run"
    since = f", since {holder['started']}" if holder.get("started") else ""
    return f"'iapas {command}' (pid {holder.get('pid', '?')} on host {holder.get('host', '?')}{since})"


def _check_existing(path: Path, host: str) -> None:
    """Remove ``path`` when it is a stale lock; raise OutputLockedError when it is held."""
    try:
        fd = os.open(path, os.O_RDWR)
    except FileNotFoundError:
        return  # released meanwhile
    try:
        free = _try_flock(fd)
        holder = _read_holder(path)
        pid = holder.get("pid")
        pid = pid if isinstance(pid, int) else -1
        same_host = holder.get("host") == host
        folder = path.parent
        if not free or (fcntl is None and same_host and _pid_alive(pid)):
            raise OutputLockedError(
                f"{folder} is in use by {describe_holder(holder)}; wait for it to end, or use another --out folder"
            )
        if holder and not same_host:
            raise OutputLockedError(
                f"{folder} is locked by {describe_holder(holder)}, on another host that cannot be checked from here; "
                f"if no run is active there, remove {path}"
            )
        why = "that process is gone" if not _pid_alive(pid) else "it no longer holds the lock"
        logger.warning("%s: taking over the stale lock of %s: %s", folder, describe_holder(holder), why)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
    finally:
        os.close(fd)


def _link_or_create(tmp: str, path: Path, fd: int) -> None:
    """Put the locked file ``tmp`` (open as ``fd``) in place as ``path``; FileExistsError when
    ``path`` exists. Where hard links are not supported, ``path`` is created with ``O_EXCL``,
    locked and written instead, and ``fd`` then refers to it."""
    try:
        os.link(tmp, path)  # same inode: the lock file appears already locked
        return
    except FileExistsError:
        raise
    except OSError:  # no hard links here (some network or FAT file systems)
        pass
    new = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    _try_flock(new)
    os.lseek(fd, 0, os.SEEK_SET)
    os.write(new, os.read(fd, 4096))
    os.fsync(new)
    os.dup2(new, fd)  # keep holding the new file's lock through fd
    os.close(new)


@contextlib.contextmanager
def output_lock(folder: str | Path, command: str) -> Iterator[Path]:
    """Hold the exclusive lock of ``folder`` (created if needed) for the ``with`` block.

    ``command`` names the holder in the refusal message of a second run (e.g. ``'segment'``).
    Raises :class:`OutputLockedError` when another live run holds it. Yields the lock file's path.
    """
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    path = out / LOCK_FILE
    host = socket.gethostname()
    holder = {
        "pid": os.getpid(),
        "host": host,
        "command": command,
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        "argv": sys.argv,
    }
    # a '.tmp' name, so that clean_stale_temp_files removes one left by a run killed right here
    fd, tmp = tempfile.mkstemp(prefix=f"{LOCK_FILE}.", suffix=".tmp", dir=out)
    try:
        _try_flock(fd)  # nobody else knows this file yet
        os.write(fd, (json.dumps(holder) + "\n").encode("utf-8"))
        os.fsync(fd)
        for _ in range(3):  # a stale lock taken over by another run meanwhile: look again
            try:
                _link_or_create(tmp, path, fd)
                break
            except FileExistsError:
                _check_existing(path, host)
        else:  # pragma: no cover - three races in a row
            raise OutputLockedError(f"{out} is in use by {describe_holder(_read_holder(path))}")
    except BaseException:
        os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)
    try:
        yield path
    finally:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        os.close(fd)
