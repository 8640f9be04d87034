"""The record format of a segment run folder, which ``iapas segment``
(:mod:`iapas.engine.runner`) writes and the station (:mod:`iapas.serve.store`,
:mod:`iapas.serve.review`) writes and reads: ``run.json`` (:func:`run_file_content`) and one
``results.jsonl`` line per image (:func:`result_record`)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from iapas.core import files
from iapas.core.files import file_stamp
from iapas.core.images import LoadedImage
from iapas.core.maps import MAP_SCALE
from iapas.core.types import SegmentationResult
from iapas.product.decision import Decision, ImageDecision
from iapas.product.profile import Profile

RESULTS_FILE = files.RESULTS_FILE  # the run folder's two files, named once in iapas.core.files
RUN_FILE = files.RUN_FILE
DROPPED_DRAWN = "overlay_shows_dropped"  # a record's key, true when its overlay draws the dropped boxes (--show-dropped)


def run_file_content(
    signature: dict[str, Any], threshold: float, decision: Decision | None, profile: Profile | None
) -> dict[str, Any]:
    """What ``run.json`` of a segment run folder holds (also written by ``iapas serve --store``)."""
    from iapas.core.version import __version__

    return {
        "iapas_version": __version__, "signature": signature, "threshold": threshold, "map_scale": MAP_SCALE,
        "decision": decision.to_dict() if decision else None,
        "profile": profile.to_dict() if profile else None,
    }


def source_stamp(path: Path) -> dict[str, Any]:
    """What identifies an input file across runs: absolute path, size, modification time."""
    return {"image": os.path.abspath(path), **(file_stamp(path) or {})}


def result_record(
    key: str,
    image: LoadedImage,
    result: SegmentationResult,
    outputs: dict[str, str],
    threshold: float,
    verdict: ImageDecision | None = None,
) -> dict[str, Any]:
    """The JSON line of one finished image; ``decision`` is "OK"/"NG" with a verdict, else null."""
    undecided = {"decision": None, "decision_score": None, "normalized_score": None}
    return {
        "key": key,
        **source_stamp(image.path),
        "status": "ok",
        "threshold": threshold,
        "width": image.width,
        "height": image.height,
        "mode": image.mode,
        **result.to_record(),
        "max_score": result.image_score,  # unrounded: what calibration takes as the score (iapas.product.decision)
        **(verdict.to_record() if verdict is not None else undecided),
        "outputs": outputs,
    }


def same_decision(record: dict[str, Any], decision: Decision | None) -> bool:
    """Whether a previous record was decided as ``decision`` would (or both undecided)."""
    if decision is None:
        return record.get("decision") is None
    wanted = {"decision_rule": decision.rule, "threshold": decision.threshold, "min_defect_area": decision.min_defect_area}
    return record.get("decision") is not None and all(record.get(k) == v for k, v in wanted.items())
