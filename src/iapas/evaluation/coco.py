"""``iapas export coco``: a run's kept instances as a COCO instances file, for annotation tools.

A run is a ``segment`` folder (``results.jsonl``), an ``evaluate`` folder
(``predictions/CATEGORY.jsonl``; the held-out ``CATEGORY.calibration.jsonl`` are not exported)
or a station store (``iapas serve --store``: one segment folder per product). Each image that
was segmented (``status`` ok) becomes a COCO image; each kept box an annotation: its SAM mask
as COCO RLE (the record's ``kept_masks``, the very masks the anomaly map sums), its box, its
phrase as the category and its score. Records made before ``kept_masks`` existed cannot give
masks: :func:`export_coco` refuses them, naming the file, unless ``boxes_only``.

The layout (``docs/how-to/export-annotations.md``)::

    {"info": {...}, "licenses": [],
     "images": [{"id", "file_name", "width", "height", "path", "key", "category",
                 "attributes": {"verdict", "image_score", "decision_score", "threshold", ...}}],
     "annotations": [{"id", "image_id", "category_id", "segmentation": {"size", "counts"},
                      "area", "bbox": [x, y, w, h], "iscrowd": 0, "score", "attributes": {"score"}}],
     "categories": [{"id", "name", "supercategory": "anomaly"}]}

``file_name`` is the image's path relative to the folder that holds all the exported images
(``info.image_root``); ``path`` is its absolute path.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from iapas.core.files import atomic_write_text
from iapas.core.rle import rle_area, rle_runs
from iapas.core.version import __version__
from iapas.engine.records import RESULTS_FILE
from iapas.evaluation.decisions import CALIBRATION_SUFFIX
from iapas.evaluation.predictions import PREDICTIONS_DIR
from iapas.product.decision import verdict_at

SUPERCATEGORY = "anomaly"
METRICS_FILE = "metrics.json"
# a record's fields that become image attributes, where present
ATTRIBUTE_FIELDS = ("image_score", "decision_score", "normalized_score", "threshold", "decision_rule",
                    "label", "defect_type", "part_id", "filename")


class ExportError(ValueError):
    """A run folder cannot be exported; the message is one line naming the file."""


@dataclass
class RunSource:
    """What a run folder holds: its kind and, per category, the records file (and, for an
    evaluation, the calibrated threshold that gives its verdicts)."""

    kind: str  # "segment", "evaluate" or "store"
    files: list[tuple[str | None, Path]]
    thresholds: dict[str, float] = field(default_factory=dict)


KIND_WORDS = {"segment": "a segment folder", "evaluate": "an evaluate folder", "store": "a station store"}


@dataclass
class ExportSummary:
    kind: str  # a key of KIND_WORDS
    images: int = 0
    annotations: int = 0
    categories: int = 0
    skipped: int = 0  # records of images that failed


def find_run(run_dir: Path) -> RunSource:
    """The kind of ``run_dir`` and its records files; :class:`ExportError` if it is none of them."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ExportError(f"{run_dir}: no such folder")
    if (run_dir / RESULTS_FILE).is_file():
        return RunSource("segment", [(None, run_dir / RESULTS_FILE)])
    predictions = sorted(p for p in (run_dir / PREDICTIONS_DIR).glob("*.jsonl") if not p.stem.endswith(CALIBRATION_SUFFIX))
    if predictions:
        return RunSource("evaluate", [(p.stem, p) for p in predictions], evaluation_thresholds(run_dir))
    stores = sorted(p for p in run_dir.glob(f"*/{RESULTS_FILE}") if p.is_file())
    if stores:
        return RunSource("store", [(p.parent.name, p) for p in stores])
    raise ExportError(
        f"{run_dir}: not a segment folder, an evaluate folder or a station store "
        f"(no {RESULTS_FILE}, {PREDICTIONS_DIR}/*.jsonl or */{RESULTS_FILE})"
    )


def evaluation_thresholds(run_dir: Path) -> dict[str, float]:
    """Each category's calibrated OK/NG threshold in an evaluation's ``metrics.json`` (none
    when it was not calibrated, or the file is not there yet)."""
    path = run_dir / METRICS_FILE
    if not path.is_file():
        return {}
    try:
        categories = json.loads(path.read_text(encoding="utf-8")).get("categories") or {}
        return {
            name: float(entry["decision"]["threshold"]) for name, entry in categories.items()
            if isinstance(entry.get("decision"), dict) and entry["decision"].get("threshold") is not None
        }
    except (ValueError, TypeError, AttributeError, KeyError) as exc:
        raise ExportError(f"{path}: not an evaluation's metrics file ({exc})") from None


