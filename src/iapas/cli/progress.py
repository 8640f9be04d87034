"""Progress of a run: rich's bars on a terminal, plain log lines elsewhere
(:class:`iapas.workflows.progress.LogProgress`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from rich.console import Console

from iapas.workflows.progress import LogProgress


class RunProgress:
    """One interface for both displays: ``add_task``, ``advance`` and ``update`` of a step.

    ``console``'s terminal decides: rich bars (its columns given by ``columns``) on a terminal,
    :class:`LogProgress` otherwise. ``quiet`` shows nothing (the log lines are INFO).
    """

    def __init__(self, console: Console, quiet: bool, columns: Callable[[], tuple[Any, ...]]) -> None:
        self.bars: Any = None
        self.lines: LogProgress | None = None
        if console.is_terminal:
            from rich.progress import Progress

            self.bars = Progress(*columns(), console=console, disable=quiet, transient=False)
        else:
            self.lines = LogProgress()

    def add_task(self, description: str, total: int) -> Any:
        """A new step; ``description`` is plain text (no rich markup)."""
        if self.lines is not None:
            return self.lines.add_task(description, total)
        from rich.markup import escape

        return self.bars.add_task(escape(description), total=total)

    def advance(self, task: Any, status: str = "ok") -> None:
        """One more image; ``status`` 'skipped' means it was done by an earlier run."""
        if self.lines is not None:
            self.lines.advance(task, resumed=status == "skipped")
        else:
            self.bars.advance(task)

    def update(self, task: Any, completed: int) -> None:
        if self.lines is not None:
            self.lines.update(task, completed)
        else:
            self.bars.update(task, completed=completed)

    def __enter__(self) -> RunProgress:
        if self.bars is not None:
            self.bars.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.bars is not None:
            self.bars.__exit__(*exc)
