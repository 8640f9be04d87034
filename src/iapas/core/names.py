"""Names that become paths: one rule for categories, product names and result ids, and the check
that a path built from them stays inside its root.

A name is 1 to 64 ASCII letters, digits, ``_``, ``.`` and ``-``, not starting with ``.`` or
``-``: every dataset's categories (``metal_nut``, ``01``, ``kos01``, ``pcb1``, ``pipe_fryum``,
``Class1``, ``Woven_001``) and products like ``bottle-2`` or ``cap.v2`` pass; ``..``, ``.hidden``,
``-rf``, ``a/b``, ``a\\b``, absolute paths, spaces, control characters and non-ASCII letters do
not. :func:`check_name` is called where a name enters (profile load, command line, API);
:func:`path_inside` where a path is built from one, so that a name that slipped through still
cannot leave its folder.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

MAX_NAME = 64
NAME_PATTERN = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,%d}" % (MAX_NAME - 1))
NAME_RULE = f"1 to {MAX_NAME} ASCII letters, digits, '_', '.' or '-', not starting with '.' or '-'"


class BadNameError(ValueError):
    """A name that would become a path is not a plain name; the message says which and why."""


class OutsideRootError(ValueError):
    """A path built from names resolves outside the folder it belongs in."""


def _problem(value: str) -> str:
    if not value:
        return "it is empty"
    if any(sep in value for sep in ("/", "\\")):
        return "it contains a path separator"
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        return "it contains a control character"
    if value[0] in ".-":
        return f"it starts with {value[0]!r}"
    if len(value) > MAX_NAME:
        return f"it is {len(value)} characters long"
    bad = next(c for c in value if not NAME_PATTERN.fullmatch("a" + c))
    return f"it contains {ascii(bad)}"


def check_name(value: object, what: str) -> str:
    """``value`` when it is a plain name (see the module), else :class:`BadNameError`:
    ``"<what> '<value>' is not a valid name (<why>): use <rule>"``."""
    if not isinstance(value, str):
        raise BadNameError(f"{what} must be a name ({NAME_RULE}), got {type(value).__name__}")
    if NAME_PATTERN.fullmatch(value):
        return value
    shown = ascii(value) if len(value) <= MAX_NAME else ascii(value[:MAX_NAME]) + "..."
    raise BadNameError(f"{what} {shown} is not a valid name ({_problem(value)}): use {NAME_RULE}")


def name_from(value: str, fallback: str = "folder") -> str:
    """A valid name made from ``value`` (a folder's own name, say): each character outside the
    rule becomes ``_``, leading ``.``, ``-`` and ``_`` go, at most :data:`MAX_NAME` characters;
    ``fallback`` when nothing is left."""
    cleaned = re.sub(r"[^A-Za-z0-9_.-]", "_", value).lstrip(".-_")[:MAX_NAME]
    return cleaned if NAME_PATTERN.fullmatch(cleaned) else fallback


def path_inside(root: str | os.PathLike[str], *parts: str) -> Path:
    """``root/parts...``, after checking that it resolves (symbolic links and ``..`` followed)
    inside ``root`` and is not ``root`` itself; else :class:`OutsideRootError`. The path is
    returned as joined (not resolved), so that the names a run records do not change."""
    base = Path(root)
    path = base.joinpath(*parts)
    top = base.resolve()
    resolved = path.resolve()
    if top not in resolved.parents:
        raise OutsideRootError(f"{'/'.join(parts)!s} leads outside {base} (to {resolved}); refused")
    return path


__all__ = ["MAX_NAME", "NAME_PATTERN", "NAME_RULE", "BadNameError", "OutsideRootError", "check_name", "name_from", "path_inside"]
