"""OK/NG decisions: a threshold on an image score, calibrated on normal images.

The image score under a minimum defect area ``A`` is the highest level ``t`` at which some
8-connected region of ``{map > t}`` has at least ``A`` pixels (:func:`min_area_score`; the
map's maximum when ``A <= 1``). An image is NG when its score is strictly above the threshold,
which is the same statement as "the decision mask (the regions of ``{map > threshold}`` with at
least ``A`` pixels) is not empty" (:func:`decision_mask`).

With ``A <= 1`` the score is the float map's maximum, exactly (results.jsonl records it as
``max_score``). With ``A >= 2`` it is taken on the map as stored (:func:`iapas.core.maps.encode_map`:
steps of 1e-4, saturating at 6.5535), so a score computed from a ``maps/`` file and one computed
from the map in memory are the same number: calibration and decision apply the very same score
function, which is what the conformal guarantee needs.

Rules (:class:`Decision` ``rule``):

- ``conformal``: split-conformal quantile of ``n`` normal scores: the ``k``-th smallest with
  ``k = ceil((n + 1)(1 - rate))`` (:func:`conformal_threshold`). For a new normal image
  exchangeable with the calibration images, ``P(score > threshold) <= rate``, ties included.
- ``f1``: the threshold of best image-level F1 on labelled normal and defective images
  (:func:`f1_threshold`, anomalib's adaptive threshold).
- ``manual``: a threshold given by hand (``iapas segment --threshold``).

Stage 2 gives maps and boxes only; the verdict on a result is made here, in one place:
:func:`judge` (``profile.judge(result)``), which every caller (segment, the station, Python
users) uses. Without a decision there is no verdict and the mask is the map cut at
:data:`NO_DECISION_MASK_LEVEL` (:func:`mask_level`).
"""

from __future__ import annotations

import datetime as _dt
import math
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from typing import Any

import numpy as np

from iapas.core import fields as checks
from iapas.core.fields import FieldError
from iapas.core.maps import MAP_SCALE, binary_mask, encode_map
from iapas.core.types import SegmentationResult

RULES = ("conformal", "f1", "manual")
NO_DECISION_MASK_LEVEL = 0.3  # without a decision, masks/ is the map >= this ('iapas segment', the station, a review)
_EIGHT = np.ones((3, 3), dtype=bool)  # 8-connectivity


class DecisionError(ValueError):
    """A threshold cannot be calibrated (too few images, no scores) or a decision is malformed."""


def _fraction(rate: float) -> Fraction:
    if not 0 < rate < 1:
        raise DecisionError(f"the false-alarm rate must be in (0, 1), got {rate}")
    return Fraction(rate).limit_denominator(10**9)  # 0.01 -> 1/100 exactly


def conformal_rank(n: int, rate: float) -> int:
    """``k = ceil((n + 1)(1 - rate))``, computed exactly (0.01 is taken as 1/100)."""
    return math.ceil((n + 1) * (1 - _fraction(rate)))


def images_needed(rate: float) -> int:
    """The fewest calibration images for which the conformal threshold exists (``k <= n``):
    ``ceil((1 - rate) / rate)``, e.g. 99 for 1%, 19 for 5%, 9 for 10%."""
    r = _fraction(rate)
    return math.ceil((1 - r) / r)


def conformal_threshold(scores: Any, rate: float) -> float:
    """The ``k``-th smallest of ``scores``, ``k = ceil((n + 1)(1 - rate))``; NG when a score is
    strictly above it. Ties need no special care: with exchangeable scores,
    ``P(new > k-th smallest) <= (n + 1 - k) / (n + 1) <= rate`` whatever the ties.

    Raises :class:`DecisionError` with the number of images needed when ``k > n``.
    """
    values = np.sort(np.asarray(scores, dtype=np.float64).reshape(-1))
    if not np.isfinite(values).all():  # an infinite k-th score would make every part OK
        raise DecisionError("the calibration scores contain NaN or infinity: the models gave a non-finite map")
    n = len(values)
    k = conformal_rank(n, rate)
    if k > n:
        raise DecisionError(
            f"{n} normal image(s) are too few for a false-alarm rate of {rate:g}: "
            f"the conformal threshold needs at least {images_needed(rate)}"
        )
    return float(values[k - 1])


