"""What an evaluation gives: per-category and per-dataset results (metrics, failures, notes),
the data the tables and the report read."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from iapas.core.version import __version__
from iapas.evaluation.decisions import ThresholdEvidence
from iapas.evaluation.profiles import ProfileRecord
from iapas.evaluation.settings import EvalSettings
from iapas.metrics import CategoryMetrics

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
        return json_safe(data)


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
    stopped: str | None = None  # why the run stopped early (the disk is full), see iapas.core.storage

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
        return json_safe(
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


def json_safe(value: Any) -> Any:
    """nan/inf -> None, so the JSON files are standard JSON."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


