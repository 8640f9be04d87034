"""The Ray Data executor (the ``iapas[ray]`` extra): the same run spread over a pool of actors.

The driver (this process) has already resumed: only the pending items go to Ray, in groups of
``batch_size`` consecutive items (one group is one model batch, so batches are those of the
local executor). A CPU stage decodes each group's images and runs ``job.prepare``; then
``map_batches`` sends the groups to a pool of ``workers`` actors, each of which builds the
pipeline (detector and SAM) once from its plain config, runs stage 2 and writes each image's
files atomically into the output folder. The driver alone appends the records (the one writer,
:class:`~iapas.engine.base.Sink`), as the groups come back, so a killed driver leaves a
results log that resumes like the local engine's. An actor that dies is restarted by Ray and
its group retried (``max_restarts``, ``max_task_retries``): the group's files are written
again (atomically) and its records appended once. Work items, the job (with its profile as a
plain dict) and the pipeline's config travel as plain, pickled data.

``import ray`` happens here only, when a run uses this executor.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import pickle
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from iapas.engine.base import EngineError, Job, Sink, WorkItem, model_failure
from iapas.engine.signature import RunModels

logger = logging.getLogger(__name__)

INSTALL_HINT = "--engine ray needs Ray: install iapas[ray] (pip install 'iapas[ray]')"
KILL_AT_BATCH = "IAPAS_TEST_KILL_ACTOR_AT_BATCH"  # fault switch for tests: an actor dies on its k-th batch
KILL_MARKER = "IAPAS_TEST_KILL_MARKER"  # ... once: the file it creates tells its restarted self not to (unset: every time)
MAX_BLOCKS_PER_WORKER = 256  # beyond that, groups share blocks (Ray Data's per-block cost)
MAX_RESTARTS = 4  # per actor; a group is retried as often (a group that kills every actor fails the run)


class RayMissingError(EngineError):
    """Ray is not installed."""


def require_ray() -> Any:
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise RayMissingError(INSTALL_HINT) from None
    return ray


@dataclass
class RayOptions:
    """``address``: a running cluster (``auto`` or ``HOST:PORT``); None starts a local Ray with
    CPUs for the workers and the decoding. ``gpus_per_worker`` None: 1 when the pipeline's
    device is CUDA, else 0."""

    address: str | None = None
    workers: int = 1
    gpus_per_worker: float | None = None
    cpus_per_worker: float = 1.0
    decode_cpus: float = 0.25  # per decoding task: light, so that it never waits for the actors' CPUs

    def __post_init__(self) -> None:
        if self.workers < 1:
            raise ValueError(f"--workers must be >= 1, got {self.workers}")
        if self.cpus_per_worker < 0 or (self.gpus_per_worker is not None and self.gpus_per_worker < 0):
            raise ValueError("--cpus-per-worker and --gpus-per-worker must be >= 0")

    def local_cpus(self) -> int:
        """The CPUs of a local Ray (no ``address``): the workers' and one for the decoding, at least 2."""
        return max(2, math.ceil(self.workers * self.cpus_per_worker + 1))


def default_gpus(device: str, runtime: str = "torch") -> float:
    """GPUs per worker unless --gpus-per-worker says: one for a CUDA device (``auto`` resolved on
    this machine), none for the CPU or the openvino runtime (which runs on the CPU, whatever
    ``auto`` finds)."""
    if runtime == "openvino":
        return 0.0
    if device == "auto":
        from iapas.models.loading import resolve_device

        device = resolve_device(device)
    return 1.0 if str(device).startswith("cuda") else 0.0


def _decode_group(row: dict[str, Any], job: Job, max_pixels: int) -> dict[str, Any]:
    """CPU stage: each item of a group with its decoded image and prepared data (or why not)."""
    from iapas.engine.local import decode

    items: list[WorkItem] = pickle.loads(row["items"])
    return {"group": pickle.dumps([(item, decode(item, job, max_pixels)) for item in items])}


