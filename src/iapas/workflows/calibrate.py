"""Calibrating a profile's OK/NG threshold on normal images, for the command line, the station
and Python users alike: stage 2 on the normal (and optional defective) images, kept like a
``segment`` run, then :func:`iapas.product.calibration.calibrate` on their scores.

    profile = Profile.load(path)
    normal = normal_inputs(profile, path, ["good/"], out, rate=0.01)
    outcome = calibrate_runs(pipeline, profile, out, normal.found, rate=0.01)
    save_decision(profile, path, outcome.decision)

Each failure is a :class:`CalibrationError` with a one-line message; inputs that cannot be used
are reported one line each to ``on_problem`` (default: logged) and left out.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from iapas.core.images import DEFAULT_MAX_PIXELS
from iapas.data.search import find_images_with_roots
from iapas.engine.log import ResultsLog
from iapas.engine.records import RESULTS_FILE
from iapas.engine.runfolder import RunConflictError, assign_keys
from iapas.engine.runner import run_segmentation
from iapas.engine.signature import run_signature
from iapas.product.calibration import OverlapCheck, calibrate, check_finite, check_reference_overlap, stored_scores
from iapas.product.decision import Decision, DecisionError, images_needed
from iapas.product.profile import Profile, ProfileError

logger = logging.getLogger(__name__)

#: The sub-folder of the calibration's output folder for the defective images' stage 2 results.
ANOMALOUS_DIR = "anomalous"
RULES = ("conformal", "f1")
DEFAULT_RATE = 0.01  # the false-alarm rate asked for when none is given
Found = list[tuple[Path, Path]]  # (image, the input it was found under)


class CalibrationError(ValueError):
    """A calibration that cannot go on; the message is one line."""


@dataclass
class NormalInputs:
    found: Found
    overlap: OverlapCheck
    problems: list[str] = field(default_factory=list)


@dataclass
class DefectInputs:
    found: Found = field(default_factory=list)
    labels: dict[Path, bool] | None = None  # defective (non-empty mask) or not; None: no masks given
    problems: list[str] = field(default_factory=list)


@dataclass
class CalibrationOutcome:
    decision: Decision | None = None
    results: list[Any] = field(default_factory=list)  # one RuleResult per rule
    n_anomalous: int = 0  # defective images that counted
    failed: int = 0  # images whose stage 2 failed (not part of the calibration)
    interrupted: bool = False

    @property
    def at_map_limit(self) -> bool:
        """With a minimum defect area, a threshold at the stored maps' limit makes no image NG."""
        from iapas.core.maps import MAP_MAX

        return self.decision is not None and self.decision.min_defect_area > 1 and self.decision.threshold >= MAP_MAX


def check_options(rule: str, rate: float | None, anomalous: Sequence[str] | None, masks: Path | None,
                  normal: Sequence[str] | None, out: Path | None) -> float:
    """The options of a calibration on images, checked; returns the rate (default 0.01)."""
    rate = DEFAULT_RATE if rate is None else rate
    if not normal or out is None:
        raise CalibrationError("give the normal images and a results folder (--normal DIR --out DIR), or --from-store STORE")
    if rule not in RULES:
        raise CalibrationError(f"--rule must be conformal or f1, got {rule!r}")
    if not 0 < rate < 1:
        raise CalibrationError(f"--false-alarm-rate must be in (0, 1), got {rate}")
    if rule == "f1" and not anomalous:
        raise CalibrationError("--rule f1 needs labelled defective images: give --anomalous DIR")
    if masks is not None and not anomalous:
        raise CalibrationError("--masks goes with --anomalous")
    return rate


def load_profile(profile_path: Path) -> Profile:
    try:
        return Profile.load(profile_path)
    except ProfileError as exc:
        raise CalibrationError(str(exc)) from None


def normal_inputs(profile: Profile, profile_path: Path, normal: Sequence[str], out: Path, rate: float,
                  rule: str = "conformal", on_problem: Callable[[str], None] = logger.error) -> NormalInputs:
    """The normal images: enough for ``rate`` (conformal rule), none a stage-1 reference (by content)."""
    found, problems = find_images_with_roots(list(normal), exclude=out)
    for problem in problems:
        on_problem(problem)
    needed = images_needed(rate)
    if rule == "conformal" and len(found) < needed:
        raise CalibrationError(
            f"{len(found)} normal image(s) found; a false-alarm rate of {rate:g} needs at least {needed} "
            "(more normal images, or a higher --false-alarm-rate)"
        )
    check = check_reference_overlap(profile, profile_path, [p for p, _ in found])
    if check.overlaps:
        for path, ref in check.overlaps:
            on_problem(f"{path}: the same file as the stage-1 reference {ref}")
        raise CalibrationError(f"{len(check.overlaps)} calibration image(s) are stage-1 references of {profile_path}; leave them out")
    return NormalInputs(found, check, list(problems))


