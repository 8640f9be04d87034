"""One run over work items: the pending list after resume, then an executor (see :mod:`.base`)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from iapas.engine.base import Executor, Job, RunSummary, Sink, WorkItem
from iapas.engine.local import LocalExecutor
from iapas.engine.log import ResultsLog

logger = logging.getLogger(__name__)


def run_items(
    items: Sequence[WorkItem],
    pipeline: Any,
    job: Job,
    log: ResultsLog,
    *,
    finished: Mapping[str, Mapping[str, Any]],
    executor: Executor | None = None,
    batch_size: int = 1,
    max_pixels: int,
    on_image: Callable[[str, str], None] | None = None,
) -> RunSummary:
    """Run ``job`` on the ``items`` whose key is not in ``finished`` (the resumed ones: their
    records by key). Returns the summary; ``interrupted`` when Ctrl-C stopped it (finished
    images are recorded), ``stopped`` when a full disk did (``not_run`` images left)."""
    executor = executor or LocalExecutor()
    summary = RunSummary(total=len(items))
    pending: list[WorkItem] = []
    for item in items:
        record = finished.get(item.key)
        if record is not None:
            summary.skipped += 1
            summary.scores.append((item.key, float(record.get("image_score", 0.0))))
        else:
            pending.append(item)
    if on_image:
        for key, _ in summary.scores:
            on_image(key, "skipped")
    sink = Sink(log, job, summary, on_image)
    started = time.perf_counter()
    try:
        if pending:
            executor.run(pending, pipeline, job, sink, batch_size=batch_size, max_pixels=max_pixels)
    except KeyboardInterrupt:
        summary.interrupted = True
        logger.warning("interrupted: finished images are saved; run the same command again to resume")
    summary.seconds = time.perf_counter() - started
    if summary.stopped is not None:
        summary.not_run = len(pending) - summary.done - len(summary.failed)
    return summary
