"""A finished ``segment`` or ``evaluate`` folder as a read-only result store (``serve --review``).

Folders understood:

- a ``segment`` run folder (``results.jsonl``, ``run.json``, ``maps/``, ``masks/``, ``overlays/``),
  or a folder of them (a ``serve --store`` folder: one per category);
- an ``evaluate`` folder (``predictions/<category>.jsonl``, ``maps/<category>/<key>.npz``); its
  verdicts come from the records' own decision, else from the category's calibrated threshold in
  ``metrics.json`` (NG strictly above it, as the report), and its overlay is drawn at the map's
  400x400 from the test image the record names.

Each image gets an id (a digest of folder, category and key) that the page uses; files are found
through the record the id names, and only inside the folder (or, for an evaluate overlay, the
record's own test image).
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np

from iapas.product.decision import NO_DECISION_MASK_LEVEL, decision_mask, verdict_at
from iapas.evaluation.decisions import CALIBRATION_SUFFIX
from iapas.core.names import OutsideRootError, path_inside
from iapas.core.maps import binary_mask, encode_map
from iapas.engine.dispositions import attach_history, read_dispositions
from iapas.engine.log import ResultsLog
from iapas.engine.records import RESULTS_FILE, RUN_FILE
from iapas.serve.store import usable

logger = logging.getLogger(__name__)


class ReviewError(ValueError):
    """The folder is not a segment or evaluate folder."""


def _inside(folder: Path, relative: str) -> Path | None:
    """``folder/relative`` when it stays inside ``folder``, else None."""
    try:
        return path_inside(folder, relative)
    except OutsideRootError:
        return None


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and np.isfinite(value)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


class ReviewStore:
    """Read-only records and PNGs of a finished run folder."""

    readonly = True

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise ReviewError(f"{self.folder}: not a folder")
        self._records: dict[str, dict[str, Any]] = {}
        self._where: dict[str, tuple[str, Path]] = {}  # id -> (kind, folder the record's files are relative to)
        self._cache: OrderedDict[tuple[str, str], bytes] = OrderedDict()
        self._lock = threading.Lock()
        self.categories: list[str] = []
        self.thresholds: dict[str, float] = {}  # each category's calibrated threshold, where it has one
        self.skipped = 0  # malformed records, not listed
        if (self.folder / RESULTS_FILE).is_file():
            self._add_segment(self.folder)
        elif (self.folder / "predictions").is_dir():
            self._add_evaluate(self.folder)
        else:
            runs = sorted(p.parent for p in self.folder.glob(f"*/{RESULTS_FILE}"))
            if not runs:
                raise ReviewError(
                    f"{self.folder}: not a segment or evaluate folder (no results.jsonl, */results.jsonl or predictions/)"
                )
            for run in runs:
                self._add_segment(run)

    def _id(self, category: str, key: str) -> str:
        return hashlib.sha256(f"{self.folder}\0{category}\0{key}".encode()).hexdigest()[:32]

    def _add(self, kind: str, base: Path, category: str, record: dict[str, Any],
             history: list[dict[str, Any]] | None = None) -> None:
        result_id = self._id(category, str(record["key"]))
        self._records[result_id] = {**record, "id": result_id, "category": category}
        if history:  # a station's store folder: the dispositions given while it served
            attach_history(self._records[result_id], history)
        self._where[result_id] = (kind, base)
        if category not in self.categories:
            self.categories.append(category)

    def _add_segment(self, run: Path) -> None:
        content = _read_json(run / RUN_FILE)
        profile = content.get("profile") or {}
        category = str(profile.get("category") or run.name)
        decision = content.get("decision")
        if isinstance(decision, dict) and _number(decision.get("threshold")):
            self.thresholds[category] = float(decision["threshold"])
        histories = read_dispositions(run)
        for record in ResultsLog(run / RESULTS_FILE).read().values():
            if record.get("status") == "ok" and self._usable(record, run / RESULTS_FILE):
                self._add("segment", run, category, record, histories.get(str(record["key"])))

    def _add_evaluate(self, out: Path) -> None:
        thresholds: dict[str, float] = {}
        listed = _read_json(out / "metrics.json").get("categories") or {}
        for name, c in (listed.items() if isinstance(listed, dict) else ((None, c) for c in listed)):
            decision = c.get("decision") if isinstance(c, dict) else None
            if isinstance(decision, dict) and isinstance(decision.get("threshold"), (int, float)):
                thresholds[str(name or c.get("name"))] = float(decision["threshold"])
        for path in sorted((out / "predictions").glob("*.jsonl")):
            category = path.stem
            if category.endswith(CALIBRATION_SUFFIX):  # the calibration images: the threshold's input, not a product
                continue
            threshold = thresholds.get(category)
            for record in ResultsLog(path).read().values():
                if record.get("status") != "ok" or not self._usable(record, path):
                    continue
                if threshold is None and record.get("decision") is not None and _number(record.get("threshold")):
                    threshold = thresholds[category] = float(record["threshold"])  # a calibrated run's own
                score = float(record.get("map_max", record.get("image_score", 0.0)))
                if record.get("decision") is None and threshold is not None:
                    record = {**record, "decision": verdict_at(score, threshold), "threshold": threshold,
                              "decision_score": score}
                self._add("evaluate", out, category, record)
        self.thresholds.update(thresholds)

    def _usable(self, record: dict[str, Any], where: Path) -> bool:
        if usable(record, where):
            return True
        self.skipped += 1
        return False

    # --- the store interface ---------------------------------------------------------------------

    def add(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        raise RuntimeError("a review is read-only")

    def get(self, result_id: str) -> dict[str, Any] | None:
        return self._records.get(result_id)

    def records(self) -> list[dict[str, Any]]:
        return list(self._records.values())

    def __len__(self) -> int:
        return len(self._records)

    def ground_truth(self, result_id: str) -> np.ndarray | None:
        """The ground-truth mask (bool, at the map's size) of an evaluate record, None for others."""
        record = self._records.get(result_id)
        if record is None or self._where[result_id][0] != "evaluate" or "label" not in record:
            return None
        path = _inside(self.folder, str(record.get("map", "")))
        if path is None or not path.is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as data:
                return np.asarray(data["mask"], dtype=bool)
        except (OSError, ValueError, KeyError) as exc:
            logger.warning("%s: cannot read the ground truth of %s: %s", self.folder, record.get("key"), exc)
            return None

    def png(self, result_id: str, kind: str) -> bytes | None:
        record = self._records.get(result_id)
        if record is None:
            return None
        with self._lock:
            cached = self._cache.get((result_id, kind))
        if cached is not None:
            return cached
        source, base = self._where[result_id]
        try:
            data = self._segment_png(base, record, kind) if source == "segment" else self._evaluate_png(base, record, kind)
        except (OSError, ValueError, KeyError) as exc:
            logger.warning("%s: cannot show the %s of %s: %s", self.folder, kind, record.get("key"), exc)
            return None
        if data is not None:
            with self._lock:
                self._cache[(result_id, kind)] = data
                while len(self._cache) > 96:
                    self._cache.popitem(last=False)
        return data

    @staticmethod
    def _segment_png(run: Path, record: dict[str, Any], kind: str) -> bytes | None:
        relative = record.get("outputs", {}).get(kind)
        path = _inside(run, relative) if isinstance(relative, str) else None
        return path.read_bytes() if path is not None and path.is_file() else None

    @staticmethod
    def _evaluate_png(out: Path, record: dict[str, Any], kind: str) -> bytes | None:
        from iapas.serve.store import png_bytes

        path = _inside(out, str(record.get("map", "")))
        if path is None or not path.is_file():
            return None
        with np.load(path, allow_pickle=False) as data:
            amap = np.asarray(data["map"], dtype=np.float32)
        threshold = record.get("threshold")
        if kind == "map":
            return png_bytes(encode_map(amap))
        if kind == "mask":
            on = (decision_mask(amap, threshold) if isinstance(threshold, (int, float))
                  else binary_mask(amap, NO_DECISION_MASK_LEVEL) > 0)
            return png_bytes(np.where(on, 255, 0).astype(np.uint8))
        from PIL import Image

        from iapas.core.images import read_image
        from iapas.engine.outputs import render_overlay
        from iapas.core.types import Detections, SegmentationResult

        rgb = read_image(record["image"]).rgb
        rgb = np.asarray(Image.fromarray(rgb).resize((amap.shape[1], amap.shape[0]), Image.BILINEAR))
        empty = Detections.empty()
        result = SegmentationResult(np.clip(amap, 0, None), empty, empty, np.zeros((0, *amap.shape), bool), None, None, 1.0, "default")
        return png_bytes(render_overlay(rgb, result, draw_boxes=False), compress_level=1)
