"""Calibrating a profile's OK/NG threshold from stage 2 runs on normal (and defective) images.

:func:`check_reference_overlap` refuses calibration images that were stage 1 references (by
content); :func:`stored_scores` reads the image scores under a minimum defect area from a run's
stored maps (so changing the area needs no model run); :func:`calibrate` turns scores into a
:class:`~iapas.product.decision.Decision` and a side-by-side report of the rules.
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from iapas.product.decision import (
    Decision,
    DecisionError,
    conformal_threshold,
    f1_threshold,
    false_alarm_rate,
    images_needed,
    min_area_score,
    ng_count,
    today,
)
from iapas.product.profile import Profile

logger = logging.getLogger(__name__)


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@dataclass
class OverlapCheck:
    """The result of comparing calibration images with a profile's stage 1 references."""

    overlaps: list[tuple[Path, str]] = field(default_factory=list)  # (calibration file, reference it equals)
    compared: int = 0  # references whose content was compared
    missing: list[str] = field(default_factory=list)  # recorded references that are not on disk
    same_name: list[tuple[Path, str]] = field(default_factory=list)  # name matches of missing references

    def describe(self) -> str:
        text = f"compared by content (sha256) with {self.compared} stage-1 reference file(s) recorded in the profile"
        if self.missing:
            text += (
                f"; {len(self.missing)} recorded reference(s) are no longer at their paths and were compared by "
                f"file name only (e.g. {self.missing[0]})"
            )
        return text


def check_reference_overlap(profile: Profile, profile_path: Path | None, paths: Sequence[Path]) -> OverlapCheck:
    """Which of ``paths`` are stage 1 reference images of ``profile``.

    The profile records the references' paths (``stage1.references``, as given to ``iapas
    profile``) and names (``stage1.reference_names``), not their contents: each recorded path
    that still exists (as written, or relative to the profile's folder) is hashed and compared
    with the calibration files' contents; for one that does not, only its file name can be
    compared (:attr:`OverlapCheck.same_name`, a warning, not a proof).
    """
    check = OverlapCheck()
    recorded = [str(r) for r in (profile.stage1 or {}).get("references", []) or []]
    by_hash: dict[str, str] = {}
    missing_names: dict[str, str] = {}
    for ref in recorded:
        candidates = [Path(ref)]
        if profile_path is not None and not Path(ref).is_absolute():
            candidates.append(profile_path.parent / ref)
        found = next((c for c in candidates if c.is_file()), None)
        if found is None:
            check.missing.append(ref)
            missing_names[Path(ref).name] = ref
            continue
        try:
            by_hash.setdefault(file_sha256(found), ref)
            check.compared += 1
        except OSError:
            check.missing.append(ref)
            missing_names[Path(ref).name] = ref
    if not recorded:
        return check
    for path in paths:
        try:
            digest = file_sha256(path)
        except OSError:
            continue  # unreadable: the run records it as failed
        if digest in by_hash:
            check.overlaps.append((path, by_hash[digest]))
        elif path.name in missing_names:
            check.same_name.append((path, missing_names[path.name]))
    return check


def stored_scores(out_dir: Path, records: dict[str, dict[str, Any]], keys: Sequence[str], min_area: int) -> dict[str, float]:
    """The image score under ``min_area`` of each key with a finished record: the record's exact
    ``max_score`` for ``min_area`` 0 or 1, else from its stored map (``maps/KEY.png``, the same
    1e-4 steps that :meth:`Decision.decide` scores)."""
    from iapas.core.images import open_own_png

    scores: dict[str, float] = {}
    for key in keys:
        rec = records.get(key)
        if not rec or rec.get("status") != "ok":
            continue
        if min_area <= 1 and "max_score" in rec:
            scores[key] = float(rec["max_score"])
            continue
        map_file = out_dir / rec["outputs"]["map"]
        with open_own_png(map_file) as im:
            encoded = np.asarray(im, dtype=np.uint16)
        scores[key] = min_area_score(encoded, min_area)
    return scores


