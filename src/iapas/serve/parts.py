"""A part's names as the line gives them: the optional ``part_id`` of ``POST /v1/inspect`` and
the upload's file name, checked where they come in, and the history queries over them.

Neither ever becomes a path (files are named by the result id, :mod:`iapas.serve.store`); a part
id is still held to a strict pattern so that it can be searched, shown and logged as it is.
"""

from __future__ import annotations

import re
from typing import Any

PART_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/-]{0,63}$")
AFTER_PATTERN = re.compile(r"^[0-9a-f]{1,32}$")
MAX_FILENAME = 200


def part_id_problem(value: str) -> str | None:
    """Why ``value`` is not a part id (one line), None when it is one."""
    if PART_ID_PATTERN.fullmatch(value) and ".." not in value:
        return None
    return (f"part_id {value[:80]!r} is not a part id: 1 to 64 letters, digits and . _ : / -, "
            "starting with a letter or digit, no '..'")


def clean_filename(name: str) -> str:
    """The upload's file name as shown and stored: its last path component, without control
    characters, at most :data:`MAX_FILENAME` characters (``'upload'`` when nothing is left)."""
    base = re.split(r"[\\/]", name)[-1]
    base = "".join(c for c in base if c.isprintable())[:MAX_FILENAME].strip()
    return base or "upload"


def after_problem(value: str, name: str = "after") -> str | None:
    """Why ``value`` cannot be an ``after`` (``before``) bound (a result id or a prefix of one), None when it can."""
    return None if AFTER_PATTERN.fullmatch(value) else f"{name} must be a result id or its first hex digits (0-9a-f)"


def select(records: list[dict[str, Any]], *, decision: str | None = None, category: str | None = None,
           part_id: str | None = None, after: str | None = None, before: str | None = None,
           disposition: str | None = None, audit: bool | None = None) -> list[dict[str, Any]]:
    """The records that pass every filter given, in the order given. ``after`` / ``before``: ids
    that sort after / before it (ids start with their time in milliseconds, so a prefix of 12 hex
    digits is a time); ``before`` pages back through the history. ``disposition``: the current
    one (``"none"``: not yet given); ``audit``: drawn for audit or not."""
    def keep(r: dict[str, Any]) -> bool:
        rid = r.get("id") or r.get("key") or ""
        return ((disposition is None or r.get("disposition") == (None if disposition == "none" else disposition))
                and (audit is None or (r.get("audit") is True) == audit)
                and (decision is None or r.get("decision") == decision)
                and (category is None or r.get("category") == category)
                and (part_id is None or r.get("part_id") == part_id)
                and (after is None or rid > after)
                and (before is None or rid < before))
    return [r for r in records if keep(r)]
