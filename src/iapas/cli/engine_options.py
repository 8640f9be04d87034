"""The ``--engine`` options of ``segment`` and ``evaluate``: where the images run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from iapas.cli.common import fail
from iapas.cli.options import option
from iapas.workflows.options import ENGINE, OPTIONS, Settings

# the table's rows (iapas.workflows.options), for commands that list their options by hand
EngineOpt, RayAddressOpt, WorkersOpt, GpusPerWorkerOpt, CpusPerWorkerOpt = (option(OPTIONS[name]) for name in ENGINE)


def engine_executor(settings: Settings, out: Path) -> Any:
    """:meth:`Settings.executor <iapas.workflows.options.Settings.executor>`, or exit 2 with one line."""
    try:
        return settings.executor(out)
    except ValueError as exc:
        raise fail(str(exc)) from None


def executor_for(engine: str, out: Path, address: str | None, workers: int, gpus: float | None, cpus: float) -> Any:
    """The executor the options ask for (None: the local one), or exit 2 with one line."""
    return engine_executor(Settings(dict(zip(ENGINE, (engine, address, workers, gpus, cpus)))), out)
