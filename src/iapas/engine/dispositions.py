"""What people later said about a stored result: its dispositions (``dispositions.jsonl``).

A disposition is the ground truth that arrives after the verdict: the operator who confirms or
overrules an NG, the auditor who checks a part that passed. The station's store keeps them in
each category folder beside ``results.jsonl``, one JSON object per line::

    {"id": "<result id>", "disposition": "false_call", "who": "ana",
     "at": "2026-12-07T18:03:11.123456+00:00", "note": null}

The file is append-only: a later line for the same id supersedes the earlier ones, which stay as
its history. Appends are serialized by a lock and written with ``O_APPEND`` and ``fsync`` (as the
results log is); a torn or malformed line (a killed writer, a hand edit) is skipped with a
warning naming the file and line, never fatal. :mod:`iapas.product.feedback` turns these with
the records into observed rates.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import threading
from pathlib import Path
from typing import Any

from iapas.engine.log import ResultsLog

logger = logging.getLogger(__name__)

DISPOSITIONS = ("confirmed_ng", "false_call", "missed_defect", "confirmed_ok")
"""``confirmed_ng``: judged NG, the part is bad; ``false_call``: judged NG, the part is good;
``missed_defect``: judged OK, the part is bad (an escape); ``confirmed_ok``: judged OK, good."""

DISPOSITIONS_FILE = "dispositions.jsonl"

_lock = threading.Lock()  # one writer at a time in this process (the station's threads)


def check_disposition(value: Any) -> str:
    """``value`` when it is one of :data:`DISPOSITIONS`; else a one-line ValueError naming them."""
    if not isinstance(value, str) or value not in DISPOSITIONS:
        raise ValueError(f"disposition must be one of {', '.join(DISPOSITIONS)}, not {value!r}")
    return value


def utc_now() -> str:
    """The current time as ISO-8601 UTC with microseconds (``2026-12-07T18:03:11.123456+00:00``)."""
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="microseconds")


def disposition_entry(
    result_id: str, disposition: str, who: str | None = None, note: str | None = None, at: str | None = None
) -> dict[str, Any]:
    """One checked line of the file; ``at`` defaults to now."""
    if not isinstance(result_id, str) or not result_id:
        raise ValueError(f"id must be a non-empty string, not {result_id!r}")
    for name, value in (("who", who), ("note", note), ("at", at)):
        if value is not None and not isinstance(value, str):
            raise ValueError(f"{name} must be a string or null, not {type(value).__name__}")
    return {"id": result_id, "disposition": check_disposition(disposition), "who": who, "at": at or utc_now(), "note": note}


def append_disposition(folder: str | Path, entry: dict[str, Any]) -> None:
    """Append ``entry`` (checked; ``at`` filled in when absent) to ``folder/dispositions.jsonl``.

    Raises ValueError for a bad entry and OSError when the file cannot be written (nothing torn
    is left behind)."""
    line = disposition_entry(entry.get("id"), entry.get("disposition"), entry.get("who"), entry.get("note"), entry.get("at"))
    with _lock:
        ResultsLog(Path(folder) / DISPOSITIONS_FILE).append(line)


def _valid_line(path: Path, number: int, text: str) -> dict[str, Any] | None:
    try:
        entry = json.loads(text)
    except ValueError:
        logger.warning("%s:%d: skipping a malformed line (an interrupted write?)", path, number)
        return None
    try:
        if not isinstance(entry, dict):
            raise ValueError("not a JSON object")
        return disposition_entry(entry.get("id"), entry.get("disposition"), entry.get("who"), entry.get("note"), entry.get("at") or "?")
    except ValueError as exc:
        logger.warning("%s:%d: skipping a line: %s", path, number, exc)
        return None


def read_dispositions(folder: str | Path) -> dict[str, list[dict[str, Any]]]:
    """The history of each result id in ``folder/dispositions.jsonl``, oldest first (the last
    is the current disposition); {} when there is no file."""
    path = Path(folder) / DISPOSITIONS_FILE
    history: dict[str, list[dict[str, Any]]] = {}
    try:
        fh = open(path, encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return history
    with fh:
        for number, text in enumerate(fh, 1):
            text = text.strip()
            if text and (entry := _valid_line(path, number, text)) is not None:
                history.setdefault(entry["id"], []).append(entry)
    return history


def current_disposition(history: list[dict[str, Any]] | None) -> str | None:
    """The disposition in force: the last of ``history``; None when there is none."""
    return history[-1]["disposition"] if history else None


FOR_VERDICT = {"NG": ("confirmed_ng", "false_call"), "OK": ("confirmed_ok", "missed_defect")}
"""The dispositions that can be given to a verdict: an NG is confirmed or a false call, an OK is
confirmed or a missed defect."""


def verdict_problem(decision: Any, disposition: str) -> str | None:
    """Why ``disposition`` cannot be given to a result judged ``decision`` (one line), else None."""
    allowed = FOR_VERDICT.get(decision)
    if allowed is None:
        return "the result has no verdict (its product is not calibrated): there is nothing to confirm or overrule"
    if disposition not in allowed:
        return f"{disposition} is not a disposition of an {decision} verdict: use {' or '.join(allowed)}"
    return None


def attach_history(record: dict[str, Any], history: list[dict[str, Any]]) -> dict[str, Any]:
    """Put ``history`` (oldest first) on a station's in-memory ``record``: ``dispositions`` (the
    history) and ``disposition`` (the current one). The results log itself is never rewritten."""
    record["dispositions"] = list(history)
    record["disposition"] = current_disposition(history)
    return record