def read_records(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(line number, record)`` of each line of a JSON-lines file; :class:`ExportError` naming
    the file and line for a line that is not a JSON object."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ExportError(f"{path}: cannot read it ({exc})") from None
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            raise ExportError(f"{path}:{number}: not a JSON line") from None
        if not isinstance(record, dict):
            raise ExportError(f"{path}:{number}: not a JSON object")
        yield number, record


def image_attributes(record: dict[str, Any], threshold: float | None) -> dict[str, Any]:
    """The verdict and scores of a record: its own decision (segment, station), or, in an
    evaluation with a calibrated ``threshold``, the verdict of its raw image score at it."""
    attributes: dict[str, Any] = {"verdict": record.get("decision")}
    if attributes["verdict"] is None and threshold is not None and "map_max" in record:
        attributes["verdict"] = verdict_at(float(record["map_max"]), threshold)
        attributes["threshold"] = threshold
    attributes.update((name, record[name]) for name in ATTRIBUTE_FIELDS if record.get(name) is not None)
    return attributes


def instance_masks(record: dict[str, Any], where: str, boxes_only: bool) -> list[dict[str, Any] | None]:
    """The record's kept masks as RLE, one per kept box, checked against the image's size
    (None each with ``boxes_only``)."""
    kept = record.get("kept") or []
    if boxes_only:
        return [None] * len(kept)
    rles = record.get("kept_masks")
    if rles is None and not kept:
        return []
    if rles is None:
        raise ExportError(
            f"{where}: record {record.get('key')!r} has no instance masks (kept_masks; made by an older iapas): "
            "segment the images again, or export the boxes alone with --boxes-only"
        )
    if not isinstance(rles, list) or len(rles) != len(kept):
        raise ExportError(f"{where}: record {record.get('key')!r} has {len(kept)} kept boxes but not as many kept_masks")
    size = [record.get("height"), record.get("width")]
    for rle in rles:
        try:
            rle_runs(rle)
        except ValueError as exc:
            raise ExportError(f"{where}: record {record.get('key')!r}: {exc}") from None
        if list(rle["size"]) != size:
            raise ExportError(f"{where}: record {record.get('key')!r}: a mask of size {rle['size']} on a {size} image")
    return rles


class CocoBuilder:
    """Images, annotations and categories (one per phrase), numbered as they come."""

    def __init__(self) -> None:
        self.images: list[dict[str, Any]] = []
        self.annotations: list[dict[str, Any]] = []
        self.category_ids: dict[str, int] = {}

    def add(self, record: dict[str, Any], category: str | None, threshold: float | None, where: str, boxes_only: bool) -> None:
        try:
            width, height = int(record["width"]), int(record["height"])
            path = os.path.abspath(str(record["image"]))
            kept = [(list(map(float, k["box"])), float(k["score"]), str(k["phrase"])) for k in record.get("kept") or []]
            if any(len(box) != 4 for box, _, _ in kept):
                raise ValueError("a kept box is not [x0, y0, x1, y1]")
        except (KeyError, TypeError, ValueError) as exc:
            raise ExportError(f"{where}: record {record.get('key')!r} is not a result record ({exc!r})") from None
        masks = instance_masks(record, where, boxes_only)
        image_id = len(self.images) + 1
        self.images.append({
            "id": image_id, "file_name": path, "width": width, "height": height, "path": path, "key": record.get("key"),
            "category": category, "attributes": image_attributes(record, threshold),
        })
        for ((x0, y0, x1, y1), score, phrase), rle in zip(kept, masks):
            self.annotations.append({
                "id": len(self.annotations) + 1, "image_id": image_id,
                "category_id": self.category_ids.setdefault(phrase, len(self.category_ids) + 1),
                "segmentation": [] if rle is None else {"size": list(rle["size"]), "counts": rle["counts"]},
                "area": float((x1 - x0) * (y1 - y0) if rle is None else rle_area(rle)),
                "bbox": [x0, y0, round(x1 - x0, 2), round(y1 - y0, 2)], "iscrowd": 0, "score": score, "attributes": {"score": score},
            })

    def document(self, run_dir: Path, kind: str) -> dict[str, Any]:
        """The COCO file's content; ``file_name`` relative to the images' common folder."""
        root = os.path.commonpath([os.path.dirname(image["path"]) for image in self.images]) if self.images else ""
        for image in self.images:
            image["file_name"] = Path(os.path.relpath(image["path"], root)).as_posix()
        return {
            "info": {
                "description": f"iapas {kind} run {os.path.abspath(run_dir)}", "version": __version__,
                "date_created": datetime.now(timezone.utc).isoformat(timespec="seconds"), "image_root": root,
            },
            "licenses": [],
            "images": self.images,
            "annotations": self.annotations,
            "categories": [{"id": i, "name": name, "supercategory": SUPERCATEGORY} for name, i in self.category_ids.items()],
        }


def coco_document(run_dir: Path, boxes_only: bool = False) -> tuple[dict[str, Any], ExportSummary]:
    """The COCO instances content of a run folder (see the module docstring) and its counts."""
    source = find_run(run_dir)
    builder = CocoBuilder()
    summary = ExportSummary(source.kind)
    for category, path in source.files:
        threshold = source.thresholds.get(category) if category is not None else None
        for number, record in read_records(path):
            if record.get("status", "ok") != "ok":
                summary.skipped += 1
                continue
            builder.add(record, category, threshold, f"{path}:{number}", boxes_only)
    document = builder.document(run_dir, source.kind)
    summary.images, summary.annotations = len(document["images"]), len(document["annotations"])
    summary.categories = len(document["categories"])
    return document, summary


def export_coco(run_dir: Path, out: Path, boxes_only: bool = False) -> ExportSummary:
    """Write the COCO instances file of ``run_dir`` to ``out`` atomically (its folder is made)."""
    out = Path(out)
    if out.is_dir():
        raise ExportError(f"{out}: is a folder; give the JSON file to write")
    if Path(run_dir).resolve() in out.resolve().parents and out.exists() and not _is_coco_file(out):
        raise ExportError(f"{out}: is one of the run's own files; give a new file name (e.g. {Path(run_dir) / 'coco.json'})")
    document, summary = coco_document(run_dir, boxes_only)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out, json.dumps(document, separators=(",", ":")) + "\n")
    except OSError as exc:
        raise ExportError(f"{out}: cannot write it ({exc.strerror or exc})") from None
    return summary


def _is_coco_file(path: Path) -> bool:
    """Whether ``path`` holds a COCO document this exporter wrote (one may be written again)."""
    try:
        with open(path, encoding="utf-8") as fh:
            content = json.load(fh)
    except (OSError, ValueError):
        return False
    info = content.get("info") if isinstance(content, dict) else None
    return isinstance(info, dict) and str(info.get("description", "")).startswith("iapas ")
