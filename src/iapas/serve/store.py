"""Where inspections are kept: in memory (bounded) or on disk as ``segment`` run folders.

A result id is generated here (:func:`new_id`: 12 hex digits of milliseconds since the epoch,
then 20 random ones, so ids sort by time) and checked with :data:`ID_PATTERN` wherever one comes
in; an id is never taken as a path: files are found through the record the id names.

``DiskStore`` writes every inspection of category ``C`` into ``STORE/C/`` exactly as
``iapas segment`` writes a run folder (:func:`iapas.engine.runner.run_segmentation`): ``run.json``,
``maps/ID.png``, ``masks/ID.png``, ``overlays/ID.png`` and one line of ``results.jsonl``
(:func:`iapas.engine.records.result_record`), with the key ``ID``. The uploaded bytes are kept as
``uploads/ID.EXT``, the record's ``image``, so that the folder can be evaluated, reviewed or
segmented again like any other.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import io
import json
import logging
import math
import os
import re
import secrets
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from iapas.product.decision import ImageDecision, mask_level, output_mask
from iapas.core.images import LoadedImage, _pil_pixel_limit
from iapas.core.files import atomic_write_bytes, atomic_write_text, clean_stale_temp_files
from iapas.core.names import check_name, path_inside
from iapas.core.maps import decode_map, encode_map
from iapas.engine.outputs import KINDS, OutputInputs, output_kind, output_names, write_image_outputs
from iapas.pipeline.stage2 import Pipeline
from iapas.product.profile import Profile
from iapas.engine.dispositions import append_disposition, attach_history, read_dispositions
from iapas.engine.log import ResultsLog
from iapas.engine.records import RESULTS_FILE, RUN_FILE, result_record
from iapas.engine.records import run_file_content as segment_run_file_content
from iapas.engine.runfolder import check_signature
from iapas.engine.signature import run_signature
from iapas.core.types import SegmentationResult

logger = logging.getLogger(__name__)

ID_PATTERN = re.compile(r"^[0-9a-f]{32}$")
UPLOAD_SUFFIXES = {"PNG": ".png", "JPEG": ".jpg", "BMP": ".bmp", "TIFF": ".tif", "WEBP": ".webp"}
MIN_FREE_BYTES = 32 * 2**20  # a store with less free space takes no more inspections (507)
STORED_BYTES_PER_PIXEL = 8  # at most: the 16-bit map, the mask and the RGB overlay PNGs
PROBE_FILE = ".iapas-write-probe"
STATION_FIELDS = ("filename", "part_id", "timings_ms", "batch_size", "audit", "audit_rate")  # kept in results.jsonl too
NUMBER_FIELDS = ("image_score", "decision_score", "normalized_score", "threshold", "map_max")


class StoreError(RuntimeError):
    """An inspection cannot be stored: ``status`` 507 (no space) or 503 (read-only, other)."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status, self.detail = status, detail


def write_error_status(exc: OSError) -> int:
    """507 Insufficient Storage for a full disk or quota, 503 for anything else (read-only...)."""
    return 507 if exc.errno in (errno.ENOSPC, errno.EDQUOT) else 503


def write_reason(exc: OSError) -> str:
    """``'no space left on device (STORE/C/maps/ID.png)'``: a failed write, in words."""
    words = (exc.strerror or str(exc)).lower()
    return f"{words} ({exc.filename})" if exc.filename else words


def record_problem(record: dict[str, Any]) -> str | None:
    """What makes a stored record unusable for listing (one line), None when it is usable."""
    if not isinstance(record.get("key"), str):
        return f"key {record.get('key')!r} is not a string"
    for name in NUMBER_FIELDS:
        value = record.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)):
            return f"{name} {value!r} is not a finite number"
    for name in ("filename", "part_id"):
        if not isinstance(record.get(name, ""), (str, type(None))):
            return f"{name} {record.get(name)!r} is not a string"
    if record.get("decision") not in (None, "OK", "NG"):
        return f"decision {record.get('decision')!r} is not OK, NG or null"
    for name in ("kept", "dropped"):
        if not isinstance(record.get(name, []), list):
            return f"{name} is not a list"
    if not isinstance(record.get("outputs", {}), dict):
        return "outputs is not an object"
    return None


def usable(record: Any, where: Any) -> bool:
    """Whether a record read from ``where`` can be listed; one log line when it cannot."""
    problem = record_problem(record) if isinstance(record, dict) else "not an object"
    if problem is not None:
        logger.warning("%s: skipping the record %r: %s", where, record.get("key") if isinstance(record, dict) else None, problem)
    return problem is None


