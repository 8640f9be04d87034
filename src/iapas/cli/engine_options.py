"""The ``--engine`` options of ``segment`` and ``evaluate``: where the images run."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import typer

from iapas.cli.common import fail

EngineOpt = typer.Option(
    "local", "--engine",
    help="local: this machine (threads for reading, the models, writing); ray: a Ray Data pool of workers, "
    "each loading the models once (needs iapas[ray]).",
)
RayAddressOpt = typer.Option(
    None, "--ray-address",
    help="With --engine ray: a running Ray cluster ('auto' or HOST:PORT); inputs, models and an absolute --out "
    "must be on storage every node sees. Without: a local Ray on this machine.",
)
WorkersOpt = typer.Option(1, "--workers", min=1, help="With --engine ray: workers (actors), each with its own models.")
GpusPerWorkerOpt = typer.Option(
    None, "--gpus-per-worker", min=0.0, show_default=False,
    help="With --engine ray: GPUs per worker (default: 1 when --device is cuda, else 0).",
)
CpusPerWorkerOpt = typer.Option(1.0, "--cpus-per-worker", min=0.0, help="With --engine ray: CPUs per worker.")


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
