"""Converted models cached as OpenVINO IR, once per source model and openvino version.

:func:`load_or_convert` keeps each converted model in its own folder
``<cache_dir>/<name>-<key>/`` (``model.xml``, ``model.bin`` and ``key.json``), where ``key`` is
a hash of the source model's fingerprint (:mod:`iapas.models.fingerprint`), the openvino
version and :data:`CONVERTER_VERSION` (raised whenever the way iapas converts a model changes).
A folder whose ``key.json`` does not say the same, or whose IR cannot be read, is stale and
is rebuilt, never used. An entry appears atomically: it is saved into a temporary folder
that is renamed into place; a lock file (``<name>-<key>.lock``) makes a second process that
needs the same entry wait for the first one's conversion and then read it. A cache folder that
cannot be written (read-only, full, not a folder) costs time, not the run: the converted model
is used unsaved, with a warning, and converted again at the next start; within
:func:`saving_required` (``iapas export openvino``, whose whole point is the saved entries) it
is an :class:`IrCacheError` instead.

:func:`default_cache_dir` is ``$IAPAS_OPENVINO_CACHE`` when set, else
``$XDG_CACHE_HOME/iapas/openvino`` (``~/.cache/iapas/openvino`` by default).
"""

from __future__ import annotations

import contextlib
import contextvars
import ctypes
import gc
import glob
import hashlib
import json
import logging
import os
import shutil
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from iapas.models.loading import ModelLoadError

try:  # not on Windows: there, two conversions of one entry may both run (the rename still wins once)
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]

logger = logging.getLogger(__name__)

RUNTIMES: tuple[str, ...] = ("torch", "openvino")
DEFAULT_RUNTIME = "torch"
CONVERTER_VERSION = 1  # raise when a conversion changes what it writes: old entries are rebuilt
ENV_CACHE = "IAPAS_OPENVINO_CACHE"
MODEL_FILE = "model.xml"
KEY_FILE = "key.json"
INSTALL_HINT = "pip install 'iapas[openvino]'"


class OpenVinoMissingError(ModelLoadError):
    """``--runtime openvino`` without the ``openvino`` package (a model that cannot be loaded)."""


class IrCacheError(ModelLoadError):
    """An entry that cannot be saved into the IR cache, within :func:`saving_required`."""


_MUST_SAVE: contextvars.ContextVar[bool] = contextvars.ContextVar("iapas_openvino_must_save", default=False)


@contextlib.contextmanager
def saving_required() -> Iterator[None]:
    """Within the block, an entry that cannot be saved raises :class:`IrCacheError` (before
    converting, when the folder cannot even be locked) instead of being used unsaved."""
    token = _MUST_SAVE.set(True)
    try:
        yield
    finally:
        _MUST_SAVE.reset(token)


def require_openvino() -> Any:
    """The ``openvino`` module; a one-line error naming the extra to install when it is missing."""
    try:
        import openvino
    except ImportError as exc:
        raise OpenVinoMissingError(
            f"--runtime openvino needs the openvino package: {INSTALL_HINT} ({exc})"
        ) from None
    return openvino


def check_runtime(runtime: str) -> str:
    """``runtime`` when it is one of :data:`RUNTIMES`; a one-line ``ValueError`` otherwise."""
    if runtime not in RUNTIMES:
        raise ValueError(f"unknown runtime {runtime!r}; expected {' or '.join(RUNTIMES)}")
    return runtime


def check_cpu_float32(what: str, device: Any = "cpu", dtype: Any = "float32") -> None:
    """The adapters' one-line ``ValueError``, naming ``what`` (``"detector NAME"``), when the
    openvino runtime is asked for another device than the CPU or another dtype than float32
    (``auto`` means both; a torch dtype is named as torch prints it)."""
    if str(device) not in ("auto", "cpu"):
        raise ValueError(f"{what}: the openvino runtime runs on the CPU; got device {device} (use --device cpu)")
    if str(dtype) not in ("auto", "float32", "torch.float32"):
        raise ValueError(f"{what}: the openvino runtime converts float32 models; got {dtype} (use --dtype float32)")