def false_alarm_rate(normal_scores: Any, threshold: float) -> float:
    """The fraction of ``normal_scores`` strictly above ``threshold``."""
    values = np.asarray(normal_scores, dtype=np.float64).reshape(-1)
    return ng_count(values, threshold) / len(values) if len(values) else 0.0


def f1_threshold(normal_scores: Any, anomalous_scores: Any) -> tuple[float, float]:
    """The threshold of best image F1 (anomalib's ``F1AdaptiveThreshold``): ``(threshold, f1)``.

    anomalib predicts NG for ``score >= t`` over the PR curve's thresholds (the distinct scores)
    and takes the first best F1 in ascending order. Here NG is ``score > threshold``, so the
    threshold returned is the next lower distinct score (the same predictions), or just below
    the lowest score when every image is NG at the best F1.
    """
    normal = np.asarray(normal_scores, dtype=np.float64).reshape(-1)
    anomalous = np.asarray(anomalous_scores, dtype=np.float64).reshape(-1)
    if not len(anomalous):
        raise DecisionError("the F1 threshold needs defective images")
    scores = np.concatenate([normal, anomalous])
    labels = np.concatenate([np.zeros(len(normal), bool), np.ones(len(anomalous), bool)])
    levels = np.unique(scores)  # ascending: candidate anomalib thresholds t (NG: score >= t)
    order = np.argsort(-scores, kind="stable")
    sorted_scores, sorted_labels = scores[order], labels[order]
    tp_cum, fp_cum = np.cumsum(sorted_labels), np.cumsum(~sorted_labels)
    # images with score >= t: the first count(score >= t) of the descending order
    count = len(scores) - np.searchsorted(np.sort(scores), levels, side="left")
    tp, fp = tp_cum[count - 1], fp_cum[count - 1]
    fn = len(anomalous) - tp
    f1 = 2 * tp / np.maximum(2 * tp + fp + fn, 1)
    best = int(np.argmax(f1))
    if best > 0:
        threshold = float(levels[best - 1])
    else:
        threshold = float(np.nextafter(levels[0], -np.inf))
    return threshold, float(f1[best])


def verdict_at(score: float, threshold: float) -> str:
    """'NG' when ``score`` is strictly above ``threshold``, else 'OK': the one rule of a verdict."""
    return "NG" if score > threshold else "OK"


def ng_count(scores: Any, threshold: float) -> int:
    """How many of ``scores`` are NG at ``threshold``: :func:`verdict_at` over an array."""
    return int((np.asarray(scores, dtype=np.float64).reshape(-1) > threshold).sum())


def normalized_score(score: float, threshold: float, score_min: float, score_max: float) -> float:
    """anomalib's min-max normalisation: ``(score - threshold) / (max - min) + 0.5``, clipped to
    [0, 1] (0.5 at the threshold). ``min``/``max`` are the calibration scores'; when they are
    equal (e.g. every normal image scored 0) the range is taken as 1, one box confidence."""
    return float(min(1.0, max(0.0, (score - threshold) / score_span(score_min, score_max) + 0.5)))


def score_span(score_min: float, score_max: float) -> float:
    """The range the normalised score divides by: ``max - min``, or 1 when that is 0."""
    span = score_max - score_min
    return float(span) if span > 0 else 1.0


# --- the image score under a minimum defect area ------------------------------------------------


def _largest_region(on: np.ndarray) -> int:
    from scipy import ndimage

    labels, count = ndimage.label(on, structure=_EIGHT)
    if count == 0:
        return 0
    return int(np.bincount(labels.reshape(-1))[1:].max())


def _min_area_units(units: np.ndarray, min_area: int) -> int:
    """:func:`min_area_score` on an integer map; returns the level in the map's units.

    The largest region of ``{map >= v}`` shrinks as ``v`` grows (a region of a subset lies in
    a region of the superset), so a binary search over the distinct levels finds the highest
    ``v`` with a region of ``min_area`` pixels: O(log(levels)) labellings, exact.
    """
    if units.size == 0:
        return 0
    if min_area <= 1:
        return int(units.max())
    if min_area > units.size:
        return 0
    levels = np.unique(units)
    lo, hi = 0, len(levels) - 1  # levels[lo] always qualifies: {map >= min} is the whole image
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if _largest_region(units >= levels[mid]) >= min_area:
            lo = mid
        else:
            hi = mid - 1
    return int(levels[lo])


