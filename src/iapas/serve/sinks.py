"""Verdict sinks: every inspection's verdict sent on to the plant's systems (a webhook, MQTT).

The station hands each stored inspection to :meth:`Sinks.publish`, which only puts it in one
bounded queue per sink (``put_nowait``: a full queue drops the verdict, counts and logs it, and
never waits): an inspection is never slowed by a slow or broken receiver. Each sink's own thread
drains its queue, sends with a timeout per attempt and retries with exponential backoff; a
verdict still not delivered after the retries is counted and logged (one line naming the sink and
the reason). :meth:`Sinks.stop` drains what is queued until a deadline, then counts the rest.

The message (:func:`verdict_payload`) is the ``/v1/inspect`` answer without the PNG URLs, plus
``product`` (the category) and ``time`` (ISO 8601, UTC), as compact JSON.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

logger = logging.getLogger(__name__)

QUEUE_SIZE = 1000  # verdicts waiting per sink; beyond: dropped, counted and logged
RETRIES = 3  # after the first attempt
BACKOFF_S = 0.5  # the first wait before a retry; doubled each time
MAX_BACKOFF_S = 8.0
ATTEMPT_TIMEOUT_S = 5.0
STOP_DEADLINE_S = 5.0  # how long stop() keeps sending what is queued
DROP_LOG_EVERY_S = 5.0  # a full queue logs at most one line this often (with the count)


class SinkError(ValueError):
    """A sink that cannot be set up (bad URL, missing secret, missing extra); one line."""


class SendError(RuntimeError):
    """One attempt that failed; ``retry`` False when repeating it cannot help (a 4xx answer)."""

    def __init__(self, reason: str, retry: bool = True) -> None:
        super().__init__(reason)
        self.retry = retry


class Sink:
    """Where verdicts go. ``label`` names it in logs and metrics (``webhook:host:port``)."""

    kind = "sink"
    label = "sink"

    def open(self) -> None:
        """Connect (called once, before the first :meth:`send`)."""

    def send(self, body: bytes, payload: dict[str, Any]) -> None:
        """Deliver one message or raise (:class:`SendError` or any exception: one failed attempt)."""
        raise NotImplementedError

    def close(self) -> None:
        """Disconnect (called once, after the last :meth:`send`)."""


@dataclass
class SinkStats:
    """What one sink did since the station started."""

    delivered: int = 0
    failed: int = 0  # not delivered after the retries, or still queued when the station stopped
    dropped: int = 0  # refused at once: the sink's queue was full
    retries: int = 0
    queued: int = 0  # waiting now (read at the time asked)


def verdict_payload(answer: dict[str, Any], now: datetime | None = None) -> dict[str, Any]:
    """The message of one inspection: the ``/v1/inspect`` ``answer`` without its PNG URLs, plus
    ``product`` and ``time`` (UTC, milliseconds)."""
    stamp = (now or datetime.now(timezone.utc)).astimezone(timezone.utc)
    return {**{k: v for k, v in answer.items() if k != "urls"}, "product": answer.get("category"),
            "time": stamp.isoformat(timespec="milliseconds").replace("+00:00", "Z")}


def one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if isinstance(exc, SendError) else f"{type(exc).__name__}: {text}"


@dataclass
class Policy:
    """How a sink's queue is drained: queue length, retries, backoff, the deadline at stop."""

    queue_size: int = QUEUE_SIZE
    retries: int = RETRIES
    backoff: float = BACKOFF_S
    max_backoff: float = MAX_BACKOFF_S
    stop_deadline: float = STOP_DEADLINE_S