def worker_signature(pipeline: Any) -> dict[str, str | None]:
    """What a worker's models must share with the driver's: dtype, device and each model's
    fingerprint (a path on a worker's machine may hold other files than on the driver's)."""
    models = RunModels.loaded(pipeline)
    fingerprints = {k: v for k, v in models.identity.items() if k.endswith("_fingerprint")}
    return {**models.precision, **fingerprints}


def check_worker_models(here: dict[str, str | None], expected: dict[str, str | None]) -> None:
    """:class:`EngineError` (one line) when a worker's ``here`` differs from the driver's ``expected``
    on a key the driver gives: other model files first, then precision or device."""
    from iapas.models.fingerprint import short

    for key in (k for k in expected if k.endswith("_fingerprint")):
        if here.get(key) != expected[key]:
            kind = key.removesuffix("_fingerprint")
            raise EngineError(f"a Ray worker loaded another {kind} than the driver ({short(here.get(key))}, the driver's "
                              f"{short(expected[key])}): the model's path holds other files on that machine")
    here = {key: value for key, value in here.items() if key in expected and not key.endswith("_fingerprint")}
    want = {key: value for key, value in expected.items() if not key.endswith("_fingerprint")}
    if here != want:  # a resumed run must not mix precisions or devices
        raise EngineError(f"a Ray worker's models run with {here}, the driver's with {want}: give --device and --dtype")


class Stage2Actor:
    """One worker: builds the pipeline once, then runs stage 2 on groups and writes their files."""

    def __init__(self, config: dict[str, Any], job: Job, expected: dict[str, str | None], fault: tuple[int, str] | None) -> None:
        from iapas.pipeline.stage2 import Pipeline, PipelineConfig

        self.pipeline = Pipeline.from_config(PipelineConfig(**config))
        self.job = job
        self.fault = fault
        self.batches = 0
        check_worker_models(worker_signature(self.pipeline), expected)

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        outcomes = [pickle.dumps(self._run(pickle.loads(group))) for group in batch["group"]]
        return {"outcomes": outcomes}

    def _run(self, group: list[tuple[WorkItem, Any]]) -> list[tuple[Any, ...]]:
        self.batches += 1
        marker = self.fault[1] if self.fault is not None else None
        if self.fault is not None and self.batches == self.fault[0] and not (marker and os.path.exists(marker)):
            if marker:
                Path(marker).write_text(f"killed actor {os.getpid()} at batch {self.batches}\n")
            os._exit(1)
        out: list[tuple[Any, ...]] = []
        ready = [(item, decoded) for item, decoded in group if not isinstance(decoded, str)]
        out += [("failed", item, decoded) for item, decoded in group if isinstance(decoded, str)]
        if not ready:
            return out
        try:
            results = self.pipeline.run([image.rgb for _, (image, _) in ready], self.job.profile)
        except (RuntimeError, ValueError) as exc:  # e.g. out of memory: fail these, go on with the rest
            return out + [("failed", item, model_failure(item, exc)) for item, _ in ready]
        for (item, (image, prepared)), result in zip(ready, results):
            try:
                record = self.job.write(item, image, result, prepared)
            except OSError as exc:
                out.append(("write_error", item, exc.errno, exc.strerror or str(exc), exc.filename))
                continue
            out.append(("ok", item, record, result.image_score))
        return out