def stored_units(anomaly_map: np.ndarray) -> np.ndarray:
    """The map as stored in ``maps/KEY.png``: integers of 1e-4 (see :func:`iapas.core.maps.encode_map`)."""
    arr = np.asarray(anomaly_map)
    return arr if arr.dtype == np.uint16 else encode_map(arr)


def _as_float(anomaly_map: np.ndarray) -> np.ndarray:
    arr = np.asarray(anomaly_map)
    return arr / np.float32(MAP_SCALE) if arr.dtype == np.uint16 else arr


def min_area_score(anomaly_map: np.ndarray, min_area: int = 0) -> float:
    """The highest level ``t`` at which some 8-connected region of ``{map > t}`` has at least
    ``min_area`` pixels. ``min_area`` 0 or 1: the map's maximum (exact); 2 or more: on the
    stored map (steps of 1e-4, saturating at 6.5535), 0.0 when the image has fewer than
    ``min_area`` pixels. A uint16 array is taken as an already encoded map."""
    if min_area <= 1:
        arr = _as_float(anomaly_map)
        return float(arr.max()) if arr.size else 0.0
    return _min_area_units(stored_units(anomaly_map), int(min_area)) / MAP_SCALE


def decision_mask(anomaly_map: np.ndarray, threshold: float, min_area: int = 0) -> np.ndarray:
    """``(H, W)`` bool: the 8-connected regions of ``{map > threshold}`` with at least
    ``min_area`` pixels (on the stored map for ``min_area >= 2``, as :func:`min_area_score`).
    Non-empty exactly when ``min_area_score(map, min_area) > threshold``."""
    if min_area <= 1:
        return np.asarray(_as_float(anomaly_map) > threshold)
    on = stored_units(anomaly_map) / MAP_SCALE > threshold
    if not on.any():
        return on
    from scipy import ndimage

    labels, count = ndimage.label(on, structure=_EIGHT)
    sizes = np.bincount(labels.reshape(-1))
    big = sizes >= min_area
    big[0] = False
    return big[labels]


# --- the decision section of a profile and the verdict of one image ----------------------------


