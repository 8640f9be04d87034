"""``segment``'s run: what each image writes, resumable results.jsonl; the run itself (batching,
prefetching, failures, the one writer) is :mod:`iapas.engine`'s.

``results.jsonl`` is append-only during a run: one line per finished image, flushed and synced
as soon as that image's files are in place (a background thread writes them while the models
work on the next batch). Re-running the same command skips images already done: same file (path,
size, modification time), same mask threshold, and the outputs asked for still on disk. A done
image is found by its file before its key: when the inputs are given another way and its key
changes, its record and output files are renamed to the new key (:func:`iapas.engine.runfolder.match_finished`), so
it is neither segmented again nor listed twice. At the end of a run that was not interrupted,
the file is rewritten (atomically) with one line per key. The record format is
:mod:`iapas.engine.records`'s, the signature :mod:`iapas.engine.signature`'s.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from iapas.core.files import clean_stale_temp_files
from iapas.product.decision import NO_DECISION_MASK_LEVEL, judge
from iapas.core.images import DEFAULT_MAX_PIXELS, LoadedImage
from iapas.core.types import SegmentationResult
from iapas.engine.base import Executor, PlainJob, RunSummary, WorkItem
from iapas.engine.core import run_items
from iapas.engine.log import ResultsLog
from iapas.engine.outputs import OUTPUT_FOLDERS, write_image_outputs
from iapas.engine.records import DROPPED_DRAWN, RESULTS_FILE, RUN_FILE, result_record, run_file_content, same_decision, source_stamp
from iapas.engine.runfolder import (
    RunConflictError, assign_keys, check_models, check_signature, is_done, match_finished, write_run_file,
)
from iapas.engine.signature import precision_signature, run_signature
from iapas.pipeline.stage2 import Pipeline
from iapas.product.decision import Decision
from iapas.product.profile import Profile

__all__ = [  # all but SegmentJob and run_segmentation live in records, runfolder, signature: importable here as before
    "RESULTS_FILE", "RUN_FILE", "ResultsLog", "RunConflictError", "RunSummary", "SegmentJob", "assign_keys", "check_models",
    "is_done", "match_finished", "precision_signature", "result_record", "run_file_content", "run_segmentation",
    "run_signature", "same_decision", "source_stamp",
]

logger = logging.getLogger(__name__)


@dataclass
class SegmentJob(PlainJob):
    """What ``segment`` writes per image (:class:`iapas.engine.Job`): ``maps/``, ``masks/``,
    ``overlays/`` PNGs and a :func:`result_record` line. Pickles with the profile and the
    decision as plain dicts (for Ray workers)."""

    plain_fields = ("stage2_profile", "decision")

    out_dir: Path
    threshold: float
    overlay: bool = True
    stage2_profile: Profile | None = None
    decision: Decision | None = None
    show_dropped: bool = False

    def prepare(self, item: WorkItem, image: LoadedImage) -> None:
        return None

    def write(self, item: WorkItem, image: LoadedImage, result: SegmentationResult, prepared: Any) -> dict[str, Any]:
        verdict = judge(result, self.decision)
        outputs = write_image_outputs(self.out_dir, item.key, image.rgb, result, self.threshold, overlay=self.overlay, verdict=verdict,
                                      show_dropped=self.show_dropped)
        record = result_record(item.key, image, result, outputs, self.threshold, verdict)
        if self.overlay and self.show_dropped:
            record[DROPPED_DRAWN] = True
        return record

    def failure_record(self, item: WorkItem, message: str) -> dict[str, Any]:
        return {"key": item.key, **source_stamp(item.path), "status": "failed", "error": message}

    def cleanup(self, item: WorkItem) -> None:
        for folder in OUTPUT_FOLDERS:
            with contextlib.suppress(OSError):
                (self.out_dir / folder / f"{item.key}.png").unlink(missing_ok=True)


def run_segmentation(
    paths: Sequence[Path],
    pipeline: Pipeline,
    profile: Profile | None,
    out_dir: Path,
    *,
    threshold: float = NO_DECISION_MASK_LEVEL,
    batch_size: int = 1,
    overlay: bool = True,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    restart: bool = False,
    on_image: Callable[[str, str], None] | None = None,
    roots: Sequence[Path] | None = None,
    decision: Decision | None = None,
    executor: Executor | None = None,
    show_dropped: bool = False,
) -> RunSummary:
    """Segment ``paths`` into ``out_dir``; resumable (see the module docstring).

    ``on_image(key, status)`` is called after each image ('ok', 'failed' or 'skipped').
    When a write fails for lack of space (see :mod:`iapas.core.storage`), no new image is started,
    the images finished so far stay (the failed one's partial outputs are removed), and the
    summary says why in ``stopped``, with ``not_run`` images left for a resumed run.
    ``roots``: the folder each path was found from, which output names are relative to (see
    :func:`assign_keys`); give it so that names stay the same as the input folders grow.
    ``decision``: decide OK/NG on every image (the record's ``decision`` fields, the decision
    mask in masks/, the verdict on the overlay); ``threshold`` is then ``decision.threshold``.
    Without, ``decision`` is null and the mask is the map >= ``threshold``. The profile's own
    decision section is not used here: pass it as ``decision``. ``executor``: where the images
    run (:mod:`iapas.engine`; default: this machine's threads). ``show_dropped``: draw the
    dropped boxes on the overlays.
    """
    if decision is not None:
        threshold = decision.threshold
    pipeline.check(profile)  # a caption the detector cannot read fails here, once, not per image
    out_dir.mkdir(parents=True, exist_ok=True)
    log = ResultsLog(out_dir / RESULTS_FILE)
    signature = run_signature(pipeline, profile)
    run_file = out_dir / RUN_FILE
    clean_stale_temp_files(out_dir)  # half-written files of a killed run (outputs, results.jsonl, run.json)
    if restart and log.path.exists():
        log.path.unlink()
    check_signature(run_file, log, signature, out_dir)
    stopped = write_run_file(run_file, run_file_content(signature, threshold, decision, profile))
    if stopped is not None:
        return RunSummary(total=len(paths), stopped=stopped, not_run=len(paths))
    keys = assign_keys(paths, roots)
    previous = log.read()
    finished = {
        k: r for k, r in match_finished(paths, keys, log, out_dir, threshold, overlay, previous).items()
        if same_decision(r, decision)  # a record decided otherwise is segmented again
        and r.get(DROPPED_DRAWN, False) == (overlay and show_dropped)  # and so is an overlay drawn otherwise
    }
    _say_redone(previous, paths, finished, threshold)
    if finished:
        logger.info("resuming: %d of %d image(s) already done in %s", len(finished), len(paths), out_dir)
    job = SegmentJob(out_dir, threshold, overlay, profile, decision, show_dropped)
    summary = run_items(
        [WorkItem(key, Path(p)) for p, key in zip(paths, keys)], pipeline, job, log, finished=finished,
        executor=executor, batch_size=batch_size, max_pixels=max_pixels, on_image=on_image,
    )
    if summary.stopped is None and not summary.interrupted:
        log.compact(order=keys)  # (a full disk could not take the rewrite)
    return summary


def _say_redone(previous: dict[str, dict[str, Any]], paths: Sequence[Path], finished: dict[str, dict[str, Any]],
                threshold: float) -> None:
    """One warning when finished images of this run are segmented again because their outputs were
    made with other output settings (the models run on them again: minutes on a large run)."""
    done_before = {r.get("image"): r for r in previous.values() if r.get("status") == "ok" and r.get("image")}
    kept = {r.get("image") for r in finished.values()}
    redone = [done_before[a] for a in map(os.path.abspath, paths) if a in done_before and a not in kept
              and all(done_before[a].get(k) == v for k, v in source_stamp(a).items())]
    if redone:
        thresholds = sorted({r.get("threshold") for r in redone if r.get("threshold") != threshold}, key=str)
        was = f" (made at threshold {', '.join(map(str, thresholds))}; this run's is {threshold:g})" if thresholds else ""
        logger.warning("segmenting %d finished image(s) again: their masks, verdicts or overlays were made with other "
                       "settings%s", len(redone), was)
