"""``segment``'s run: what each image writes, resumable results.jsonl; the run itself (batching,
prefetching, failures, the one writer) is :mod:`iapas.engine`'s.

``results.jsonl`` is append-only during a run: one line per finished image, flushed and synced
as soon as that image's files are in place (a background thread writes them while the models
work on the next batch). Re-running the same command skips images already done: same file (path,
size, modification time), same mask threshold, and the outputs asked for still on disk. A done
image is found by its file before its key: when the inputs are given another way and its key
changes, its record and output files are renamed to the new key (:func:`match_finished`), so
it is neither segmented again nor listed twice. At the end of a run that was not interrupted,
the file is rewritten (atomically) with one line per key.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from iapas.product.decision import NO_DECISION_MASK_LEVEL, Decision, ImageDecision, judge
from iapas.engine import Executor, PlainJob, ResultsLog, RunConflictError, RunSummary, WorkItem, check_signature, precision_signature, run_items
from iapas.models.fingerprint import pipeline_identity
from iapas.core.images import DEFAULT_MAX_PIXELS, LoadedImage
from iapas.core.files import atomic_write_text, clean_stale_temp_files, file_stamp
from iapas.core.names import OutsideRootError, path_inside
from iapas.core.maps import MAP_SCALE
from iapas.engine.outputs import output_names, write_image_outputs
from iapas.pipeline.stage2 import Pipeline
from iapas.product.profile import Profile
from iapas.core.storage import is_disk_full, stop_reason
from iapas.core.types import SegmentationResult

__all__ = [  # ResultsLog, RunConflictError, RunSummary, precision_signature: from iapas.engine, importable here as before
    "RESULTS_FILE", "RUN_FILE", "ResultsLog", "RunConflictError", "RunSummary", "SegmentJob", "assign_keys", "is_done",
    "match_finished", "precision_signature", "result_record", "run_segmentation", "run_signature",
    "same_decision", "source_stamp",
]

logger = logging.getLogger(__name__)

RESULTS_FILE = "results.jsonl"
RUN_FILE = "run.json"


def assign_keys(paths: Sequence[Path], roots: Sequence[Path] | None = None) -> list[str]:
    """A unique output name per input, without suffix (``crack/000``), relative to its own root.

    ``roots``: the folder each key is relative to (see :func:`iapas.data.search.search_images`: the folder
    given, its parent when several inputs found images, a named file's own folder); without, each
    path's own folder (the key is the file's name). A key depends on its own path and root, not on
    the other inputs, so it stays the same when an unrelated input is added, removed or missing.
    Names that still collide are told apart the same way every time: first they keep their suffix
    (``000.jpg``), then each takes one more leading folder (``x/a/000`` and ``y/a/000``).
    """
    absolute = [os.path.abspath(p) for p in paths]  # not resolve(): keep symlinks' own names
    if roots is not None and len(roots) != len(paths):
        raise ValueError(f"{len(paths)} paths but {len(roots)} roots")
    bases = [os.path.abspath(r) for r in roots] if roots is not None else [os.path.dirname(a) for a in absolute]
    levels = [0] * len(absolute)
    keys = [_key_at(a, b, 0) or a for a, b in zip(absolute, bases)]
    while True:
        groups: dict[str, list[int]] = {}
        for i, key in enumerate(keys):
            groups.setdefault(key, []).append(i)
        clashes = [group for group in groups.values() if len(group) > 1]
        if not clashes:
            return keys
        moved = False
        for group in clashes:
            for i in group:
                longer = _key_at(absolute[i], bases[i], levels[i] + 1)
                if longer is not None:
                    levels[i] += 1
                    keys[i] = longer
                    moved = True
        if not moved:
            raise ValueError(f"the same file is given twice: {absolute[clashes[0][0]]}")


def _key_at(path: str, base: str, level: int) -> str | None:
    """Key candidate ``level`` of ``path``: relative to ``base`` and then to each folder above it
    in turn (``level // 2`` folders up), without its suffix at even levels, with it at odd ones;
    None above the filesystem root. A base that does not hold the path is the path's own folder."""
    if not path.startswith(base.rstrip(os.sep) + os.sep):
        base = os.path.dirname(path)
    for _ in range(level // 2):
        parent = os.path.dirname(base)
        if parent == base:
            return None
        base = parent
    relative = PurePosixPath(Path(os.path.relpath(path, base)).as_posix())
    return str(relative if level % 2 else relative.with_suffix(""))


def run_signature(pipeline: Pipeline, profile: Profile | None) -> dict[str, Any]:
    cfg = pipeline.config
    return {
        "mode": cfg.mode,
        "caption": pipeline.caption_for(profile),
        "object_tag": profile.object_tag if profile else None,
        "size_threshold": cfg.size_threshold if cfg.size_threshold is not None else (profile.size_threshold if profile else None),
        "object_size": profile.object_size if profile else None,
        "box_threshold": cfg.box_threshold,
        "text_threshold": cfg.text_threshold,
        "nms_iou": cfg.nms_iou,
        "size_filter": cfg.size_filter,
        "fuse_object_detection": cfg.fuse_object_detection,
        **pipeline_identity(pipeline),  # names (informative) and fingerprints (compared), see iapas.models.fingerprint
        **precision_signature(pipeline),
        # compiled models agree only to float rounding: a resumed run must not mix them (absent when
        # off, so the signatures of earlier runs still match)
        **({"compile": True} if getattr(cfg, "compile", False) else {}),
    }


def check_models(out_dir: Path, detector: str, segmenter: str) -> None:
    """Refuse, before any model is loaded, a run folder whose results were made with other models
    (by fingerprint, whatever the paths) or by an older iapas: :func:`check_signature` of the
    recorded signature with these models in it. Only models known by content (a folder, a cached
    hub revision) are compared here: what a hub id not in the cache loads is known once loaded.
    Other settings, an unreadable run.json and a model folder that does not exist are left to
    the full check and to loading."""
    from iapas.models.fingerprint import KINDS, named_identity
    from iapas.models.loading import ModelLoadError

    run_file = out_dir / RUN_FILE
    try:
        previous = json.loads(run_file.read_text(encoding="utf-8")).get("signature")
        identity = named_identity(detector, segmenter, strict=True)
    except (OSError, ValueError, AttributeError, ModelLoadError):
        return
    known = {key: identity[key] for kind in KINDS if not identity[f"{kind}_fingerprint"].startswith("name:")
             for key in (kind, f"{kind}_fingerprint")}
    if isinstance(previous, dict) and known:
        check_signature(run_file, ResultsLog(out_dir / RESULTS_FILE), {**previous, **known}, out_dir)


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
        return result_record(item.key, image, result, outputs, self.threshold, verdict)

    def failure_record(self, item: WorkItem, message: str) -> dict[str, Any]:
        return {"key": item.key, **source_stamp(item.path), "status": "failed", "error": message}

    def cleanup(self, item: WorkItem) -> None:
        for folder in ("maps", "masks", "overlays"):
            with contextlib.suppress(OSError):
                (self.out_dir / folder / f"{item.key}.png").unlink(missing_ok=True)


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
    try:
        atomic_write_text(run_file, json.dumps(run_file_content(signature, threshold, decision, profile), indent=2) + "\n")
    except OSError as exc:
        if not is_disk_full(exc):
            raise
        logger.error("%s: cannot write: %s", run_file, exc)
        summary = RunSummary(total=len(paths))
        summary.stopped, summary.not_run = stop_reason(exc), len(paths)
        return summary
    keys = assign_keys(paths, roots)
    finished = {
        k: r for k, r in match_finished(paths, keys, log, out_dir, threshold, overlay).items()
        if same_decision(r, decision)  # a record decided otherwise is segmented again
    }
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


def match_finished(
    paths: Sequence[Path], keys: Sequence[str], log: ResultsLog, out_dir: Path, threshold: float, overlay: bool
) -> dict[str, dict[str, Any]]:
    """The finished records that stand for this run's images, by this run's key.

    An image is matched by its source first (absolute path, size, modification time; see
    :func:`is_done`), then by its key: a finished record of the same file under another key (the
    inputs were given another way) is re-keyed, its output files renamed to the new key's names,
    so that it is neither segmented again nor listed twice. Other records of the same file
    under other keys (older duplicates, failures) are dropped with their files, and so are failed
    records of files that no longer exist and are not in this run (a mistyped path).
    """
    records = log.read()
    by_image: dict[str, list[str]] = {}
    for key, record in records.items():
        if isinstance(record.get("image"), str):
            by_image.setdefault(record["image"], []).append(key)
    in_run = {os.path.abspath(p) for p in paths}
    finished: dict[str, dict[str, Any]] = {}
    renames: dict[str, str] = {}  # old key -> this run's key
    drop: set[str] = set()
    for path, key in zip(paths, keys):
        same = by_image.get(os.path.abspath(path), [])
        done = [k for k in same if is_done(records[k], path, out_dir, threshold, overlay)]
        chosen = key if key in done else (done[-1] if done else None)
        drop.update(k for k in same if k not in (key, chosen))
        if chosen is not None:
            finished[key] = records[chosen]
            if chosen != key:
                renames[chosen] = key
    drop.update(
        k for k, r in records.items()
        if r.get("status") == "failed" and isinstance(r.get("image"), str)
        and r["image"] not in in_run and not os.path.lexists(r["image"])
    )
    if renames or drop:
        finished.update(_rekey(log, records, renames, drop, out_dir))
    return finished


def _rekey(
    log: ResultsLog, records: dict[str, dict[str, Any]], renames: dict[str, str], drop: set[str], out_dir: Path
) -> dict[str, dict[str, Any]]:
    """Give the records ``renames`` names (old key -> new key) and drop the ``drop`` ones, in an
    order that a killed run leaves consistent: (1) the renamed records' files go to temporary
    names (which the next run removes), (2) whatever else holds the new names and the dropped
    records' files are removed, (3) results.jsonl is rewritten atomically, (4) the files take
    their new names. A record whose files are not all there is not done, so an image caught
    half way is segmented again, never given another image's files. Returns the renamed records."""
    moves: list[tuple[Path, Path]] = []  # temporary name, new name
    renamed: dict[str, dict[str, Any]] = {}
    emptied: set[Path] = set()
    for old, new in renames.items():
        record = records[old]
        names = output_names(new)
        outputs: dict[str, str] = {}
        for kind, rel in record.get("outputs", {}).items():
            source = out_dir / rel
            fd, temp = tempfile.mkstemp(prefix=f".{source.name}.", suffix=".tmp" + source.suffix, dir=source.parent)
            os.close(fd)
            os.replace(source, temp)
            emptied.add(source.parent)
            outputs[kind] = names.get(kind, rel)
            moves.append((Path(temp), out_dir / outputs[kind]))
        renamed[new] = {**record, "key": new, "outputs": outputs}
    superseded = drop | set(renames) | set(renames.values())
    kept = {k: r for k, r in records.items() if k not in superseded}
    kept.update(renamed)
    referenced = {p for r in kept.values() for p in output_paths(out_dir, r)}
    stale = [p for k in drop for p in output_paths(out_dir, records[k])]
    for path in [final for _, final in moves] + [p for p in stale if p not in referenced]:
        path.unlink(missing_ok=True)
        emptied.add(path.parent)
    atomic_write_text(log.path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in kept.values()))
    for temp, final in moves:
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(temp, final)
    for folder in sorted(emptied, key=lambda f: -len(f.parts)):  # folders the old names leave empty
        while folder != out_dir and out_dir in folder.parents:
            try:
                folder.rmdir()
            except OSError:
                break
            folder = folder.parent
    logger.info("resuming %d finished image(s) under new names; dropped %d stale record(s)", len(renames), len(drop))
    return renamed


def source_stamp(path: Path) -> dict[str, Any]:
    """What identifies an input file across runs: absolute path, size, modification time."""
    return {"image": os.path.abspath(path), **(file_stamp(path) or {})}


def is_done(record: dict[str, Any], path: Path, out_dir: Path, threshold: float, overlay: bool) -> bool:
    """Whether a previous record can stand for ``path`` in this run."""
    if record.get("status") != "ok" or record.get("threshold") != threshold:
        return False
    stamp = source_stamp(path)
    if any(record.get(k) != v for k, v in stamp.items()):
        return False  # another file under the same key, or the file changed since
    outputs = record.get("outputs", {})
    if overlay and "overlay" not in outputs:
        return False
    files = output_paths(out_dir, record)
    return len(files) == len(outputs) and all(f.exists() for f in files)


def output_paths(out_dir: Path, record: dict[str, Any]) -> list[Path]:
    """The files a record's ``outputs`` name that lie inside ``out_dir``: a hand-edited
    results.jsonl naming ``../../file`` never gets a file outside renamed or deleted."""
    paths = []
    outputs = record.get("outputs")
    for rel in (outputs.values() if isinstance(outputs, dict) else ()):
        try:
            paths.append(path_inside(out_dir, str(rel)))
        except OutsideRootError as exc:
            logger.warning("%s: record %r: %s", out_dir / RESULTS_FILE, record.get("key"), exc)
    return paths


def same_decision(record: dict[str, Any], decision: Decision | None) -> bool:
    """Whether a previous record was decided as ``decision`` would (or both undecided)."""
    if decision is None:
        return record.get("decision") is None
    wanted = {"decision_rule": decision.rule, "threshold": decision.threshold, "min_defect_area": decision.min_defect_area}
    return record.get("decision") is not None and all(record.get(k) == v for k, v in wanted.items())


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
