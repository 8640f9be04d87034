"""``segment``'s checks before any model loads, shared by the command line and Python users:
the profile a mode needs, the images to run, the output folder, and the decision they get.
Each failure is a :class:`SegmentError` with a one-line message; the run itself is
:func:`iapas.engine.runner.run_segmentation`."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from iapas.engine.log import ResultsLog
from iapas.engine.records import RESULTS_FILE
from iapas.engine.runfolder import RunConflictError, check_models
from iapas.product.decision import Decision
from iapas.product.profile import Profile, ProfileError

logger = logging.getLogger(__name__)

class SegmentError(ValueError):
    """A run that cannot start; the message is one line."""


@dataclass
class Inputs:
    """The images found, and the inputs that were not (one line each)."""

    paths: list[Path] = field(default_factory=list)
    roots: list[Path] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # only missing files: no image to load models for
    left_out: list[str] = field(default_factory=list)  # inputs inside --out
    empty: bool = False  # no image there to segment

    def why_empty(self, out: Path) -> str:
        """Why there is no image to segment, in one line."""
        if self.left_out:
            return (f"no images to segment: the images of {', '.join(self.left_out)} were left out because they are "
                    f"inside --out {out} (a run never reads its own output folder); give an --out folder outside "
                    "the inputs")
        return "no images to segment"


def manual_threshold(threshold: float | None) -> float | None:
    """``--threshold``: the rule a profile's threshold follows (finite and >= 0)."""
    if threshold is None:
        return None
    from iapas.core.fields import FieldError, number

    try:
        return number(threshold, "--threshold", low=0.0)
    except FieldError as exc:
        raise SegmentError(str(exc)) from None


def load_profile(profile_path: Path | None, mode: str) -> Profile | None:
    """The profile of the run: required in iapas mode."""
    if profile_path is not None:
        try:
            return Profile.load(profile_path)
        except ProfileError as exc:
            raise SegmentError(str(exc)) from None
    if mode == "iapas":
        raise SegmentError("--profile is required in iapas mode (make one with 'iapas profile'), or use --mode base")
    return None


def base_mode_ignores(profile_path: Path | None, size_threshold: float | None, fuse: bool) -> list[str]:
    """The options ``--mode base`` ignores (its caption is fixed and it has no size filter)."""
    return [name for name, used in (("--profile", profile_path is not None), ("--size-threshold", size_threshold is not None),
                                    ("--fuse-object-detection", fuse)) if used]


def check_out_folder(out: Path) -> None:
    """``out`` is a folder or can become one: fail now, not after loading the models."""
    blocking = next((q for q in (out, *out.parents) if q.exists() and not q.is_dir()), None)
    if blocking is not None:
        where = "is a file" if blocking == out else f"is inside {blocking}, which is a file"
        raise SegmentError(f"--out {out} {where}; it must be a folder (new or from an earlier run)")


def find_inputs(images: list[str], out: Path) -> Inputs:
    """The images of ``images`` (files, folders, patterns), never those inside ``out``. With only
    missing files, :attr:`Inputs.missing` says so (then :meth:`Inputs.why_empty`)."""
    from iapas.core.images import show_path
    from iapas.data.search import mask_rule, search_images

    search = search_images(images, exclude=out, keep_missing=True)
    found, problems = search.found, list(search.problems)
    if search.excluded_inputs and found:
        problems += [f"{item}: left out: its images are inside --out {out} (a run never reads its own output folder)"
                     for item in search.excluded_inputs]
    inputs = Inputs([p for p, _ in found], [root for _, root in found], problems, left_out=list(search.excluded_inputs))
    if not any(p.exists() or p.is_symlink() for p in inputs.paths):
        inputs.missing, inputs.empty = [f"{show_path(p)}: file not found" for p in inputs.paths], True
        return inputs
    named_masks = [p for p in inputs.paths if mask_rule(p)]
    if named_masks and len(named_masks) < len(inputs.paths):  # as a shell expands 'kos01/*'
        logger.warning(
            "taking %d file(s) named like ground-truth masks (e.g. %s) because they were named one by one; "
            "give the folder or a quoted pattern ('dir/*') to have masks left out", len(named_masks), named_masks[0])
    return inputs


def decision_for(profile: Profile | None, threshold: float | None) -> Decision | None:
    """The profile's decision, or a manual one that keeps its minimum defect area and score range."""
    decision = profile.decision if profile is not None else None
    return Decision.manual(threshold, decision) if threshold is not None else decision


def check_before_loading(profile: Profile | None, detector: str, segmenter: str, out: Path, restart: bool) -> None:
    """A caption the detector cannot read, or results of other models in ``out`` (kept unless
    ``restart``): refused before the models load."""
    if profile is not None:
        from iapas.models.detector import check_caption_length

        try:
            check_caption_length(profile.caption, detector)
        except ValueError as exc:
            raise SegmentError(str(exc)) from None
    if not restart:
        try:
            check_models(out, detector, segmenter)
        except RunConflictError as exc:
            raise SegmentError(str(exc)) from None


def other_settings(decision: Decision | None, signature: dict) -> str | None:
    """How the run's models and settings differ from those the threshold was calibrated with
    (models by fingerprint, whatever their paths; see :mod:`iapas.models.fingerprint`), if they do."""
    if decision is None or decision.rule == "manual" or not decision.signature:
        return None
    from iapas.models.fingerprint import signature_diff

    diff = signature_diff(decision.signature, signature)
    return diff.describe() if diff else None


def verdict_counts(out: Path, keys: list[str]) -> dict[str, int]:
    """OK and NG among this run's images, from OUT/results.jsonl."""
    records = ResultsLog(out / RESULTS_FILE).read()
    counts = {"OK": 0, "NG": 0}
    for key in keys:
        verdict = records.get(key, {}).get("decision")
        if verdict in counts:
            counts[verdict] += 1
    return counts
