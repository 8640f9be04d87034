"""The append-only per-image results log of a run (``results.jsonl``, ``predictions/*.jsonl``)."""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from iapas.core.files import atomic_write_text

logger = logging.getLogger(__name__)


class ResultsLog:
    """An append-only JSON-lines log of per-image records, keyed by ``record['key']``."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._tail_checked = False

    def _repair_tail(self) -> None:
        """End the file with a newline, so that a line torn by a killed writer is not glued to
        the next record (which would then be lost as well)."""
        self._tail_checked = True
        if not self.path.exists() or self.path.stat().st_size == 0:
            return
        with open(self.path, "rb+") as fh:
            fh.seek(-1, os.SEEK_END)
            if fh.read(1) != b"\n":
                fh.write(b"\n")
                fh.flush()
                os.fsync(fh.fileno())

    def read(self) -> dict[str, dict[str, Any]]:
        """The last record per key; a torn last line (a killed writer) is ignored."""
        records: dict[str, dict[str, Any]] = {}
        if not self.path.exists():
            return records
        with open(self.path, encoding="utf-8") as fh:
            for number, line in enumerate(fh, 1):
                line = line.strip()
                if not line:
                    continue
                try:
                    record = json.loads(line)
                except ValueError:
                    logger.warning("%s:%d: ignoring an incomplete line (an interrupted write)", self.path, number)
                    continue
                if isinstance(record, dict) and "key" in record:
                    records.pop(record["key"], None)  # keep file order = order of the latest record
                    records[record["key"]] = record
        return records

    def append(self, record: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if not self._tail_checked:
            self._repair_tail()
        data = (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8")
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)  # unbuffered: nothing left to flush later
        try:
            size = os.fstat(fd).st_size
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
                os.fsync(fd)
            except OSError:  # e.g. disk full: leave no torn line behind (truncating needs no space)
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, size)
                raise
        finally:
            os.close(fd)

    def compact(self, order: Sequence[str] | None = None) -> None:
        """Rewrite with one line per key (the latest), in ``order`` when given."""
        records = self.read()
        keys = [k for k in order if k in records] if order is not None else []
        seen = set(keys)
        keys += [k for k in records if k not in seen]
        text = "".join(json.dumps(records[k], ensure_ascii=False) + "\n" for k in keys)
        atomic_write_text(self.path, text)