def check_finite(scores: Mapping[str, float]) -> None:
    """Refuse (:class:`DecisionError`, naming the image) a score that is NaN or infinite: a
    threshold computed from it would make every part OK or every part NG."""
    for name, score in scores.items():
        if not math.isfinite(score):
            raise DecisionError(
                f"{name}: its image score is {score} (not a finite number: the models gave NaN or infinity on it); "
                "no threshold is written from it: check the image and the models (e.g. --dtype float32), or leave it out"
            )


@dataclass
class RuleResult:
    """One rule's threshold and what it gives on the calibration images."""

    rule: str
    threshold: float | None
    false_alarm_rate: float | None = None  # normal images NG
    detection_rate: float | None = None  # defective images NG
    f1: float | None = None
    note: str = ""


def _rates(threshold: float, normal: np.ndarray, anomalous: np.ndarray) -> tuple[float, float | None]:
    detection = ng_count(anomalous, threshold) / len(anomalous) if len(anomalous) else None
    return false_alarm_rate(normal, threshold), detection


def calibrate(
    normal_scores: Sequence[float],
    anomalous_scores: Sequence[float] = (),
    *,
    rate: float = 0.01,
    min_area: int = 0,
    rule: str = "conformal",
    signature: dict[str, Any] | None = None,
) -> tuple[Decision, list[RuleResult]]:
    """The decision under ``rule`` and every rule that can be computed, side by side.

    Raises :class:`DecisionError` when the chosen rule cannot be computed (too few normal images
    for ``rate``, or ``f1`` without defective images).
    """
    normal = np.asarray(normal_scores, dtype=np.float64)
    anomalous = np.asarray(anomalous_scores, dtype=np.float64)
    if rule not in ("conformal", "f1"):
        raise DecisionError(f"unknown rule {rule!r}: use conformal or f1")
    if not len(normal):
        raise DecisionError("no normal image was segmented: nothing to calibrate on")
    results: list[RuleResult] = []
    thresholds: dict[str, float] = {}
    try:
        thresholds["conformal"] = conformal_threshold(normal, rate)
        fa, det = _rates(thresholds["conformal"], normal, anomalous)
        results.append(RuleResult("conformal", thresholds["conformal"], fa, det, note=f"target false-alarm rate {rate:g}"))
    except DecisionError as exc:
        if rule == "conformal":
            raise
        results.append(RuleResult("conformal", None, note=str(exc)))
    if len(anomalous):
        thresholds["f1"], f1 = f1_threshold(normal, anomalous)
        fa, det = _rates(thresholds["f1"], normal, anomalous)
        results.append(RuleResult("f1", thresholds["f1"], fa, det, f1=f1, note="best image F1 (anomalib)"))
    elif rule == "f1":
        raise DecisionError("--rule f1 needs labelled defective images (--anomalous)")
    threshold = thresholds[rule]
    if threshold < 0:  # f1 at its best flags every image, one scoring 0 included: no threshold >= 0 says that
        raise DecisionError(
            f"the {rule} rule's best threshold flags every image, those scoring 0 included; a threshold (>= 0) cannot: "
            "calibrate on more images, or use --rule conformal"
        )
    every = np.concatenate([normal, anomalous])
    fa, det = _rates(threshold, normal, anomalous)
    decision = Decision(
        threshold=threshold,
        min_defect_area=min_area,
        rule=rule,
        target_rate=rate if rule == "conformal" else None,
        n_calibration=len(normal),
        observed_false_alarm_rate=fa,
        score_min=float(every.min()),
        score_max=float(every.max()),
        n_anomalous=len(anomalous),
        detection_rate=det,
        signature=dict(signature or {}),
        date=today(),
    )
    return decision, results


__all__ = [
    "OverlapCheck",
    "RuleResult",
    "calibrate",
    "check_finite",
    "check_reference_overlap",
    "file_sha256",
    "images_needed",
    "stored_scores",
]
