"""The ``--engine`` options of ``segment`` and ``evaluate``: where the images run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from iapas.cli.common import fail
from iapas.workflows.options import Settings


def engine_executor(settings: Settings, out: Path) -> Any:
    """:meth:`Settings.executor <iapas.workflows.options.Settings.executor>`, or exit 2 with one line."""
    try:
        return settings.executor(out)
    except ValueError as exc:
        raise fail(str(exc)) from None

