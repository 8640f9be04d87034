"""OK/NG evidence in an evaluation: a conformal threshold per category, and what it gives.

Each category's threshold is calibrated (:func:`iapas.product.decision.conformal_threshold`) on the raw
image scores (the raw full-resolution map's maximum, ``map_max``; no minimum defect area) of
normal images held out from both the references and the test set
(:meth:`iapas.data.base.DatasetBase.held_out_normals`). At that threshold the normal test images
give the observed false-alarm rate (next to the target) and the defective ones the detection
rate; an image is NG when its score is strictly above the threshold.

The calibration images are segmented like test images, as a category of their own named
``CATEGORY.calibration`` (``predictions/CATEGORY.calibration.jsonl``), so they are resumed too.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np

from iapas.data import Category, DatasetBase, Sample
from iapas.product.decision import DecisionError, conformal_threshold, ng_count

CALIBRATION_SUFFIX = ".calibration"


@dataclass
class ThresholdEvidence:
    """One category's calibrated threshold and its confusion counts on the test images.

    ``threshold`` is None when it could not be calibrated; ``reason`` then says why (e.g. too
    few calibration images for the target rate) and the rates and counts are None.
    """

    target_rate: float
    n_calibration: int  # calibration images segmented (their scores are the calibration set)
    threshold: float | None = None
    reason: str = ""
    false_alarm_rate: float | None = None  # normal test images NG (None without any)
    detection_rate: float | None = None  # defective test images NG (None without any)
    tp: int | None = None  # defective and NG
    fp: int | None = None  # normal and NG
    tn: int | None = None  # normal and OK
    fn: int | None = None  # defective and OK
    calibration_set: str = ""  # the calibration category (shared by a product's parts: counted once in totals)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def threshold_evidence(
    calibration_scores: Sequence[float], normal_scores: Sequence[float], anomalous_scores: Sequence[float], rate: float
) -> ThresholdEvidence:
    """The conformal threshold of ``calibration_scores`` for ``rate`` and, at it, the false-alarm
    rate of ``normal_scores``, the detection rate of ``anomalous_scores`` and the counts."""
    evidence = ThresholdEvidence(target_rate=rate, n_calibration=len(calibration_scores))
    try:
        threshold = conformal_threshold(calibration_scores, rate)
    except DecisionError as exc:
        evidence.reason = str(exc)
        return evidence
    normal = np.asarray(normal_scores, dtype=np.float64)
    anomalous = np.asarray(anomalous_scores, dtype=np.float64)
    fp, tp = ng_count(normal, threshold), ng_count(anomalous, threshold)
    return replace(
        evidence,
        threshold=threshold,
        false_alarm_rate=fp / len(normal) if len(normal) else None,
        detection_rate=tp / len(anomalous) if len(anomalous) else None,
        tp=tp,
        fp=fp,
        tn=len(normal) - fp,
        fn=len(anomalous) - tp,
    )


def calibration_category(
    loader: DatasetBase, category: Category, n: int, seed: int, *, from_test: bool = True
) -> tuple[Category, Category | None]:
    """``category`` without its calibration images (and with a note on them), and the category of
    ``n`` held-out normal images to segment (None when ``n`` is 0, or when there are none to
    take: no normal training images beyond the references and not ``from_test``)."""
    if n <= 0:
        return category, None
    drawn, category, note = loader.held_out_normals(category, n, seed, from_test=from_test)
    if not drawn:
        return replace(category, notes=[*category.notes, note]), None
    calibration = Category(
        name=category.name + CALIBRATION_SUFFIX,
        references=list(category.references),
        test=[Sample(path, 0, None, "good", category.name) for path in drawn],
        dataset=category.dataset,
        protocol=category.protocol,
    )
    return replace(category, notes=[*category.notes, note]), calibration


def raw_scores(records: Mapping[str, Mapping[str, Any]], keys: Sequence[str], label: int | None = None) -> list[float]:
    """The raw image scores (``map_max``) of the finished records of ``keys`` (of one label)."""
    out = []
    for key in keys:
        rec = records.get(key)
        if rec and rec.get("status") == "ok" and (label is None or int(rec.get("label", 0)) == label):
            out.append(float(rec["map_max"]))
    return out


__all__ = ["CALIBRATION_SUFFIX", "ThresholdEvidence", "calibration_category", "raw_scores", "threshold_evidence"]