def _cause(exc: BaseException) -> str:
    """The line of a Ray error that says what went wrong (Ray wraps it in pages of advice)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    errors = [line for line in lines if re.match(r"^[\w.]+(Error|Exception|Exit)\b.*:", line)]
    cause = (errors or lines or [type(exc).__name__])[-1].split(" Some common causes include")[0]
    if "ActorDiedError" in str(exc) or type(exc).__name__ == "ActorDiedError" or "The actor is dead" in cause:
        cause = f"a batch killed its worker on every try ({MAX_RESTARTS} restarts): {cause}"
    return cause


class RayExecutor:
    """Ray Data: decode on CPUs, stage 2 on an actor pool, records appended by the driver."""

    def __init__(self, options: RayOptions | None = None) -> None:
        self.options = options or RayOptions()

    def run(self, items: Sequence[WorkItem], pipeline: Any, job: Job, sink: Sink, *, batch_size: int, max_pixels: int) -> None:
        ray = require_ray()
        opts = self.options
        config = dataclasses.asdict(pipeline.config)
        gpus = opts.gpus_per_worker if opts.gpus_per_worker is not None else default_gpus(config["device"], config["runtime"])
        if not ray.is_initialized():  # once per process: evaluate runs one dataset per category
            if opts.address:
                ray.init(address=opts.address, log_to_driver=False)
            else:
                ray.init(num_cpus=opts.local_cpus(), include_dashboard=False, log_to_driver=False)
        self._run(ray, items, pipeline, job, sink, batch_size, max_pixels, config, gpus)

    def _run(self, ray: Any, items: Sequence[WorkItem], pipeline: Any, job: Job, sink: Sink, batch_size: int,
             max_pixels: int, config: dict[str, Any], gpus: float) -> None:
        opts = self.options
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False  # the command's own bar counts the images
        if not logger.isEnabledFor(logging.DEBUG):
            logging.getLogger("ray.data").setLevel(logging.WARNING)  # its per-second execution reports
            # and its pages of stack trace above a failed run: the run's one line says why (-v shows them)
            for name in ("ray.data.exceptions", "ray.data._internal.execution.streaming_executor_state"):
                logging.getLogger(name).setLevel(logging.CRITICAL)
        groups = [pickle.dumps(list(items[i:i + batch_size])) for i in range(0, len(items), batch_size)]
        fault = None
        if os.environ.get(KILL_AT_BATCH):
            fault = (int(os.environ[KILL_AT_BATCH]), os.environ.get(KILL_MARKER) or None)
        expected = worker_signature(pipeline)
        if config.get("device") == "auto":  # the workers resolve it on their own machine
            expected.pop("device")
        # one block per group (up to a bound): records reach the driver, the progress bar and the
        # results log as each batch finishes, not a block of batches at a time
        blocks = max(1, min(len(groups), MAX_BLOCKS_PER_WORKER * opts.workers))
        ds = ray.data.from_items([{"items": g} for g in groups], override_num_blocks=blocks)
        ds = ds.map(_decode_group, fn_kwargs={"job": job, "max_pixels": max_pixels}, num_cpus=opts.decode_cpus)
        stage2 = dict(
            fn_constructor_kwargs={"config": config, "job": job, "expected": expected, "fault": fault},
            batch_size=1,  # one row is one group: one model batch
            batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=opts.workers),
            num_cpus=opts.cpus_per_worker,
            num_gpus=gpus,
        )
        with warnings.catch_warnings():  # Ray 2.60 names remote args deprecated, with no named restarts yet
            warnings.filterwarnings("ignore", message=".*ray_remote_args.*is deprecated", category=DeprecationWarning)
            try:  # bounded: a batch that kills every actor fails the run instead of looping
                ds = ds.map_batches(Stage2Actor, **stage2, max_restarts=MAX_RESTARTS, max_task_retries=MAX_RESTARTS)
            except TypeError:  # a Ray without them: its own defaults (restarts and retries on)
                ds = ds.map_batches(Stage2Actor, **stage2)
        logger.info("ray: %d image(s) in %d group(s) on %d worker(s) (%g CPU, %g GPU each)",
                    len(items), len(groups), opts.workers, opts.cpus_per_worker, gpus)
        rows = ds.iter_rows()
        try:
            for row in rows:
                for outcome in pickle.loads(row["outcomes"]):
                    self._deliver(outcome, sink)
                if sink.stopped:
                    break
        except (KeyboardInterrupt, EngineError):
            raise
        except Exception as exc:  # a group that failed every retry, a lost cluster: the records so far stay
            raise EngineError(f"the Ray run failed: {_cause(exc)}") from exc
        finally:
            close = getattr(rows, "close", None)
            if close is not None:
                close()

    @staticmethod
    def _deliver(outcome: tuple[Any, ...], sink: Sink) -> None:
        kind, item = outcome[0], outcome[1]
        if kind == "ok":
            sink.ok(item, outcome[2], outcome[3])
        elif kind == "failed":
            sink.failed(item, outcome[2])
        else:
            sink.write_failed(item, OSError(outcome[2], outcome[3], outcome[4]))