def default_cache_dir() -> Path:
    """``$IAPAS_OPENVINO_CACHE``, else ``$XDG_CACHE_HOME/iapas/openvino`` (``~/.cache/...``)."""
    if os.environ.get(ENV_CACHE):
        return Path(os.environ[ENV_CACHE]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "iapas" / "openvino"


def cache_key(source_fingerprint: str, openvino_version: str | None = None) -> dict[str, Any]:
    """What an entry was made from: the source's fingerprint, the openvino version, the converter's."""
    if openvino_version is None:
        openvino_version = str(require_openvino().get_version())
    return {
        "source": source_fingerprint,
        "openvino": openvino_version,
        "converter": CONVERTER_VERSION,
    }


def entry_name(model_name: str, graph: str) -> str:
    """A readable entry name for one graph of a model: the model folder's or hub id's last part
    and the graph (the key, not the name, is what tells two models apart)."""
    return f"{Path(str(model_name).rstrip('/')).name or 'model'}-{graph}"


def entry_dir(name: str, key: dict[str, Any], cache_dir: Path) -> Path:
    """The folder of ``name``'s entry for ``key``: ``<cache_dir>/<name>-<16 hex of the key>``."""
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
    return cache_dir / f"{safe}-{digest}"


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (waiting for another process's), for the block."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+b") as fh:
        if fcntl is not None:
            if not _try_lock(fh.fileno()):
                logger.info("waiting for another process converting into %s", path.with_suffix(""))
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            if fcntl is not None:
                fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _try_lock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _read_entry(folder: Path, key: dict[str, Any], core: Any, warn: bool = True) -> Any | None:
    """The entry's model, or None when it is missing, made from another key or unreadable
    (said in a warning when ``warn``)."""
    if not folder.is_dir():
        return None
    try:
        stored = json.loads((folder / KEY_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        stored = None
    if stored != key:
        if warn:
            logger.warning(
                "OpenVINO cache entry %s is stale (its key differs); rebuilding it", folder)
        return None
    try:
        return core.read_model(str(folder / MODEL_FILE))
    except Exception as exc:  # openvino raises its own RuntimeError subclasses for a bad IR
        if warn:
            lines = [ln for ln in str(exc).splitlines() if ln.strip() and not ln.startswith("Exception from")]
            first = lines[0].strip() if lines else type(exc).__name__
            logger.warning("OpenVINO cache entry %s is unreadable (%s); rebuilding it", folder, first)
        return None


def _write_entry(folder: Path, key: dict[str, Any], model: Any, ov: Any) -> None:
    """Save ``model`` with its key into a temporary folder, then rename it to ``folder``."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".tmp", dir=folder.parent))
    try:
        ov.save_model(model, str(tmp / MODEL_FILE), compress_to_fp16=False)  # the default halves the weights
        (tmp / KEY_FILE).write_text(json.dumps(key, sort_keys=True, indent=1) + "\n", encoding="utf-8")
        if folder.exists():  # a stale entry: move it aside first (a rename over a folder fails)
            old = folder.with_name(f".{folder.name}.{os.getpid()}.old")
            os.replace(folder, old)
            shutil.rmtree(old, ignore_errors=True)
        os.replace(tmp, folder)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def load_or_convert(
    name: str,
    source_fingerprint: str,
    convert: Callable[[], Any],
    cache_dir: Path | None = None,
) -> Any:
    """The ``openvino.Model`` of ``name``: read from its cache entry, or made by ``convert()``
    (once, under the entry's lock) and saved there. See the module's docstring for the key."""
    ov = require_openvino()
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    key = cache_key(source_fingerprint, str(ov.get_version()))
    folder = entry_dir(name, key, cache_dir)
    core = ov.Core()
    model = _read_entry(folder, key, core, warn=False)  # the common case needs no lock: an entry is complete
    if model is not None:
        return model
    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(_locked(folder.with_name(folder.name + ".lock")))
        except OSError as exc:  # the folder cannot be made or written: convert, unsaved
            _unsaved(cache_dir, exc)
            model = _convert(name, convert, None)
        else:
            model = _read_entry(folder, key, core)  # another process may have made it meanwhile
            if model is not None:
                return model
            _remove_leftovers(folder)
            model = _convert(name, convert, folder)
            try:
                _write_entry(folder, key, model, ov)
            except (OSError, RuntimeError) as exc:  # openvino's writer raises RuntimeError (e.g. a full disk)
                _unsaved(cache_dir, exc)
            else:
                model = core.read_model(str(folder / MODEL_FILE))  # the saved entry; the converted copy is freed
    _give_back_freed_memory()
    return model


def _remove_leftovers(folder: Path) -> None:
    """The temporary and set-aside folders of ``folder``'s entry that a process killed while
    saving it left behind (under the entry's lock: no live process is writing them)."""
    for leftover in folder.parent.glob(f".{glob.escape(folder.name)}.*"):
        if leftover.is_dir() and leftover.name.endswith((".tmp", ".old")):
            logger.info("removing %s, left by an interrupted conversion", leftover)
            shutil.rmtree(leftover, ignore_errors=True)


def _give_back_freed_memory() -> None:
    """Return the heap that tracing and converting freed to the system (glibc keeps it: a
    process that converted SAM ViT-B at start held about 3 GB more for its whole life)."""
    gc.collect()
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):  # not glibc (musl has no malloc_trim)
            ctypes.CDLL("libc.so.6").malloc_trim(0)


def _convert(name: str, convert: Callable[[], Any], folder: Path | None) -> Any:
    """``convert()``, logged, without the tracer's warnings: they warn that a traced branch is
    fixed, which nobody running iapas can act on (the OpenVINO-vs-eager tests check the graphs)."""
    logger.info("converting %s to OpenVINO IR (once, ~minutes for a real-size model)%s",
                name, f" into {folder}" if folder else "")
    started = time.perf_counter()
    with warnings.catch_warnings():
        with contextlib.suppress(ImportError):
            from torch.jit import TracerWarning

            warnings.simplefilter("ignore", TracerWarning)
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing", category=FutureWarning)
        converted = convert()
    logger.info("converted %s in %.1f s", name, time.perf_counter() - started)
    return converted


def _unsaved(cache_dir: Path, exc: BaseException) -> None:
    """Say why an entry cannot be saved into ``cache_dir``: an :class:`IrCacheError` within
    :func:`saving_required`, a warning otherwise (the caller then uses the model unsaved)."""
    if isinstance(exc, OSError) and exc.strerror:
        reason = exc.strerror
    else:  # openvino's own message says little ("basic_ios::clear: iostream error"): add the free space
        reason = " ".join(str(exc).split()) or type(exc).__name__
        with contextlib.suppress(OSError):
            reason += f"; {shutil.disk_usage(cache_dir).free / 2**20:.0f} MiB free there"
    message = f"cannot save OpenVINO IR into {cache_dir}: {reason}"
    if _MUST_SAVE.get():
        raise IrCacheError(f"{message} (free space there, or choose another folder)") from None
    logger.warning("%s; using the model unsaved, so every start converts it again "
                   "(free space there, or set %s to a writable folder)", message, ENV_CACHE)


def compile(model: Any, threads: int | None = None, core: Any = None) -> Any:  # noqa: A001 - the contract's name
    """``model`` compiled for the CPU with ``threads`` inference threads (torch's count,
    ``torch.get_num_threads()``, when None: OpenVINO uses as many threads as torch).
    ``core``: an ``openvino.Core`` to reuse (a new one per call otherwise; no global state)."""
    ov = require_openvino()
    core = core if core is not None else ov.Core()
    if not threads:
        import torch

        threads = torch.get_num_threads()
    return core.compile_model(model, "CPU", {"INFERENCE_NUM_THREADS": int(threads)})
