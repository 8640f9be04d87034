"""Evaluating stage 2 on a benchmark dataset: resumable per-image predictions, then metrics.

Layout of an evaluation folder ``OUT``::

    OUT/run.json                    settings, models and per-category signature (for resuming)
    OUT/profiles/<category>.yaml    stage-1 profiles (reused when present; editable)
    OUT/predictions/<category>.jsonl  one JSON line per test image, appended as it finishes
    OUT/maps/<category>/<key>.npz   the 400x400 map (float32, raw: before any normalisation) and mask (bool)
    OUT/metrics.{csv,json,md}, OUT/curves.json, OUT/report.html

Resuming: each finished image is one line of ``predictions/<category>.jsonl`` (flushed and
fsynced, written after its ``.npz``, which is written atomically), so a killed run loses at most
the images in flight. Running the same command again skips every image whose line says ``ok``
for the same file (path, size and modification time) and whose map file exists, redoes the
others, and refuses (:class:`RunConflictError`) when the settings that decide the predictions
(mode, caption, object tag, size threshold, models, protocol, references, resolution, resize
method) differ from the stored ones. The per-image normalisation (``image_norm``) and the image
score (``image_score``) are applied when the metrics are computed, from the stored maps and the
raw range each record stores, so switching them re-computes the metrics only (they are not part
of the signature).

Maps are stored as float32 in compressed ``.npz`` files: lossless, so ties and the exact AP are
those of the computed maps (float16 or 16-bit PNG quantisation would create ties and move AP).
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from iapas import __version__
from iapas.data import DEFAULT_PROTOCOL, Category, DatasetBase, MaskError, Sample, get_dataset, sample_mask
from iapas.evaluation.decisions import ThresholdEvidence, calibration_category, raw_scores, threshold_evidence
from iapas.evaluation.cvresize import resize_map_cubic, resize_mask_nearest
from iapas.evaluation.profiles import ProfileRecord, Stage1Models, Stage1Options, get_profile, profile_path
from iapas.evaluation.protocol import (
    EVAL_SIZE,
    PR_POINTS,
    limit_samples,
    normalize_image,
    normalize_stack,
    pr_curve,
    resize_map,
    resize_mask,
)
from iapas.io import DEFAULT_MAX_PIXELS, ImageReadError, LoadedImage, atomic_path, atomic_write_text, clean_stale_temp_files
from iapas.metrics import CategoryMetrics, category_metrics
from iapas.models import ModelOutputError
from iapas.pipeline import Pipeline
from iapas.profile import Profile
from iapas.prompts.caption import BASE_CAPTION, REFERENCE_BASE_CAPTION
from iapas.io import file_stamp, show_path
from iapas.runner import ResultsLog, RunConflictError, assign_keys, precision_signature, prefetch_images
from iapas.storage import DiskFullError, is_disk_full, stop_reason
from iapas.types import SegmentationResult

logger = logging.getLogger(__name__)

RUN_FILE = "run.json"
PREDICTIONS_DIR = "predictions"
MAPS_DIR = "maps"
PROFILES_DIR = "profiles"
MODES = ("iapas", "base")
PROTOCOLS = ("paper", "full")
IMAGE_SCORES = ("paper", "raw")

# The columns of the tables, in the paper's order: pixel AP and F1-max first, then companions.
METRIC_COLUMNS: tuple[tuple[str, str], ...] = (
    ("pixel_ap", "pixel AP"),
    ("pixel_f1_max", "pixel F1-max"),
    ("pixel_f1_max_100", "pixel F1-max (paper's 100 thr.)"),
    ("pixel_auroc", "pixel AUROC"),
    ("pixel_aupro", "pixel AUPRO (30% FPR)"),
    ("image_auroc", "image AUROC"),
    ("image_ap", "image AP"),
    ("image_f1_max", "image F1-max"),
    ("image_f1_max_100", "image F1-max (paper's 100 thr.)"),
)

__all__ = [
    "METRIC_COLUMNS",
    "CategoryResult",
    "DatasetResult",
    "EvalSettings",
    "ImageFailure",
    "ProgressHooks",
    "RunConflictError",
    "evaluate_category",
    "evaluate_dataset",
    "metrics_from_predictions",
]


@dataclass
class EvalSettings:
    """What an evaluation does, besides the models.

    ``protocol``: 'paper' (the test images the paper's reference code used) or 'full' (the whole
    test split); both evaluate 400x400 maps (``eval_size``) normalised over each category's stack.
    ``image_norm``: min-max normalise each image's map with its raw full-resolution range before
    the stack normalisation (see :mod:`~iapas.evaluation.protocol`); a metric-time option, not
    part of the resume signature. None (the default): on, as the paper's reference code does,
    except for mode 'base' under the paper protocol, where the reference skips it (off).
    ``mode``: 'iapas' (the profile's caption and the size filter) or 'base' (the paper's baseline:
    no size filter; caption 'defect, abnormal.', one phrase as in the reference code, under the
    paper protocol, else 'defect . abnormal .'). ``size_threshold`` overrides the profile's (None:
    the profile's, 0.8 by default); ``size_filter=False`` keeps every box (ablation).
    ``caption`` replaces the profile's caption in mode 'iapas' (the fixed-prompt ablation keeps
    the object tag and the size filter). ``limit``: at most this many test images per category,
    drawn with ``seed`` and stratified by label (quick checks; the report says so; see
    :func:`~iapas.evaluation.protocol.limit_samples`).
    ``image_score``: 'paper' (the reference code's: each image's maximum of the normalised
    400x400 stack the pixel metrics see) or 'raw' (the raw full-resolution map's maximum);
    None: 'paper' under the paper protocol, 'raw' under 'full'. A metric-time option like
    ``image_norm``. The 400x400 resizing follows the protocol: OpenCV's ``INTER_CUBIC`` /
    ``INTER_NEAREST`` arithmetic under 'paper' (the reference code's, see
    :mod:`~iapas.evaluation.cvresize`), PIL's antialiased bicubic / nearest under 'full'.
    ``test_pool_references``: when set, each category's test images are those left after
    drawing this many references (with ``seed``), whatever ``n_references`` is, so runs with
    different reference counts score the same images (the bench sets it to its largest count).
    ``calibration_images``: per category, segment this many normal images held out from the
    references and the test set and calibrate a conformal OK/NG threshold on them for the target
    ``false_alarm_rate`` (see :mod:`~iapas.evaluation.decisions`); 0 (the default): none. Without
    a normal training split they are drawn from the normal test images, which they then leave.
    """

    protocol: str = DEFAULT_PROTOCOL
    mode: str = "iapas"
    size_threshold: float | None = None
    size_filter: bool = True
    caption: str | None = None
    n_references: int = 10
    seed: int = 0
    eval_size: int = EVAL_SIZE
    limit: int | None = None
    batch_size: int = 1
    max_pixels: int = DEFAULT_MAX_PIXELS
    image_norm: bool | None = None
    image_score: str | None = None
    test_pool_references: int | None = None
    calibration_images: int = 0
    false_alarm_rate: float = 0.01

    def __post_init__(self) -> None:
        if self.image_norm is None:  # the reference code's baseline skips the per-image normalisation
            self.image_norm = not (self.mode == "base" and self.protocol == "paper")
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"protocol must be one of {', '.join(PROTOCOLS)}, got {self.protocol!r}")
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if self.size_threshold is not None and not self.size_threshold > 0:
            raise ValueError(f"size_threshold must be > 0, got {self.size_threshold}")
        if self.n_references < 0:
            raise ValueError(f"n_references must be >= 0, got {self.n_references}")
        if self.eval_size < 8:
            raise ValueError(f"eval_size must be >= 8 pixels, got {self.eval_size}")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"limit must be >= 1, got {self.limit}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.caption is not None and not self.caption.strip():
            raise ValueError("caption must not be empty")
        if self.image_score is not None and self.image_score not in IMAGE_SCORES:
            raise ValueError(f"image_score must be one of {', '.join(IMAGE_SCORES)}, got {self.image_score!r}")
        if self.test_pool_references is not None and self.test_pool_references < self.n_references:
            raise ValueError(
                f"test_pool_references ({self.test_pool_references}) must be >= n_references ({self.n_references})"
            )
        if self.calibration_images < 0:
            raise ValueError(f"calibration_images must be >= 0, got {self.calibration_images}")
        if not 0 < self.false_alarm_rate < 1:
            raise ValueError(f"false_alarm_rate must be in (0, 1), got {self.false_alarm_rate}")
        if self.mode == "base" and self.caption is not None:
            raise ValueError("a fixed caption is for mode 'iapas' (mode 'base' has its own fixed caption)")

    def signature(self) -> dict[str, Any]:
        """The settings that decide the predictions (compared when resuming)."""
        return {
            "protocol": self.protocol,
            "mode": self.mode,
            "size_filter": self.size_filter if self.mode == "iapas" else False,
            "size_threshold_override": self.size_threshold if self.mode == "iapas" and self.size_filter else None,
            "caption_override": self.caption,
            "n_references": self.n_references,
            "seed": self.seed,
            "eval_size": self.eval_size,
            "resize": self.resize_method,
            # a pool equal to the references drawn changes nothing: the same signature as without one
            "test_pool_references": None if self.test_pool_references == self.n_references else self.test_pool_references,
        }

    @property
    def image_score_method(self) -> str:
        """'paper' or 'raw' (see the class docstring)."""
        if self.image_score is not None:
            return self.image_score
        return "paper" if self.protocol == "paper" else "raw"

    @property
    def resize_method(self) -> str:
        """'opencv' (the paper protocol's) or 'pil' (the full protocol's)."""
        return "opencv" if self.protocol == "paper" else "pil"

    def resizers(self) -> tuple[Callable[[np.ndarray, int], np.ndarray], Callable[[np.ndarray, int], np.ndarray]]:
        """``(resize_map, resize_mask)`` of :attr:`resize_method`."""
        if self.resize_method == "opencv":
            return resize_map_cubic, resize_mask_nearest
        return resize_map, resize_mask

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class ProgressHooks:
    """Optional callbacks for progress displays (the CLI's rich bars)."""

    on_category: Callable[[str, int], None] | None = None  # (category, images to evaluate)
    on_image: Callable[[str, str, str], None] | None = None  # (category, key, 'ok' | 'failed' | 'skipped')
    on_stage1: Callable[[str, str, int, int], None] | None = None  # (category, step, done, total)


@dataclass
class ImageFailure:
    key: str
    image: str
    error: str


@dataclass
class CategoryResult:
    """One category's evaluation. ``metrics`` is None when nothing could be evaluated (``error``)."""

    name: str
    n_test: int = 0  # test images evaluated (after --limit)
    n_done: int = 0  # of which segmented without error
    n_new: int = 0  # segmented by this run (the rest were resumed)
    failures: list[ImageFailure] = field(default_factory=list)
    metrics: CategoryMetrics | None = None
    error: str | None = None
    profile: ProfileRecord = field(default_factory=lambda: ProfileRecord(None, "none"))
    notes: list[str] = field(default_factory=list)
    score_range: tuple[float, float] | None = None  # (min, max) of the stack the stack normalisation used
    # (of the per-image normalised maps when image_norm is on, else of the raw 400x400 maps)
    pr: dict[str, list[float]] | None = None  # thresholds, precision, recall on normalised maps
    n_references: int = 0
    seconds: float = 0.0  # segmenting the images of this run (not resumed ones, not the metrics)
    metrics_seconds: float = 0.0
    predictions: str = ""  # path relative to the evaluation folder
    keys: list[str] = field(default_factory=list)  # the evaluated images' keys, in test order
    decision: ThresholdEvidence | None = None  # the calibrated OK/NG threshold and what it gives

    @property
    def failed(self) -> bool:
        return bool(self.failures) or self.error is not None

    def to_dict(self) -> dict[str, Any]:
        data = {
            "name": self.name,
            "n_test": self.n_test,
            "n_done": self.n_done,
            "n_failed": len(self.failures),
            "n_references": self.n_references,
            "error": self.error,
            "metrics": self.metrics.to_dict() if self.metrics else None,
            "score_range": list(self.score_range) if self.score_range else None,
            "profile": self.profile.to_dict(),
            "notes": list(self.notes),
            "failures": [asdict(f) for f in self.failures],
            "predictions": self.predictions,
            "seconds": round(self.seconds, 3),
            "metrics_seconds": round(self.metrics_seconds, 3),
            "n_new": self.n_new,
            "decision": self.decision.to_dict() if self.decision else None,
        }
        return _json_safe(data)


@dataclass
class DatasetResult:
    """An evaluation of (some categories of) one dataset."""

    dataset: str
    title: str
    root: str
    out_dir: Path
    settings: EvalSettings
    categories: list[CategoryResult]
    models: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    iapas_version: str = __version__
    created: str = ""
    stopped: str | None = None  # why the run stopped early (the disk is full), see iapas.storage

    @property
    def failed(self) -> bool:
        return self.stopped is not None or any(c.failed for c in self.categories)

    @property
    def n_failed_images(self) -> int:
        return sum(len(c.failures) for c in self.categories)

    def mean(self, categories: Sequence[str] | None = None) -> dict[str, float]:
        """Mean of each metric over the categories (all, or those named) where it is defined
        (nan when none)."""
        chosen = [c for c in self.categories if categories is None or c.name in categories]
        out: dict[str, float] = {}
        for key, _ in METRIC_COLUMNS:
            values = [getattr(c.metrics, key) for c in chosen if c.metrics is not None]
            finite = [v for v in values if v is not None and math.isfinite(v)]
            out[key] = float(np.mean(finite)) if finite else float("nan")
        return out

    def undefined(self) -> dict[str, list[str]]:
        """Per metric, the categories where it is undefined (nan) and left out of the mean."""
        out: dict[str, list[str]] = {}
        for key, _ in METRIC_COLUMNS:
            names = [c.name for c in self.categories if c.metrics is not None and not math.isfinite(getattr(c.metrics, key))]
            if names:
                out[key] = names
        return out

    def protocol_sentence(self) -> str:
        s = self.settings
        which = (
            "the paper's test images (its reference code's selection)" if s.protocol == "paper" else "the whole test split (normal and defective)"
        )
        norm = (
            "each image's map min-max normalised with its raw full-resolution range (the reference code's), then"
            if s.image_norm
            else "no per-image normalisation (as the reference code's baseline);"
            if s.mode == "base" and s.protocol == "paper"
            else "no per-image normalisation (--no-image-norm: not the paper's protocol);"
        )
        resize = (
            "OpenCV INTER_CUBIC arithmetic, masks INTER_NEAREST, as the reference code"
            if s.resize_method == "opencv"
            else "PIL antialiased bicubic, masks nearest"
        )
        score = (
            "each image's maximum of the normalised stack (the reference code's)"
            if s.image_score_method == "paper"
            else "the maxima of the raw full-resolution maps (--image-score raw, not the reference code's)"
        )
        return (
            f"{s.protocol} protocol: {which}; maps resized to {s.eval_size}x{s.eval_size} ({resize}), "
            f"{norm} each category's maps min-max normalised over its whole stack; image scores are {score}; "
            "defective images without a mask are left out of the pixel metrics (kept in the image metrics)."
        )

    def to_dict(self) -> dict[str, Any]:
        return _json_safe(
            {
                "dataset": self.dataset,
                "title": self.title,
                "root": self.root,
                "protocol": self.settings.protocol,
                "protocol_description": self.protocol_sentence(),
                "mode": self.settings.mode,
                "image_norm": self.settings.image_norm,
                "image_score": self.settings.image_score_method,
                "settings": self.settings.to_dict(),
                "models": self.models,
                "iapas_version": self.iapas_version,
                "created": self.created,
                "notes": list(self.notes),
                "categories": {c.name: c.to_dict() for c in self.categories},
                "mean": self.mean(),
                "undefined": self.undefined(),
                "failed": self.failed,
            }
        )


def _json_safe(value: Any) -> Any:
    """nan/inf -> None, so the JSON files are standard JSON."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


# --- the stage-2 pipeline an evaluation uses ------------------------------------------------------


def stage2_pipeline(pipeline: Pipeline, settings: EvalSettings) -> Pipeline:
    """``pipeline``'s models with the mode and size threshold of ``settings``."""
    config = replace(
        pipeline.config,
        mode=settings.mode,
        size_threshold=None if settings.mode == "base" else settings.size_threshold,
        size_filter=settings.size_filter,
        base_caption=REFERENCE_BASE_CAPTION if settings.protocol == "paper" else BASE_CAPTION,
    )
    return Pipeline(pipeline.detector, pipeline.segmenter, config)


def stage2_profile(profile: Profile | None, settings: EvalSettings) -> Profile | None:
    """The profile with the fixed caption of ``settings`` when there is one."""
    if profile is None or settings.caption is None or settings.mode != "iapas":
        return profile
    return replace(profile, caption=settings.caption.strip())


def effective_size_threshold(settings: EvalSettings, profile: Profile | None) -> float | None:
    """The size threshold stage 2 applies (None: no size filter)."""
    if settings.mode == "base" or not settings.size_filter:
        return None
    if settings.size_threshold is not None:
        return settings.size_threshold
    return profile.size_threshold if profile is not None else 0.8


def model_names(pipeline: Pipeline) -> dict[str, Any]:
    """The models and detector settings of ``pipeline`` (part of the run signature)."""
    cfg = pipeline.config
    return {
        "detector": getattr(pipeline.detector, "name", type(pipeline.detector).__name__),
        "segmenter": getattr(pipeline.segmenter, "name", type(pipeline.segmenter).__name__),
        "box_threshold": cfg.box_threshold,
        "text_threshold": cfg.text_threshold,
        "nms_iou": cfg.nms_iou,
        "fuse_object_detection": bool(getattr(cfg, "fuse_object_detection", False)),
        **precision_signature(pipeline),
    }


def category_signature(pipeline: Pipeline, profile: Profile | None, settings: EvalSettings) -> dict[str, Any]:
    """What decides one category's predictions beyond the run-wide settings."""
    used = stage2_profile(profile, settings)
    iapas = settings.mode == "iapas"
    return {
        "caption": stage2_pipeline(pipeline, settings).caption_for(used),
        "object_tag": used.object_tag if iapas and used is not None else None,
        "object_size": used.object_size if iapas and used is not None else None,
        "size_threshold": effective_size_threshold(settings, used),
    }


# --- per-image files -----------------------------------------------------------------------------------


def predictions_path(out_dir: Path, category: str) -> Path:
    return Path(out_dir) / PREDICTIONS_DIR / f"{category}.jsonl"


def map_relpath(category: str, key: str) -> str:
    return f"{MAPS_DIR}/{category}/{key}.npz"


def save_map_file(path: Path, anomaly_map: np.ndarray, mask: np.ndarray) -> None:
    """Write ``map`` (float32) and ``mask`` (bool) into a compressed ``.npz``, atomically."""
    with atomic_path(path) as tmp:  # synced to disk before the rename
        with open(tmp, "wb") as fh:
            np.savez_compressed(fh, map=anomaly_map.astype(np.float32, copy=False), mask=mask.astype(bool, copy=False))


def load_map_file(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """``(map, mask)`` of a stored prediction."""
    with np.load(path) as data:
        return np.asarray(data["map"], dtype=np.float32), np.asarray(data["mask"], dtype=bool)


def _is_done(record: Mapping[str, Any] | None, out_dir: Path, sample: Sample) -> bool:
    """Whether ``record`` is a finished prediction of this very file (same path, size and mtime)."""
    if not record or record.get("status") != "ok":
        return False
    if record.get("image") != str(sample.path) or record.get("file") != file_stamp(sample.path):
        return False
    if "map_min" not in record or "map_max" not in record:  # made before the raw range was recorded
        return False
    return (out_dir / str(record.get("map", ""))).is_file()


def prediction_record(
    key: str, sample: Sample, image: LoadedImage, result: SegmentationResult, map_eval: np.ndarray, mask_eval: np.ndarray, map_file: str
) -> dict[str, Any]:
    """The JSON line of one evaluated image.

    ``map_min`` and ``map_max`` are the raw full-resolution map's range at full precision: the
    per-image normalisation and the image score (``map_max``; ``image_score`` is the same,
    rounded) come from them. ``score`` is the resized map's maximum (bicubic overshoot included),
    kept for information: it feeds no metric.
    """
    raw = result.anomaly_map
    return {
        "key": key,
        "image": str(sample.path),
        "file": file_stamp(sample.path),
        "mask": str(sample.mask_path) if sample.mask_path is not None else None,
        "label": int(sample.label),
        "defect_type": sample.defect_type,
        "status": "ok",
        "width": image.width,
        "height": image.height,
        **result.to_record(),
        "map_min": float(raw.min()) if raw.size else 0.0,
        "map_max": float(raw.max()) if raw.size else 0.0,
        "score": float(map_eval.max()),  # max of the resized map, before normalisation: not a metric input
        "anomalous_pixels": int(mask_eval.sum()),
        "map": map_file,
    }


def failure_record(key: str, sample: Sample, error: str) -> dict[str, Any]:
    return {
        "key": key,
        "image": str(sample.path),
        "mask": str(sample.mask_path) if sample.mask_path is not None else None,
        "label": int(sample.label),
        "defect_type": sample.defect_type,
        "status": "failed",
        "error": error,
    }


def sample_keys(category: Category) -> dict[Path, str]:
    """A stable output name per test image of the category (before any --limit): relative to the
    folder that holds all of them (``good/004``, ``crack/000``), so every key names its defect type."""
    paths = [s.path for s in category.test]
    if not paths:
        return {}
    common = os.path.commonpath([os.path.dirname(os.path.abspath(p)) for p in paths])
    return dict(zip(paths, assign_keys(paths, [Path(common)] * len(paths))))


# --- metrics from stored predictions -------------------------------------------------------------------


def raw_range(record: Mapping[str, Any]) -> tuple[float, float]:
    """The raw full-resolution map's ``(min, max)`` stored in a prediction record."""
    try:
        return float(record["map_min"]), float(record["map_max"])
    except (KeyError, TypeError, ValueError):
        raise ValueError(
            f"prediction {record.get('key')!r} has no raw map range (made by an older iapas): run the evaluation "
            "again to segment it anew"
        ) from None


def evaluated_map(anomaly_map: np.ndarray, record: Mapping[str, Any], image_norm: bool) -> np.ndarray:
    """A stored 400x400 map as the metrics see it before the stack normalisation: per-image
    normalised with the record's raw range when ``image_norm``, else as stored."""
    if not image_norm:
        return anomaly_map
    lo, hi = raw_range(record)
    return normalize_image(anomaly_map, lo, hi)


def has_pixel_truth(record: Mapping[str, Any]) -> bool:
    """Whether a prediction's mask is ground truth for its pixels: False for a defective image
    without a mask file (its pixels are unknown, not normal). A record without the ``mask``
    field (made by hand) counts as having one."""
    return not (int(record.get("label", 0)) == 1 and "mask" in record and record["mask"] is None)


def metrics_from_predictions(
    out_dir: Path,
    records: Sequence[Mapping[str, Any]],
    *,
    image_norm: bool = True,
    image_score: str = "paper",
    pr_points: int = PR_POINTS,
) -> tuple[CategoryMetrics, tuple[float, float], dict[str, list[float]]]:
    """The paper's metrics of one category from its stored 400x400 maps and masks.

    ``records`` are the ``ok`` prediction lines in test order. With ``image_norm`` (the paper's
    protocol) each map is first min-max normalised with its raw full-resolution range
    (:func:`evaluated_map`); the maps are then stacked, min-max normalised over the stack
    (:func:`~iapas.evaluation.protocol.normalize_stack`) and passed to
    :func:`iapas.metrics.category_metrics` with the images' labels (a defective image whose mask
    is empty, as 4 of MTD's, still counts as anomalous at image level). Defective images without
    a mask file (:func:`has_pixel_truth`) are left out of the pixel metrics and kept in the image
    metrics. Image scores: ``image_score`` 'paper' takes each image's maximum of the normalised
    stack (the reference code's ``np_scores.reshape(N, -1).max(axis=1)``), 'raw' the raw
    full-resolution map's maximum (``map_max``). Returns the metrics, the ``(min, max)`` of the
    stack the stack normalisation used, and the PR curve on the normalised maps (over the
    images with pixel ground truth).
    """
    if not records:
        raise ValueError("no evaluated image")
    if image_score not in IMAGE_SCORES:
        raise ValueError(f"image_score must be one of {', '.join(IMAGE_SCORES)}, got {image_score!r}")
    first_map, first_mask = load_map_file(Path(out_dir) / records[0]["map"])
    shape = first_map.shape
    maps = np.empty((len(records), *shape), dtype=np.float32)
    masks = np.empty((len(records), *shape), dtype=bool)
    for i, rec in enumerate(records):
        m, g = (first_map, first_mask) if i == 0 else load_map_file(Path(out_dir) / rec["map"])
        if m.shape != shape or g.shape != shape:
            raise ValueError(f"{rec['map']}: map {m.shape} / mask {g.shape} differ from the first map's {shape}")
        maps[i] = evaluated_map(m, rec, image_norm)
        masks[i] = g
    labels = np.array([int(rec["label"]) for rec in records], dtype=bool)
    truth = np.array([has_pixel_truth(rec) for rec in records], dtype=bool)
    maps, lo, hi = normalize_stack(maps, in_place=True)
    if image_score == "raw":
        image_scores: np.ndarray | None = np.array([raw_range(rec)[1] for rec in records], dtype=np.float64)
    else:
        image_scores = None  # the maxima of the normalised stack
    metrics = category_metrics(
        maps, masks, image_scores=image_scores, image_labels=labels, pixel_images=None if truth.all() else truth
    )
    if not truth.all():
        maps, masks = maps[truth], masks[truth]
    if not truth.any():  # no pixel ground truth at all: an empty curve
        maps, masks = np.zeros((1, 1, 1), dtype=np.float32), np.zeros((1, 1, 1), dtype=bool)
    thresholds, precision, recall = pr_curve(maps, masks, pr_points)
    curve = {
        "thresholds": [round(float(t), 6) for t in thresholds],
        "precision": [float(p) for p in precision],
        "recall": [float(r) for r in recall],
    }
    return metrics, (lo, hi), curve


# --- one category ---------------------------------------------------------------------------------------


def evaluate_category(
    pipeline: Pipeline,
    category: Category,
    profile: Profile | None,
    out_dir: str | Path,
    settings: EvalSettings | None = None,
    *,
    on_image: Callable[[str, str], None] | None = None,
    metrics: bool = True,
) -> CategoryResult:
    """Segment every test image of ``category`` (resuming) and compute its metrics (not with
    ``metrics=False``, e.g. for calibration images).

    ``pipeline`` supplies the models (its mode and size threshold are replaced by ``settings``');
    ``profile`` is the category's stage-1 profile (None in mode 'base'). Unreadable images and
    masks that do not fit their image are recorded as failed and left out of the metrics.
    ``on_image(key, status)`` is called per image with 'ok', 'failed' or 'skipped' (resumed).
    A KeyboardInterrupt propagates: finished images are on disk, run again to resume. So does a
    full disk, as :class:`~iapas.storage.DiskFullError`, once no new image is started, the
    finished ones are saved and the failed one's partial map is removed.
    """
    settings = settings or EvalSettings()
    out = Path(out_dir)
    stage2 = stage2_pipeline(pipeline, settings)
    used = stage2_profile(profile, settings)
    if settings.mode == "iapas" and used is None:
        raise ValueError(f"category {category.name}: mode 'iapas' needs a profile (object tag and caption)")
    check = getattr(stage2, "check", None)
    if check is not None:  # e.g. a caption longer than the detector's text window: fail once, here
        check(used)
    started = time.perf_counter()
    keys = sample_keys(category)
    samples = limit_samples(category.test, settings.limit, settings.seed)
    result = CategoryResult(
        name=category.name,
        n_test=len(samples),
        notes=list(category.notes),
        profile=ProfileRecord.of(profile, None, "given" if profile is not None else "none"),
        n_references=len(category.references),
        predictions=predictions_path(Path("."), category.name).as_posix(),
    )
    if not samples:
        result.error = "no test images"
        return result

    log = ResultsLog(predictions_path(out, category.name))
    log.path.parent.mkdir(parents=True, exist_ok=True)
    previous = log.read()
    todo = [s for s in samples if not _is_done(previous.get(keys[s.path]), out, s)]
    if len(todo) < len(samples):
        logger.info("%s: resuming: %d of %d image(s) already done", category.name, len(samples) - len(todo), len(samples))
    if on_image:
        pending = {s.path for s in todo}
        for s in samples:
            if s.path not in pending:
                on_image(keys[s.path], "skipped")
    by_path = {s.path: s for s in todo}

    def stop(sample: Sample, exc: OSError, partial: Path | None = None) -> DiskFullError:
        """A full disk: remove the partial map; the error to raise (no new image is started)."""
        if partial is not None:
            partial.unlink(missing_ok=True)
        logger.error("%s: cannot write: %s; stopping (finished images are saved)", sample.path, exc)
        return DiskFullError(exc.errno, stop_reason(exc))

    def fail(sample: Sample, message: str) -> None:
        logger.error("%s", message)
        try:
            log.append(failure_record(keys[sample.path], sample, message))
        except OSError as exc:
            if is_disk_full(exc):
                raise stop(sample, exc) from exc
            raise
        if on_image:
            on_image(keys[sample.path], "failed")

    batch: list[tuple[Sample, LoadedImage, np.ndarray]] = []
    size_map, size_mask = settings.resizers()

    def flush() -> None:
        if not batch:
            return
        items = list(batch)
        batch.clear()
        try:
            outputs = stage2.run([im.rgb for _, im, _ in items], used)
        except (RuntimeError, ValueError) as exc:  # e.g. out of memory: fail these, go on
            for sample, _, _ in items:
                fail(sample, f"{show_path(sample.path)}: model failure: {exc}")
            return
        for (sample, image, mask), seg in zip(items, outputs):
            key = keys[sample.path]
            map_eval = size_map(seg.anomaly_map, settings.eval_size)
            mask_eval = size_mask(mask, settings.eval_size)
            rel = map_relpath(category.name, key)
            try:
                save_map_file(out / rel, map_eval, mask_eval)
                log.append(prediction_record(key, sample, image, seg, map_eval, mask_eval, rel))
            except OSError as exc:
                if is_disk_full(exc):  # no record: the map would be an orphan
                    raise stop(sample, exc, out / rel) from exc
                raise
            result.n_new += 1
            if on_image:
                on_image(key, "ok")

    for path, loaded in prefetch_images([s.path for s in todo], settings.max_pixels, ahead=max(2, 2 * settings.batch_size)):
        sample = by_path[path]
        if isinstance(loaded, ImageReadError):
            fail(sample, str(loaded))
            continue
        try:
            mask = sample_mask(sample, expected_size=(loaded.height, loaded.width))
        except MaskError as exc:
            fail(sample, str(exc))
            continue
        batch.append((sample, loaded, mask))
        if len(batch) >= settings.batch_size:
            flush()
    flush()

    order = [keys[s.path] for s in samples]
    result.keys = order
    log.compact(order=order)
    records = log.read()
    ok = [records[k] for k in order if k in records and records[k].get("status") == "ok"]
    result.failures = [
        ImageFailure(k, str(records[k].get("image")), str(records[k].get("error")))
        for k in order
        if k in records and records[k].get("status") != "ok"
    ]
    missing = [k for k in order if k not in records]
    if missing:  # cannot happen unless the log was edited while running
        raise RuntimeError(f"{log.path}: no result for {len(missing)} image(s), e.g. {missing[0]}")
    result.n_done = len(ok)
    result.seconds = time.perf_counter() - started
    started = time.perf_counter()
    if ok and metrics:
        scores, score_range, curve = metrics_from_predictions(
            out, ok, image_norm=settings.image_norm, image_score=settings.image_score_method
        )
        result.metrics, result.score_range, result.pr = scores, score_range, curve
    elif not ok:
        result.error = "no test image could be evaluated"
    result.metrics_seconds = time.perf_counter() - started
    return result


# --- a dataset ---------------------------------------------------------------------------------------------


def _calibrate(
    pipeline: Pipeline, calibration: Category, profile: Profile | None, out: Path, settings: EvalSettings, hooks: ProgressHooks
) -> tuple[list[float], list[ImageFailure]]:
    """Segment the calibration images (resuming; all of them, whatever ``--limit``): their raw
    image scores and failures (keys prefixed with the calibration category's name)."""
    if hooks.on_category:
        hooks.on_category(calibration.name, len(calibration.test))
    on_image = (lambda key, status: hooks.on_image(calibration.name, key, status)) if hooks.on_image else None
    done = evaluate_category(pipeline, calibration, profile, out, replace(settings, limit=None), on_image=on_image, metrics=False)
    scores = raw_scores(ResultsLog(predictions_path(out, calibration.name)).read(), done.keys)
    failures = [replace(f, key=f"{calibration.name}/{f.key}") for f in done.failures]
    return scores, failures


def restrict_to_pool(loader: DatasetBase, category: Category, settings: EvalSettings) -> Category:
    """``category`` with only the test images that drawing ``settings.test_pool_references``
    references (same seed) leaves; unchanged when that is unset or equals ``n_references``.

    The draws are prefixes of one seeded order (:func:`~iapas.data.base.draw_references`), so the
    larger draw's test set is inside the smaller one's: the images left out are exactly the
    extra references, and every reference count scores the same images.
    """
    k = settings.test_pool_references
    if k is None or k == settings.n_references:
        return category
    pool = loader.load(category.name, protocol=settings.protocol, n_references=k, seed=settings.seed)
    keep = {s.path for s in pool.test}
    test = [s for s in category.test if s.path in keep]
    dropped = len(category.test) - len(test)
    if not dropped:
        return category
    note = (
        f"{dropped} test image(s) left out: the test set is the one left after drawing {k} references (seed "
        f"{settings.seed}), so that every reference count is scored on the same images."
    )
    return replace(category, test=test, notes=[*category.notes, note])



def _read_run(path: Path) -> dict[str, Any] | None:
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise RunConflictError(f"{path}: unreadable ({exc}); use another --out folder, or --restart to discard it") from None
    return data if isinstance(data, dict) else None


def _differences(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    keys = sorted(set(old) | set(new))
    return [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in keys if old.get(k) != new.get(k)]


def _has_predictions(out_dir: Path, category: str | None = None) -> bool:
    folder = out_dir / PREDICTIONS_DIR
    if category is not None:
        p = predictions_path(out_dir, category)
        return p.exists() and p.stat().st_size > 0
    return folder.is_dir() and any(p.stat().st_size > 0 for p in folder.glob("*.jsonl"))


def discard_results(out_dir: Path) -> None:
    """Delete the predictions, maps and tables of an evaluation folder (profiles are kept)."""
    for name in (PREDICTIONS_DIR, MAPS_DIR):
        folder = out_dir / name
        if folder.is_dir():
            shutil.rmtree(folder)
    for name in (RUN_FILE, "metrics.csv", "metrics.json", "metrics.md", "curves.json", "report.html"):
        (out_dir / name).unlink(missing_ok=True)


def run_signature(dataset: str, settings: EvalSettings, models: Mapping[str, Any]) -> dict[str, Any]:
    """The run-wide settings that decide the predictions: dataset, :meth:`EvalSettings.signature`
    and the models (see :func:`model_names`)."""
    return {"dataset": dataset, **settings.signature(), **models}


def check_existing_run(out_dir: str | Path, signature: Mapping[str, Any]) -> None:
    """Raise :class:`RunConflictError` when ``out_dir`` holds predictions made with another signature.

    Cheap (reads ``run.json``): a command line can call it before loading any model.
    """
    out = Path(out_dir)
    previous = _read_run(out / RUN_FILE) or {}
    if previous and _has_predictions(out):
        changed = _differences(previous.get("signature", {}), dict(signature))
        if changed:
            raise RunConflictError(
                f"{out} holds results made with other settings ({'; '.join(changed)}); use another --out folder, "
                "or --restart to discard them"
            )


def evaluate_dataset(
    dataset: str | DatasetBase,
    root: str | Path | None,
    out_dir: str | Path,
    pipeline: Pipeline,
    settings: EvalSettings | None = None,
    *,
    stage1: Stage1Options | None = None,
    stage1_models: Stage1Models | None = None,
    categories: Sequence[str] | None = None,
    profiles_dir: str | Path | None = None,
    restart: bool = False,
    report: bool = True,
    progress: ProgressHooks | None = None,
    extra_notes: Sequence[str] = (),
) -> DatasetResult:
    """Evaluate ``pipeline`` on the categories of a dataset; write tables (and the HTML report).

    ``dataset`` is a registry name (with ``root``) or a loader. Profiles come from
    ``profiles_dir`` (default ``OUT/profiles``) or are made by stage 1 with ``stage1`` (see
    :func:`~iapas.evaluation.profiles.get_profile`). Every profile is resolved and every
    signature checked before the first image is segmented, so a conflicting folder is refused
    at once. A category that cannot be evaluated (no references for stage 1, no test image) is
    recorded with its error and the others go on. A full disk (:mod:`iapas.storage`) stops the
    run: the category being segmented and those after it are recorded as not evaluated, the
    tables are written when there is room for them, and ``stopped`` says why.
    """
    from iapas.evaluation.tables import write_tables
    from iapas.prompts.stage1 import Stage1Error
    from iapas.profile import ProfileError

    settings = settings or EvalSettings()
    hooks = progress or ProgressHooks()
    loader = get_dataset(dataset, root) if isinstance(dataset, str) else dataset
    available = loader.categories()
    wanted = list(categories) if categories else list(available)
    unknown = [c for c in wanted if c not in available]
    if unknown:
        from iapas.data import DatasetError

        raise DatasetError(f"{loader.root}: no {loader.title} categor{'y' if len(unknown) == 1 else 'ies'} {', '.join(unknown)}; found: {', '.join(available)}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    removed = clean_stale_temp_files(out)  # what a killed run was writing
    if removed:
        logger.info("removed %d half-written temporary file(s) of an interrupted run in %s", removed, out)
    profiles = Path(profiles_dir) if profiles_dir is not None else out / PROFILES_DIR
    if restart:
        discard_results(out)

    models = model_names(pipeline)
    signature = run_signature(loader.name, settings, models)
    run_file = out / RUN_FILE
    check_existing_run(out, signature)
    previous = _read_run(run_file) or {}
    category_sigs: dict[str, Any] = dict(previous.get("categories", {})) if previous else {}
    created = previous.get("created") if previous else None
    created = created or datetime.now(timezone.utc).isoformat(timespec="seconds")

    def write_run() -> None:
        atomic_write_text(
            run_file,
            json.dumps(
                _json_safe(
                    {
                        "iapas_version": __version__,
                        "created": created,
                        "dataset": loader.name,
                        "root": str(loader.root),
                        "signature": signature,
                        "settings": settings.to_dict(),
                        "stage1": asdict(stage1) if stage1 is not None else None,
                        "profiles_dir": str(profiles),
                        "categories": category_sigs,
                    }
                ),
                indent=2,
                default=str,
            )
            + "\n",
        )

    if stage1 is not None and stage1_models is None:
        stage1_models = Stage1Models(stage1, pipeline.detector)

    # pass 1: categories, profiles, signatures
    prepared: list[tuple[Category, Profile | None, ProfileRecord, Category | None] | CategoryResult] = []
    product_notes: list[str] = []  # notes of categories scored per part: said once
    for name in wanted:
        category = loader.load(name, protocol=settings.protocol, n_references=settings.n_references, seed=settings.seed)
        category = restrict_to_pool(loader, category, settings)
        category, calibration = calibration_category(loader, category, settings.calibration_images, settings.seed)
        path = profile_path(profiles, name)
        existed = path.exists()
        on_stage1 = (lambda step, done, total, _n=name: hooks.on_stage1(_n, step, done, total)) if hooks.on_stage1 else None
        try:
            profile = get_profile(category, profiles, stage1, mode=settings.mode, models=stage1_models, progress=on_stage1)
        except (Stage1Error, ProfileError, ImageReadError, FileNotFoundError, ModelOutputError) as exc:
            logger.error("%s: %s", name, exc)
            prepared.append(CategoryResult(name=name, error=f"profile: {exc}", notes=list(category.notes), n_references=len(category.references)))
            continue
        record = ProfileRecord.of(profile, path if profile is not None else None, "none" if profile is None else ("file" if existed else "stage1"))
        check = getattr(stage2_pipeline(pipeline, settings), "check", None)
        try:
            if check is not None:
                check(stage2_profile(profile, settings))
        except ValueError as exc:
            logger.error("%s: %s", name, exc)
            prepared.append(CategoryResult(name=name, error=str(exc), profile=record, notes=list(category.notes), n_references=len(category.references)))
            continue
        sig = category_signature(pipeline, profile, settings)
        if category.split_parts:  # e.g. KSDD1's folders under the paper protocol: one profile, scored per part
            product_notes.extend(f"{name}: {note}" for note in category.notes)
        for part in [*category.parts(), *([calibration] if calibration is not None else [])]:
            old = category_sigs.get(part.name)
            if old is not None and old != sig and _has_predictions(out, part.name):
                changed = _differences(old, sig)
                raise RunConflictError(
                    f"{out}: category {part.name} has results made with another profile or setting ({'; '.join(changed)}); "
                    "use another --out folder, or --restart to discard them"
                )
            category_sigs[part.name] = sig
            if part is not calibration:
                prepared.append((part, profile, record, calibration))
    stopped: str | None = None
    try:
        write_run()
    except OSError as exc:
        if not is_disk_full(exc):
            raise
        logger.error("%s: cannot write: %s", run_file, exc)
        stopped = stop_reason(exc)

    # pass 2: stage 2 and metrics
    results: list[CategoryResult] = []
    calibrated: dict[str, list[float]] = {}  # calibration category -> its raw image scores
    for item in prepared:
        if isinstance(item, CategoryResult):
            results.append(item)
            continue
        category, profile, record, calibration = item
        n = len(limit_samples(category.test, settings.limit, settings.seed))
        if stopped is not None:
            results.append(CategoryResult(name=category.name, n_test=n, error="not evaluated: the run stopped early",
                                          profile=record, notes=list(category.notes), n_references=len(category.references)))
            continue
        if hooks.on_category:
            hooks.on_category(category.name, n)
        on_image = (lambda key, status, _n=category.name: hooks.on_image(_n, key, status)) if hooks.on_image else None
        calibration_failures: list[ImageFailure] = []
        try:
            if calibration is not None and calibration.name not in calibrated:  # once per product
                calibrated[calibration.name], calibration_failures = _calibrate(pipeline, calibration, profile, out, settings, hooks)
            result = evaluate_category(pipeline, category, profile, out, settings, on_image=on_image)
            if calibration is not None and result.keys:
                records = ResultsLog(predictions_path(out, category.name)).read()
                result.decision = threshold_evidence(
                    calibrated[calibration.name], raw_scores(records, result.keys, 0), raw_scores(records, result.keys, 1),
                    settings.false_alarm_rate,
                )
            result.failures += calibration_failures
        except DiskFullError as exc:
            stopped = exc.strerror or str(exc)
            result = CategoryResult(name=category.name, n_test=n, error="not evaluated: the run stopped early",
                                    notes=list(category.notes), n_references=len(category.references))
        result.profile = record
        results.append(result)

    notes = list(extra_notes) + product_notes
    if settings.limit is not None:
        notes.append(
            f"Quick check: at most {settings.limit} test images per category (drawn with seed {settings.seed}, "
            "anomalous and normal alternately while both last); "
            "these are not full-benchmark numbers."
        )
    if stopped is not None:
        notes.append(f"The run stopped early ({stopped}); run the same command again, with room on the disk, to finish it.")
    ds_result = DatasetResult(
        dataset=loader.name,
        title=loader.title,
        root=str(loader.root),
        out_dir=out,
        settings=settings,
        categories=results,
        models={**models, "stage1": (stage1.settings(models["detector"]) if stage1 is not None else None)},
        notes=notes,
        created=created,
        stopped=stopped,
    )
    try:
        write_tables(ds_result, out)
        if report:
            from iapas.report import write_report

            write_report(ds_result, out)
    except OSError as exc:
        if not is_disk_full(exc):
            raise
        logger.error("%s: cannot write the tables: %s", out, exc)
        ds_result.stopped = ds_result.stopped or stop_reason(exc)
    return ds_result
