"""When the output disk cannot take more: which errors stop a run, and the resume hint.

A write that fails with ENOSPC (no space left), EDQUOT (quota exceeded) or EROFS (the file
system became read-only) will fail for every later image too, so a run stops scheduling new
images on the first one, keeps what is complete, removes the partial outputs of the image that
failed, and says how to resume (:func:`resume_command`) once there is room again.
"""

from __future__ import annotations

import errno
import shlex
from collections.abc import Sequence

STOP_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS})


class DiskFullError(OSError):
    """A write failed for lack of space (or a read-only file system): the run must stop."""


def is_disk_full(exc: BaseException) -> bool:
    """Whether ``exc`` (or what it was raised from) is a write error that stops a run."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, DiskFullError) or (isinstance(current, OSError) and current.errno in STOP_ERRNOS):
            return True
        current = current.__cause__ or current.__context__
    return False


def stop_reason(exc: BaseException) -> str:
    """``'no space left on device (results/maps/a.png)'``: what stopped the run, in words."""
    import os

    code = getattr(exc, "errno", None)
    words = os.strerror(code).lower() if code in STOP_ERRNOS else str(exc)
    where = getattr(exc, "filename", None)
    return f"{words} ({where})" if where else words


def resume_command(argv: Sequence[str], program: str = "iapas") -> str:
    """The command line that resumes a run: ``argv`` without ``--restart`` (which would discard
    what was saved), quoted for a POSIX shell."""
    return shlex.join([program, *(a for a in argv if a != "--restart")])