class SinkQueue:
    """One sink, its bounded queue and the thread that drains it."""

    def __init__(self, sink: Sink, policy: Policy) -> None:
        self.sink, self.policy = sink, policy
        self.stats = SinkStats()
        self._queue: queue.Queue[dict[str, Any]] = queue.Queue(policy.queue_size)
        self._lock = threading.Lock()
        self._stopping, self._abort = threading.Event(), threading.Event()
        self._last_drop_log = 0.0
        self._thread = threading.Thread(target=self._loop, name=f"iapas-sink-{sink.kind}", daemon=True)

    def start(self) -> None:
        self.sink.open()
        self._thread.start()

    def put(self, payload: dict[str, Any]) -> bool:
        """Queue ``payload`` without waiting; False (counted, logged) when the queue is full."""
        try:
            self._queue.put_nowait(payload)
            return True
        except queue.Full:
            with self._lock:
                self.stats.dropped += 1
                dropped, now = self.stats.dropped, time.monotonic()
                if now - self._last_drop_log < DROP_LOG_EVERY_S:
                    return False
                self._last_drop_log = now
            logger.warning("sink %s: queue full (%d verdicts waiting): verdict %s dropped (%d dropped so far)",
                           self.sink.label, self.policy.queue_size, payload.get("id"), dropped)
            return False

    def snapshot(self) -> SinkStats:
        with self._lock:
            return SinkStats(self.stats.delivered, self.stats.failed, self.stats.dropped, self.stats.retries,
                             self._queue.qsize())

    def _count(self, name: str) -> None:
        with self._lock:
            setattr(self.stats, name, getattr(self.stats, name) + 1)

    def _loop(self) -> None:
        while True:
            try:
                payload = self._queue.get(timeout=0.1)
            except queue.Empty:
                if self._stopping.is_set():
                    return
                continue
            self._deliver(payload)

    def _deliver(self, payload: dict[str, Any]) -> None:
        body = json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
        delay, attempt = self.policy.backoff, 0
        while True:
            attempt += 1
            try:
                self.sink.send(body, payload)
                self._count("delivered")
                return
            except Exception as exc:  # noqa: BLE001 - any failure is one failed attempt
                reason, retry = one_line(exc), getattr(exc, "retry", True)
            if not retry or attempt > self.policy.retries:
                break
            self._count("retries")
            if self._abort.wait(delay):
                reason += "; the station stopped before the next retry"
                break
            delay = min(delay * 2, self.policy.max_backoff)
        self._count("failed")
        logger.warning("sink %s: verdict %s not delivered after %d attempt%s: %s", self.sink.label, payload.get("id"),
                       attempt, "" if attempt == 1 else "s", reason)

    def stop(self, deadline: float) -> None:
        """Send what is queued until ``deadline`` (``time.monotonic()``), then count the rest
        as failed (one line), end the thread and close the sink."""
        self._stopping.set()
        if self._thread.is_alive():
            self._thread.join(max(0.0, deadline - time.monotonic()))
        self._abort.set()
        left = 0
        while True:
            try:
                self._queue.get_nowait()
                left += 1
            except queue.Empty:
                break
        if left:
            with self._lock:
                self.stats.failed += left
            logger.warning("sink %s: %d verdict%s not delivered: the station stopped with them queued",
                           self.sink.label, left, "" if left == 1 else "s")
        if self._thread.is_alive():
            self._thread.join(ATTEMPT_TIMEOUT_S + 1)  # an attempt under way ends with its own timeout
        try:
            self.sink.close()
        except Exception as exc:  # noqa: BLE001 - closing must not fail the shutdown
            logger.warning("sink %s: closing failed: %s", self.sink.label, one_line(exc))


@dataclass
class Sinks:
    """The station's sinks: :meth:`publish` queues a verdict for each, and never waits."""

    sinks: list[Sink]
    policy: Policy = field(default_factory=Policy)
    queues: list[SinkQueue] = field(init=False)

    def __post_init__(self) -> None:
        self.queues = [SinkQueue(sink, self.policy) for sink in self.sinks]
        self._started = False

    def start(self) -> "Sinks":
        if not self._started:
            for q in self.queues:
                q.start()
            self._started = True
        return self

    def publish(self, answer: dict[str, Any]) -> None:
        """Queue the verdict of one inspection (its ``/v1/inspect`` answer) for every sink."""
        if self.queues:
            payload = verdict_payload(answer)
            for q in self.queues:
                q.put(payload)

    def stats(self) -> dict[str, SinkStats]:
        """By sink label."""
        return {q.sink.label: q.snapshot() for q in self.queues}

    def stop(self, timeout: float | None = None) -> None:
        """Send what is queued for at most ``timeout`` seconds (all sinks together), then stop."""
        if not self._started:
            return
        deadline = time.monotonic() + (self.policy.stop_deadline if timeout is None else timeout)
        for q in self.queues:
            q.stop(deadline)
        self._started = False