@dataclass
class Decision:
    """How OK/NG is decided: the ``decision`` section of a profile (written by ``iapas calibrate``)."""

    threshold: float
    min_defect_area: int = 0
    rule: str = "conformal"
    target_rate: float | None = None  # the false-alarm rate asked for (conformal)
    n_calibration: int = 0  # normal images the threshold was calibrated on
    observed_false_alarm_rate: float | None = None  # on those images
    score_min: float = 0.0  # calibration scores' range, for the normalised score
    score_max: float = 0.0
    n_anomalous: int = 0  # labelled defective images used (f1), reported alongside
    detection_rate: float | None = None  # defective images NG at this threshold
    signature: dict[str, Any] = field(default_factory=dict)  # models and settings of the calibration
    date: str = ""
    provenance: dict[str, Any] = field(default_factory=dict)  # where the scores came from, when not --normal images


    def __post_init__(self) -> None:
        self.validate()

    def validate(self, source: str = "decision") -> None:
        """Check every field (naming it) and take each in its type; :class:`DecisionError` else."""
        try:
            self._check(source)
        except FieldError as exc:
            raise DecisionError(str(exc)) from None

    def _check(self, source: str) -> None:
        def what(name: str) -> str:
            return f"{source}: {name!r}"

        self.rule = checks.choice(self.rule, what("rule"), RULES)
        self.threshold = checks.number(self.threshold, what("threshold"), low=0.0)
        self.min_defect_area = checks.count(self.min_defect_area, what("min_defect_area"))
        self.target_rate = checks.optional_number(self.target_rate, what("target_rate"), low=0.0, high=1.0,
                                                  low_open=True, high_open=True)
        for name in ("observed_false_alarm_rate", "detection_rate"):  # fractions of images: 0 and 1 happen
            setattr(self, name, checks.optional_number(getattr(self, name), what(name), low=0.0, high=1.0))
        self.n_calibration = checks.count(self.n_calibration, what("n_calibration"))
        self.n_anomalous = checks.count(self.n_anomalous, what("n_anomalous"))
        self.score_min = checks.number(self.score_min, what("score_min"))
        self.score_max = checks.number(self.score_max, what("score_max"))
        if self.score_min > self.score_max:
            raise DecisionError(f"{source}: 'score_min' ({self.score_min:g}) must be <= 'score_max' ({self.score_max:g})")
        self.signature = checks.mapping(self.signature, what("signature"))
        self.date = checks.text(self.date, what("date"))
        self.provenance = checks.mapping(self.provenance, what("provenance"))

    @classmethod
    def manual(cls, threshold: float, calibrated: Decision | None = None) -> Decision:
        """A threshold given by hand (recorded with rule 'manual'); it keeps the ``calibrated``
        decision's minimum defect area and score range (for the normalised score), if any."""
        decision = cls(threshold=threshold, rule="manual", date=today())
        if calibrated is not None:
            decision.min_defect_area = calibrated.min_defect_area
            decision.score_min, decision.score_max = calibrated.score_min, calibrated.score_max
        return decision

    def to_dict(self) -> dict[str, Any]:
        """The fields; ``provenance`` only when it says something (files written before it existed stay as they were)."""
        data = asdict(self)
        if not self.provenance:
            del data["provenance"]
        return data

    @classmethod
    def from_dict(cls, data: Any, source: str = "decision") -> Decision:

        checks.check_fields(cls, data, source, ("threshold",), "decision fields", DecisionError)
        decision = cls(threshold=0.0)  # the defaults, then the file's values
        for name, value in data.items():
            setattr(decision, name, value)
        decision.validate(source)
        return decision

    def score(self, anomaly_map: np.ndarray) -> float:
        return min_area_score(anomaly_map, self.min_defect_area)

    def normalize(self, score: float) -> float:
        return normalized_score(score, self.threshold, self.score_min, self.score_max)

    def decide(self, anomaly_map: np.ndarray) -> ImageDecision:
        """The verdict on one map (float scores, or a uint16 stored map)."""
        units = stored_units(anomaly_map) if self.min_defect_area > 1 else anomaly_map
        score = self.score(units)
        return ImageDecision(
            verdict=verdict_at(score, self.threshold),
            score=score,
            threshold=self.threshold,
            normalized_score=self.normalize(score),
            rule=self.rule,
            min_defect_area=self.min_defect_area,
            mask=decision_mask(units, self.threshold, self.min_defect_area),
            score_span=score_span(self.score_min, self.score_max),
        )


@dataclass
class ImageDecision:
    """The verdict on one image; ``mask`` is the decision mask (empty exactly when OK)."""

    verdict: str  # "OK" or "NG"
    score: float  # the image score under the rule (min_area_score)
    threshold: float
    normalized_score: float
    rule: str
    min_defect_area: int
    mask: np.ndarray = field(repr=False, default_factory=lambda: np.zeros((0, 0), bool))
    score_span: float = 1.0  # what the normalised score divides by (overlays use the same scale)

    @property
    def ng(self) -> bool:
        return self.verdict == "NG"

    def to_record(self) -> dict[str, Any]:
        """The fields each results.jsonl line gets."""
        return {
            "decision": self.verdict,
            "decision_score": round(self.score, 6),
            "threshold": self.threshold,
            "normalized_score": round(self.normalized_score, 6),
            "decision_rule": self.rule,
            "min_defect_area": self.min_defect_area,
        }


def judge(result: SegmentationResult, decision: Decision | None) -> ImageDecision | None:
    """The OK/NG verdict on a stage-2 result under ``decision`` (None without one): the one place
    a verdict is made (``iapas segment``, the station, ``Profile.judge``)."""
    return None if decision is None else decision.decide(result.anomaly_map)


def mask_level(decision: Decision | None) -> float:
    """The level a run's masks and records are cut at: the decision's threshold, else
    :data:`NO_DECISION_MASK_LEVEL`."""
    return NO_DECISION_MASK_LEVEL if decision is None else decision.threshold


def output_mask(anomaly_map: np.ndarray, verdict: ImageDecision | None, threshold: float) -> np.ndarray:
    """The ``uint8`` mask a run writes (``masks/KEY.png``, the station's mask): 255 on the
    verdict's decision mask (empty exactly when OK), else where the map is >= ``threshold``."""
    if verdict is not None:
        return np.where(verdict.mask, 255, 0).astype(np.uint8)
    return binary_mask(anomaly_map, threshold)


def today() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