def persisted(extra: dict[str, Any]) -> dict[str, Any]:
    """What a station keeps of an inspection besides ``segment``'s record (its file name, part
    id, per-stage milliseconds and batch size), so that the history survives a restart with its names."""
    return {k: extra[k] for k in STATION_FIELDS if k in extra}


def new_id() -> str:
    """A time-ordered random id: 12 hex digits of epoch milliseconds + 20 random hex digits."""
    return f"{int(time.time() * 1000) & (16**12 - 1):012x}{secrets.token_hex(10)}"


def valid_id(value: str) -> bool:
    return bool(ID_PATTERN.fullmatch(value))


def png_bytes(array: np.ndarray, compress_level: int = 6) -> bytes:
    """``array`` as PNG bytes, encoded as :func:`iapas.core.files.save_png` writes files."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array)).save(buffer, format="PNG", compress_level=compress_level)
    return buffer.getvalue()


def upload_suffix(data: bytes, pixels: int) -> str:
    """The file suffix of an upload's format, read from its content; ``pixels``: its size, already
    checked against the station's --max-pixels (PIL's own limit would refuse a larger one)."""
    from PIL import Image

    try:
        with _pil_pixel_limit(pixels), Image.open(io.BytesIO(data), formats=tuple(UPLOAD_SUFFIXES)) as im:
            return UPLOAD_SUFFIXES.get(str(im.format), ".img")
    except Exception:  # already decoded once: this cannot fail for a served image
        return ".img"


class ResultStore(Protocol):
    readonly: bool

    def add(self, category: str, image: LoadedImage, data: bytes, result: SegmentationResult,
            verdict: ImageDecision | None, extra: dict[str, Any]) -> dict[str, Any]: ...

    def get(self, result_id: str) -> dict[str, Any] | None: ...

    def png(self, result_id: str, kind: str) -> bytes | None: ...

    def records(self) -> list[dict[str, Any]]: ...

    def dispose(self, result_id: str, entry: dict[str, Any]) -> dict[str, Any] | None: ...

    def __len__(self) -> int: ...


@dataclass
class _Held:
    """One inspection in memory: its record, and what its pictures are made from until asked
    for (the encoded map, the packed mask, the upload) or, once asked for, their PNG bytes."""

    record: dict[str, Any]
    encoded_map: np.ndarray  # uint16, as the map PNG holds it
    packed_mask: np.ndarray  # np.packbits of the verdict's mask
    upload: tuple[bytes, str]  # the uploaded bytes and name, for the overlay
    light: SegmentationResult  # the result without its map and per-box masks, for the overlay
    verdict: ImageDecision | None  # without its mask
    pngs: dict[str, bytes] = field(default_factory=dict)

    @property
    def nbytes(self) -> int:
        return (self.encoded_map.nbytes + self.packed_mask.nbytes + len(self.upload[0])
                + sum(len(v) for v in self.pngs.values()))


class MemoryStore:
    """The last ``capacity`` inspections, and no more than ``max_bytes`` of them, the oldest
    dropped first. Nothing is encoded when an inspection is added: its map (as uint16), its
    mask (bit-packed) and the upload are kept, and each PNG is encoded on its first request,
    then kept. A client that only reads verdicts never pays for pictures; PNG encoding of the
    map and mask at once cost about a tenth of the served rate on a 2-core machine
    (``benchmarks/serve_load.py``). The PNGs are the bytes ``iapas segment`` writes."""

    readonly = False

    def __init__(self, profiles: dict[str, Profile], capacity: int = 256, max_bytes: int = 512 * 2**20,
                 show_dropped: bool = False) -> None:
        self.capacity = capacity
        self.show_dropped = show_dropped
        self.max_bytes = max_bytes
        self.profiles = profiles
        self._items: OrderedDict[str, _Held] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def add(self, category: str, image: LoadedImage, data: bytes, result: SegmentationResult,
            verdict: ImageDecision | None, extra: dict[str, Any]) -> dict[str, Any]:
        threshold = mask_level(self.profiles[category].decision)
        result_id = new_id()
        record = result_record(result_id, image, result, output_names(result_id), threshold, verdict)
        record.update(image=str(image.path), category=category, **extra)
        record.pop("size", None), record.pop("mtime_ns", None)  # no file behind it
        held = _Held(
            record=record,
            encoded_map=encode_map(result.anomaly_map),
            packed_mask=np.packbits(output_mask(result.anomaly_map, verdict, threshold) > 0),
            upload=(data, str(image.path)),
            light=dataclasses.replace(result, anomaly_map=np.zeros((0, 0), np.float32), masks=np.zeros((0, 0, 0), bool)),
            verdict=None if verdict is None else dataclasses.replace(verdict, mask=np.zeros((0, 0), bool)),
        )
        with self._lock:
            self._items[result_id] = held
            self._bytes += held.nbytes
            self._evict()
        return record

    def _evict(self) -> None:
        while self._items and (len(self._items) > self.capacity or (self._bytes > self.max_bytes and len(self._items) > 1)):
            _, old = self._items.popitem(last=False)
            self._bytes -= old.nbytes

    def get(self, result_id: str) -> dict[str, Any] | None:
        with self._lock:
            held = self._items.get(result_id)
        return held.record if held else None

    def png(self, result_id: str, kind: str) -> bytes | None:
        with self._lock:
            held = self._items.get(result_id)
            if held is None or kind not in KINDS:
                return None
            if kind in held.pngs:
                return held.pngs[kind]
        shape = held.encoded_map.shape
        if kind == "map":
            data = png_bytes(held.encoded_map)
        elif kind == "mask":
            bits = np.unpackbits(held.packed_mask, count=shape[0] * shape[1]).reshape(shape)
            data = png_bytes(np.where(bits > 0, 255, 0).astype(np.uint8))
        else:  # drawn from the upload and the stored map, as the run's writer draws it
            from iapas.core.images import read_image_bytes

            upload, name = held.upload
            # read once already under the station's --max-pixels: allow exactly its own size
            rgb = read_image_bytes(upload, name, max_pixels=shape[0] * shape[1]).rgb
            light = dataclasses.replace(held.light, anomaly_map=decode_map(held.encoded_map))
            threshold = held.record.get("threshold", 0.0)
            row = output_kind(kind)
            data = png_bytes(row.draw(OutputInputs(rgb, light, threshold, held.verdict, self.show_dropped)),
                             compress_level=row.compress_level)
        with self._lock:
            if result_id in self._items and kind not in held.pngs:
                held.pngs[kind] = data
                self._bytes += len(data)
                self._evict()
        return data

    def records(self) -> list[dict[str, Any]]:
        with self._lock:
            return [held.record for held in self._items.values()]

    def dispose(self, result_id: str, entry: dict[str, Any]) -> dict[str, Any] | None:
        """Add a checked disposition ``entry`` to the result's history (in memory only); None
        when the result is not (or no longer) kept."""
        with self._lock:
            held = self._items.get(result_id)
            return None if held is None else attach_history(held.record, [*held.record.get("dispositions", []), entry])

    def __len__(self) -> int:
        return len(self._items)


def category_folder(root: Path, category: str) -> Path:
    """``root/category``: a plain name (:mod:`iapas.core.names`) whose folder resolves inside ``root``
    (a category folder that is a link to elsewhere is refused too); ValueError else."""
    return path_inside(root, check_name(category, "category"))


def run_file_content(pipeline: Pipeline, profile: Profile) -> dict[str, Any]:
    """``run.json`` of a category folder, as :func:`iapas.engine.runner.run_segmentation` writes it."""
    decision = profile.decision
    return segment_run_file_content(run_signature(pipeline, profile), mask_level(decision), decision, profile)


class DiskStore:
    """Every inspection as one image of a ``segment`` run folder ``root/<category>/``."""

    readonly = False

    def __init__(self, root: Path, pipeline: Pipeline, profiles: dict[str, Profile], min_free: int = MIN_FREE_BYTES,
                 show_dropped: bool = False) -> None:
        self.root = Path(root)
        self.show_dropped = show_dropped
        self.profiles = profiles
        self.min_free = min_free
        self.degraded: str | None = None  # why the last write failed, until one succeeds again
        self.skipped = 0  # malformed records of earlier sessions, not listed
        self._lock = threading.Lock()
        self._logs: dict[str, ResultsLog] = {}
        self._records: OrderedDict[str, dict[str, Any]] = OrderedDict()
        for category, profile in profiles.items():
            folder = category_folder(self.root, category)
            content = run_file_content(pipeline, profile)
            self._check(folder, content)
            folder.mkdir(parents=True, exist_ok=True)
            clean_stale_temp_files(folder)
            atomic_write_text(folder / RUN_FILE, json.dumps(content, indent=2) + "\n")
            log = ResultsLog(folder / RESULTS_FILE)
            self._logs[category] = log
            for key, record in log.read().items():  # the history of earlier sessions
                if valid_id(key) and record.get("status") == "ok":
                    if usable(record, log.path):
                        self._records[key] = {**record, "category": category}
                    else:
                        self.skipped += 1
            for key, history in read_dispositions(folder).items():  # what people said about them
                if key in self._records:
                    attach_history(self._records[key], history)
        self._records = OrderedDict(sorted(self._records.items()))  # ids sort by time

    @staticmethod
    def _check(folder: Path, content: dict[str, Any]) -> None:
        """Refuse a folder whose results were made with other settings (as segment does)."""
        check_signature(folder / RUN_FILE, ResultsLog(folder / RESULTS_FILE), content["signature"], folder, "use another --store folder")

    def _degrade(self, status: int, reason: str) -> tuple[int, str]:
        if self.degraded != reason:
            logger.error("the store cannot take inspections: %s", reason)
        self.degraded = reason
        return status, reason

    def refusal(self, category: str, nbytes: int, pixels: int = 0) -> tuple[int, str] | None:
        """``(status, reason)`` when an inspection of ``nbytes`` (``pixels``) could not be
        stored now: too little free space (507), or a failed write that a probe write still
        repeats (507 or 503). None when it can; a probe that succeeds ends the degraded state."""
        folder = self.root / category
        try:
            stat = os.statvfs(folder)
        except OSError as exc:
            return self._degrade(503, f"cannot read the store folder: {write_reason(exc)}")
        free = stat.f_bavail * stat.f_frsize
        need = self.min_free + nbytes + STORED_BYTES_PER_PIXEL * pixels
        if free < need:
            return self._degrade(507, f"the store is full: {free / 2**20:.1f} MiB free in {folder}, "
                                      f"{need / 2**20:.1f} MiB needed to keep an inspection")
        if self.degraded is not None:
            try:
                atomic_write_bytes(folder / PROBE_FILE, b"")
                (folder / PROBE_FILE).unlink()
            except OSError as exc:
                return self._degrade(write_error_status(exc), f"cannot write to the store: {write_reason(exc)}")
            logger.info("the store takes inspections again")
            self.degraded = None
        return None

    def add(self, category: str, image: LoadedImage, data: bytes, result: SegmentationResult,
            verdict: ImageDecision | None, extra: dict[str, Any]) -> dict[str, Any]:
        threshold = mask_level(self.profiles[category].decision)
        folder = category_folder(self.root, category)
        result_id = new_id()
        upload = folder / "uploads" / f"{result_id}{upload_suffix(data, image.height * image.width)}"
        try:
            atomic_write_bytes(upload, data)
            stored = LoadedImage(path=Path(os.path.abspath(upload)), rgb=image.rgb, mode=image.mode)
            outputs = write_image_outputs(folder, result_id, image.rgb, result, threshold, overlay=True, verdict=verdict,
                                          show_dropped=self.show_dropped)
            record = {**result_record(result_id, stored, result, outputs, threshold, verdict), **persisted(extra)}
            with self._lock:  # one writer per results.jsonl
                self._logs[category].append(record)
                self._records[result_id] = {**record, "category": category, **extra}
        except OSError as exc:  # nothing half-stored is left: the record was not appended
            for path in (upload, *(folder / name for name in output_names(result_id).values())):
                with contextlib.suppress(OSError):
                    path.unlink(missing_ok=True)
            status, reason = self._degrade(write_error_status(exc), f"cannot write to the store: {write_reason(exc)}")
            raise StoreError(status, f"{reason}; the inspection was not kept") from None
        self.degraded = None
        return self._records[result_id]

    def get(self, result_id: str) -> dict[str, Any] | None:
        with self._lock:
            return self._records.get(result_id)

    def png(self, result_id: str, kind: str) -> bytes | None:
        record = self.get(result_id)
        if record is None or kind not in KINDS or kind not in record.get("outputs", {}):
            return None
        path = self.root / record["category"] / output_names(result_id)[kind]  # from the validated id only
        try:
            return path.read_bytes()
        except OSError:
            return None

    def records(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self._records.values())

    def dispose(self, result_id: str, entry: dict[str, Any]) -> dict[str, Any] | None:
        """Append a checked disposition ``entry`` to the category's ``dispositions.jsonl``, then
        to the result's history; None for an unknown result, StoreError when it cannot be written."""
        record = self.get(result_id)
        if record is None:
            return None
        try:
            append_disposition(category_folder(self.root, record["category"]), entry)
        except OSError as exc:
            status, reason = self._degrade(write_error_status(exc), f"cannot write to the store: {write_reason(exc)}")
            raise StoreError(status, f"{reason}; the disposition was not kept") from None
        self.degraded = None
        with self._lock:
            return attach_history(record, [*record.get("dispositions", []), entry])

    def __len__(self) -> int:
        return len(self._records)