def defect_inputs(anomalous: Sequence[str] | None, masks: Path | None, out: Path,
                  on_problem: Callable[[str], None] = logger.error, normal: Sequence[tuple[Path, Path]] = ()) -> DefectInputs:
    """The defective images and, with ``masks``, whether each is defective after all; refused
    when one is also among the ``normal`` images."""
    inputs = DefectInputs()
    if anomalous:
        inputs.found, inputs.problems = find_images_with_roots(list(anomalous), exclude=out)
        for problem in inputs.problems:
            on_problem(problem)
        if not inputs.found:
            raise CalibrationError("no --anomalous images found")
        both = sorted({os.path.realpath(p) for p, _ in normal} & {os.path.realpath(p) for p, _ in inputs.found})
        if both:
            raise CalibrationError(
                f"{len(both)} image(s) given both as normal and as defective, e.g. {both[0]}: a defective part among "
                "the normal scores raises the threshold; give disjoint folders (--normal test/good --anomalous test/broken)")
    if masks is not None:
        inputs.labels, mask_problems = mask_labels([p for p, _ in inputs.found], masks)
        for problem in mask_problems:
            on_problem(problem)
        inputs.problems += mask_problems
    return inputs


def mask_labels(paths: list[Path], masks: Path) -> tuple[dict[Path, bool], list[str]]:
    """Defective (non-empty mask) or not, per image; a missing mask is a problem."""
    from iapas.data.masks import MaskError, load_mask

    labels: dict[Path, bool] = {}
    problems: list[str] = []
    for path in paths:
        stem = path.stem
        candidates = [m for pattern in (f"{stem}_mask.*", f"{stem}.*", f"{stem}_label.*") for m in sorted(masks.glob(pattern))]
        candidates = [m for m in candidates if m.resolve() != path.resolve()]
        if not candidates:
            problems.append(f"{path}: no mask in {masks} ({stem}_mask.*, {stem}.* or {stem}_label.*)")
            continue
        try:
            labels[path] = bool(load_mask(candidates[0], image_path=path).any())
        except MaskError as exc:
            problems.append(str(exc))
    return labels, problems


def _scores(pipeline: Any, profile: Profile, out: Path, items: Found, min_area: int, outcome: CalibrationOutcome,
            **run: Any) -> dict[str, float]:
    """Stage 2 on ``items`` into ``out`` (resumed), and their scores by path; no decision: the
    records keep the raw scores and maps."""
    paths, roots = [p for p, _ in items], [r for _, r in items]
    keys = assign_keys(paths, roots)
    try:
        summary = run_segmentation(paths, pipeline, profile, out, roots=roots, **run)
    except (RunConflictError, OSError, ValueError) as exc:
        raise CalibrationError(str(exc)) from None
    outcome.failed += len(summary.failed)
    outcome.interrupted = summary.interrupted
    key_of = dict(zip(paths, keys))
    scores = stored_scores(out, ResultsLog(out / RESULTS_FILE).read(), keys, min_area)
    return {str(p): scores[key_of[p]] for p in paths if key_of[p] in scores}


def calibrate_runs(pipeline: Any, profile: Profile, out: Path, normal: Found, defects: DefectInputs | None = None, *,
                   rate: float = 0.01, min_area: int = 0, rule: str = "conformal", batch_size: int = 1,
                   max_pixels: int = DEFAULT_MAX_PIXELS, restart: bool = False) -> CalibrationOutcome:
    """Stage 2 on the normal images into ``out`` and the defective ones into OUT/anomalous, then
    the decision (not saved: :func:`save_decision`). An interrupted run returns at once."""
    defects = defects or DefectInputs()
    outcome = CalibrationOutcome()
    run = dict(batch_size=batch_size, restart=restart, max_pixels=max_pixels)
    scores = [_scores(pipeline, profile, out, normal, min_area, outcome, **run)]
    if outcome.interrupted:
        return outcome
    if defects.found:
        scores.append(_scores(pipeline, profile, out / ANOMALOUS_DIR, defects.found, min_area, outcome, **run))
        if outcome.interrupted:
            return outcome
    normal_scores, anomalous_scores = list(scores[0].values()), []
    for p, _ in defects.found:
        s = scores[1].get(str(p))
        if s is None or (defects.labels is not None and p not in defects.labels):
            continue
        (anomalous_scores if (defects.labels or {}).get(p, True) else normal_scores).append(s)
    try:
        for run_scores in scores:
            check_finite(run_scores)
        outcome.decision, outcome.results = calibrate(
            normal_scores, anomalous_scores, rate=rate, min_area=min_area, rule=rule,
            signature=run_signature(pipeline, profile),
        )
    except DecisionError as exc:
        raise CalibrationError(str(exc)) from None
    outcome.n_anomalous = len(anomalous_scores)
    return outcome


def save_decision(profile: Profile, profile_path: Path, decision: Decision) -> None:
    """Write ``decision`` as the profile's 'decision' section."""
    profile.decision = decision
    try:
        profile.save(profile_path)
    except (ProfileError, OSError) as exc:
        raise CalibrationError(f"{profile_path}: cannot write the profile: {exc}") from None
