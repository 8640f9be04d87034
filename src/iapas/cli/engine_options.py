"""The ``--engine`` options of ``segment`` and ``evaluate``: where the images run."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from iapas.cli.common import fail
from iapas.cli.options import option
from iapas.workflows.options import ENGINE, OPTIONS, Settings

# the table's rows (iapas.workflows.options), for commands that list their options by hand
EngineOpt, RayAddressOpt, WorkersOpt, GpusPerWorkerOpt, CpusPerWorkerOpt = (option(OPTIONS[name]) for name in ENGINE)


def engine_executor(settings: Settings, out: Path) -> Any:
    """:func:`executor_for` of a command's shared :data:`~iapas.workflows.options.ENGINE` options."""
    return executor_for(settings.engine, out, settings.ray_address, settings.workers, settings.gpus_per_worker,
                        settings.cpus_per_worker)


def executor_for(engine: str, out: Path, address: str | None, workers: int, gpus: float | None, cpus: float) -> Any:
    """The executor the options ask for (None: the local one), or exit 2 with one line."""
    if engine == "local":
        ignored = [name for name, used in (("--ray-address", address is not None), ("--workers", workers != 1),
                                           ("--gpus-per-worker", gpus is not None), ("--cpus-per-worker", cpus != 1.0)) if used]
        if ignored:
            logging.getLogger(__name__).warning("%s: for --engine ray only; ignored", ", ".join(ignored))
        return None
    if engine != "ray":
        raise fail(f"--engine must be local or ray, got {engine!r}")
    from iapas.engine.ray_executor import RayMissingError, RayOptions, RayExecutor, require_ray

    try:
        require_ray()
    except RayMissingError as exc:
        raise fail(str(exc)) from None
    if address is not None and not out.is_absolute():
        raise fail(f"--out {out} is relative: on a Ray cluster (--ray-address) give an absolute path on storage every node sees")
    try:
        return RayExecutor(RayOptions(address=address, workers=workers, gpus_per_worker=gpus, cpus_per_worker=cpus))
    except ValueError as exc:
        raise fail(str(exc)) from None
