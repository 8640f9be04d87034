"""Progress of a run as log lines, for a run whose stderr is not a terminal (the command line
draws rich's bars on a terminal: ``iapas.cli.progress.RunProgress``).

In a log file, under nohup, in CI or a cluster job (stderr is not a terminal) rich draws nothing
until a bar ends, so there a line is logged instead (logger ``iapas.progress``, level INFO) at a
steady pace: when ``IAPAS_PROGRESS_SECONDS`` (default 30) have passed since the last line of
that step, or when another 5% of it is done, whichever comes first, and when it ends::

    info: segmenting: 40/100 (40%), 2.31 images/s, ETA 0:00:26 (10 already done)
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

logger = logging.getLogger("iapas.progress")

PROGRESS_SECONDS_ENV = "IAPAS_PROGRESS_SECONDS"
DEFAULT_PROGRESS_SECONDS = 30.0
PERCENT_STEP = 5


def progress_interval() -> float:
    """Seconds between two progress lines: ``IAPAS_PROGRESS_SECONDS`` (0: every image), or 30."""
    raw = os.environ.get(PROGRESS_SECONDS_ENV, "").strip()
    if not raw:
        return DEFAULT_PROGRESS_SECONDS
    try:
        value = float(raw)
    except ValueError:
        logger.warning("%s=%r is not a number of seconds; using %g", PROGRESS_SECONDS_ENV, raw, DEFAULT_PROGRESS_SECONDS)
        return DEFAULT_PROGRESS_SECONDS
    return max(0.0, value) if math.isfinite(value) else DEFAULT_PROGRESS_SECONDS


def _clock_text(seconds: float) -> str:
    seconds = max(0, round(seconds))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


@dataclass
class _Step:
    description: str
    total: int
    started: float
    last_line: float
    completed: int = 0
    resumed: int = 0  # counted in completed, not in the rate
    last_percent: int = 0
    finished: bool = False


class LogProgress:
    """Progress as log lines (see the module docstring); ``clock`` can be replaced in tests."""

    def __init__(self, interval: float | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval = progress_interval() if interval is None else interval
        self.clock = clock
        self.steps: dict[int, _Step] = {}

    def add_task(self, description: str, total: int) -> int:
        now = self.clock()
        task = len(self.steps)
        self.steps[task] = _Step(description, total, now, now)
        return task

    def advance(self, task: int, resumed: bool = False) -> None:
        """One more image; ``resumed``: done by an earlier run (counted, not logged on its own:
        the first line after them says how many there were)."""
        step = self.steps[task]
        if resumed and step.completed + 1 < step.total:
            step.resumed += 1
            step.completed += 1
            step.last_percent = 100 * step.completed // step.total
            step.last_percent -= step.last_percent % PERCENT_STEP
            return
        step.resumed += int(resumed)
        self.update(task, step.completed + 1)

    def update(self, task: int, completed: int) -> None:
        step = self.steps[task]
        if step.finished:
            return
        step.completed = completed
        now = self.clock()
        percent = 100 * completed // step.total if step.total else 100
        if completed >= step.total:
            step.finished = True
        elif now - step.last_line < self.interval and percent < step.last_percent + PERCENT_STEP:
            return
        step.last_line = now
        step.last_percent = percent - percent % PERCENT_STEP
        logger.info("%s", self.line(step, now))

    def line(self, step: _Step, now: float) -> str:
        new = step.completed - step.resumed
        elapsed = now - step.started
        text = f"{step.description}: {step.completed}/{step.total}"
        if step.total:
            text += f" ({100 * step.completed // step.total}%)"
        if step.finished:
            text += f", done in {_clock_text(elapsed)}"
            if new > 0 and elapsed > 0:
                text += f", {new / elapsed:.2f} images/s"
        elif new > 0 and elapsed > 0:
            rate = new / elapsed
            text += f", {rate:.2f} images/s, ETA {_clock_text((step.total - step.completed) / rate)}"
        if step.resumed:
            text += f" ({step.resumed} already done)"
        return text

    def __enter__(self) -> LogProgress:
        return self

    def __exit__(self, *exc: Any) -> None:
        return None
