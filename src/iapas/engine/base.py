"""The engine's parts every executor shares: work items, the job a command describes, the one
writer (:class:`Sink`) and the run's summary; :mod:`.core` runs them.

One run over work items, whatever command asked for it.

A command (``segment``, ``evaluate``) describes its work as :class:`WorkItem` s (an image path,
its output key, per-item context) and its outputs as a :class:`Job` (which files an image gets
and what its record says). :func:`run_items` then owns the rest: the pending list after resume,
the ``skipped`` callbacks, the executor that decodes, batches and runs stage 2 (:mod:`.local`:
threads on this machine; :mod:`.ray`: Ray Data), and the :class:`Sink`, the one writer that
appends records to the results log, after each image's files are in place. Failures stay with
their image (unreadable files, bad masks, model failures, a write error); a full disk stops the
run (:mod:`iapas.core.storage`): no new image is started, the finished ones are kept and the
stopping image's partial files are removed; Ctrl-C keeps what is finished.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol

from iapas.engine.log import ResultsLog
from iapas.core.images import LoadedImage, show_path
from iapas.product.profile import Profile
from iapas.core.storage import is_disk_full, stop_reason
from iapas.core.types import SegmentationResult

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class WorkItem:
    """One image of a run: its file, its output key and what the job needs beside (evaluate: the
    dataset sample). Travels to Ray workers: keep ``context`` plain data."""

    key: str
    path: Path
    context: Any = None


class EngineError(RuntimeError):
    """A run could not go on (e.g. the Ray executor lost its workers); finished images are recorded."""


class ItemError(Exception):
    """This image cannot be run (e.g. its ground-truth mask does not fit): recorded as failed."""


class PlainJob:
    """A job base (a dataclass with a ``stage2_profile`` field) that pickles the fields named in
    ``plain_fields`` (objects with ``to_dict`` and a ``from_dict`` classmethod, such as
    :class:`~iapas.product.profile.Profile`) as plain dicts, so they travel to Ray workers as data."""

    plain_fields: ClassVar[tuple[str, ...]] = ("stage2_profile",)
    stage2_profile: Profile | None

    @property
    def profile(self) -> Profile | None:
        return self.stage2_profile

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        for name in self.plain_fields:
            value = state[name]
            state[name] = None if value is None else (type(value), value.to_dict())
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        state = dict(state)
        for name in self.plain_fields:
            if state[name] is not None:
                kind, data = state[name]
                state[name] = kind.from_dict(data)
        self.__dict__.update(state)


class Job(Protocol):
    """What a command's run writes per image. Must pickle (Ray workers run ``prepare`` and
    ``write``); :attr:`profile` is the stage-2 profile every batch runs with."""

    @property
    def profile(self) -> Profile | None: ...

    def prepare(self, item: WorkItem, image: LoadedImage) -> Any:
        """Per-item data loaded beside the image (CPU side); raise :class:`ItemError` to fail it."""

    def write(self, item: WorkItem, image: LoadedImage, result: SegmentationResult, prepared: Any) -> dict[str, Any]:
        """Write the image's files atomically; the record to append (an OSError: not written)."""

    def failure_record(self, item: WorkItem, message: str) -> dict[str, Any]:
        """The record of an image that failed."""

    def cleanup(self, item: WorkItem) -> None:
        """Remove what an image whose write was cut short (full disk) left behind."""


@dataclass
class RunSummary:
    total: int = 0
    done: int = 0
    skipped: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0
    interrupted: bool = False
    scores: list[tuple[str, float]] = field(default_factory=list)
    stopped: str | None = None  # why the run stopped early (the disk is full), see iapas.core.storage
    not_run: int = 0  # images left for a resumed run after a stop
    stop_error: OSError | None = field(default=None, repr=False)  # the write error that stopped it

    @property
    def ok(self) -> bool:
        return not self.failed and not self.interrupted and self.stopped is None


class Sink:
    """The run's one writer of records: appends to the log once an image's files are in place,
    keeps the summary and calls ``on_image(key, status)``. Executors call it from one thread."""

    def __init__(self, log: ResultsLog, job: Job, summary: RunSummary, on_image: Callable[[str, str], None] | None) -> None:
        self.log, self.job, self.summary, self.on_image = log, job, summary, on_image
        self._lock = threading.Lock()

    @property
    def stopped(self) -> bool:
        return self.summary.stopped is not None

    def _stop(self, item: WorkItem, exc: OSError, cleanup: bool = True) -> None:
        if cleanup:
            self.job.cleanup(item)
        if self.summary.stopped is None:
            logger.error("%s: cannot write: %s; stopping (finished images are saved)", item.path, exc)
            self.summary.stopped, self.summary.stop_error = stop_reason(exc), exc

    def ok(self, item: WorkItem, record: dict[str, Any], score: float) -> None:
        """An image whose files are written: append its record."""
        with self._lock:
            if self.stopped:  # its files are there, but the run stopped: a resumed run redoes it
                return
            try:
                self.log.append(record)
            except OSError as exc:
                if not is_disk_full(exc):
                    raise
                self._stop(item, exc)  # no record: its outputs would be orphans
                return
            self.summary.done += 1
            self.summary.scores.append((item.key, score))
        if self.on_image:
            self.on_image(item.key, "ok")

    def failed(self, item: WorkItem, message: str) -> None:
        """An image that failed (the run goes on): record why."""
        logger.error("%s", message)
        with self._lock:
            self.summary.failed.append((str(item.path), message))
            try:
                self.log.append(self.job.failure_record(item, message))
            except OSError as exc:
                if not is_disk_full(exc):
                    raise
                self._stop(item, exc, cleanup=False)  # counted as failed: it fails again when resumed
        if self.on_image:
            self.on_image(item.key, "failed")

    def write_failed(self, item: WorkItem, exc: OSError) -> None:
        """``job.write`` raised: a full disk stops the run, any other error fails this image."""
        if is_disk_full(exc):
            with self._lock:
                self._stop(item, exc)
            return
        self.failed(item, f"{show_path(item.path)}: cannot write outputs: {exc}")


def model_failure(item: WorkItem, exc: BaseException) -> str:
    return f"{show_path(item.path)}: model failure: {exc}"


class Executor(Protocol):
    """Runs the pending items: decode, ``job.prepare``, batches of ``pipeline.run``,
    ``job.write``, and every outcome to ``sink`` (from one thread). Checks ``sink.stopped``
    before starting an image; lets KeyboardInterrupt through once finished images are recorded."""

    def run(self, items: Sequence[WorkItem], pipeline: Any, job: Job, sink: Sink, *, batch_size: int, max_pixels: int) -> None: ...
