"""The model worker: one thread owns the pipeline and serves a bounded queue in micro-batches.

The worker takes the oldest request, then waits up to ``max_wait_ms`` for more requests of the
same category (up to ``batch_size``) and runs them through :meth:`Pipeline.run` together: one
detector forward per caption and one SAM call for the whole batch. Requests of other categories
keep their place in the queue. Callers get a :class:`concurrent.futures.Future` per request.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, field


from iapas.core.images import LoadedImage
from iapas.pipeline.stage2 import Pipeline
from iapas.product.profile import Profile
from iapas.core.types import SegmentationResult

logger = logging.getLogger(__name__)


class QueueFullError(RuntimeError):
    """The request queue is full: the caller should retry later (HTTP 503)."""


@dataclass
class Job:
    category: str
    image: LoadedImage
    future: Future = field(default_factory=Future)
    queued_at: float = field(default_factory=time.perf_counter)


@dataclass
class Outcome:
    """What the worker gives back for one job: the result (per-box masks freed), the batch size
    it ran in and the seconds it waited in the queue."""

    result: SegmentationResult
    batch_size: int
    queue_seconds: float


class ModelWorker:
    """Serve ``profiles`` (category -> stage-2 profile) with ``pipeline`` from one thread."""

    def __init__(
        self,
        pipeline: Pipeline,
        profiles: dict[str, Profile],
        *,
        batch_size: int = 8,
        max_wait_ms: float = 10.0,
        queue_size: int = 64,
    ) -> None:
        if batch_size < 1 or queue_size < 1 or max_wait_ms < 0:
            raise ValueError("batch_size and queue_size must be >= 1 and max_wait_ms >= 0")
        self.pipeline = pipeline
        self.profiles = profiles
        self.batch_size = batch_size
        self.max_wait = max_wait_ms / 1000.0
        self.queue_size = queue_size
        self._queue: deque[Job] = deque()
        self._cond = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self.images_served = 0
        self.batches = 0

    # --- the caller's side ------------------------------------------------------------------

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="iapas-model-worker", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Finish the batch in progress, fail what is still queued, end the thread."""
        with self._cond:
            self._stopping = True
            left = list(self._queue)
            self._queue.clear()
            self._cond.notify_all()
        for job in left:
            # a job whose caller already cancelled it is dropped; the others cannot be cancelled now
            if job.future.set_running_or_notify_cancel():
                job.future.set_exception(RuntimeError("the service is shutting down"))
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def submit(self, category: str, image: LoadedImage) -> Future:
        """Queue one image; raise :class:`QueueFullError` when the queue is full."""
        if category not in self.profiles:
            raise KeyError(category)
        job = Job(category, image)
        with self._cond:
            if self._stopping:
                raise RuntimeError("the service is shutting down")
            if len(self._queue) >= self.queue_size:
                raise QueueFullError(f"the queue is full ({self.queue_size} requests waiting)")
            self._queue.append(job)
            self._cond.notify()
        return job.future

    @property
    def depth(self) -> int:
        """Requests waiting (not counting the batch being run)."""
        with self._cond:
            return len(self._queue)

    # --- the worker's side ------------------------------------------------------------------

    def _take_batch(self) -> list[Job] | None:
        """The next batch, or None when stopping. A job is taken only if its future can be set
        running (the executor protocol): one its caller cancelled while it waited is dropped, and
        a taken one can no longer be cancelled, so setting its result cannot fail."""
        with self._cond:
            batch: list[Job] = []
            while not batch:
                while not self._queue and not self._stopping:
                    self._cond.wait()
                if self._stopping:
                    return None
                first = self._queue.popleft()
                if first.future.set_running_or_notify_cancel():
                    batch.append(first)
            deadline = time.perf_counter() + self.max_wait
            while len(batch) < self.batch_size:
                same = [job for job in self._queue if job.category == first.category]
                for job in same[: self.batch_size - len(batch)]:
                    self._queue.remove(job)
                    if job.future.set_running_or_notify_cancel():
                        batch.append(job)
                left = deadline - time.perf_counter()
                if len(batch) >= self.batch_size or left <= 0 or self._stopping:
                    break
                self._cond.wait(left)
            return batch

    def _loop(self) -> None:
        while True:
            batch = self._take_batch()
            if batch is None:
                return
            self._run(batch)

    def _run(self, batch: list[Job]) -> None:
        started = time.perf_counter()
        profile = self.profiles[batch[0].category]
        try:
            results = self.pipeline.run([job.image.rgb for job in batch], profile)
        except Exception as exc:  # a model failure fails this batch only; the worker goes on
            logger.error("model failure on a batch of %d: %s", len(batch), exc)
            for job in batch:
                job.future.set_exception(exc)
            return
        self.batches += 1
        self.images_served += len(batch)
        for job, result in zip(batch, results):
            # the caller needs the map, the boxes and the masks as RLE, not the masks (N x H x W)
            result = result.without_masks()
            job.future.set_result(Outcome(result, len(batch), started - job.queued_at))

