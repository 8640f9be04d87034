"""Evaluating stage 2 on a benchmark dataset: resumable per-image predictions, then metrics.

This module describes an evaluation's work to the run engine (:mod:`iapas.engine`) and turns
its records into metrics; the tables and the report read those (:mod:`.tables`,
:mod:`iapas.evaluation.report`), and :func:`iapas.evaluation.run.evaluate_dataset` runs it all. Settings
live in :mod:`.settings`, result types in :mod:`.results`, per-image files in :mod:`.predictions`.

Layout of an evaluation folder ``OUT``::

    OUT/run.json                    settings, models and per-category signature (for resuming)
    OUT/profiles/<category>.yaml    stage-1 profiles (reused when present; editable)
    OUT/predictions/<category>.jsonl  one JSON line per test image, appended as it finishes
    OUT/maps/<category>/<key>.npz   the 400x400 map and mask (bool): under --protocol paper float64,
                                    normalised per image before resizing (the reference's order);
                                    under full float32, raw (normalised when the metrics are computed)
    OUT/full_maps/<category>/<key>.npz  with --save-full-maps: the full-resolution fused map (float64, raw)
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

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from iapas.core.version import __version__
from iapas.data import Category, DatasetBase, MaskError, get_dataset, sample_mask
from iapas.engine import Executor, ItemError, PlainJob, ResultsLog, RunConflictError, WorkItem, run_items
from iapas.engine.records import RUN_FILE
from iapas.engine.runfolder import differences, read_run, write_run_file
from iapas.engine.signature import RunModels, models_signature
from iapas.evaluation.decisions import raw_scores, threshold_evidence
from iapas.evaluation.plan import plan_category, restrict_to_pool, select_categories  # noqa: F401  (re-exported)
from iapas.evaluation.predictions import (  # noqa: F401  (re-exported: importable from here as before)
    evaluated_map,
    failure_record,
    full_map_relpath,
    is_done,
    load_map_file,
    map_relpath,
    metrics_from_predictions,
    prediction_record,
    predictions_path,
    sample_keys,
    save_map_file,
)
from iapas.evaluation.profiles import ProfileRecord, Stage1Models, Stage1Options, get_profile, profile_path
from iapas.evaluation.protocol import limit_samples, normalize_full_map
from iapas.evaluation.runfolder import (  # noqa: F401  (check_existing_run, run_signature: re-exported)
    check_existing_run,
    discard_results,
    has_predictions,
    run_signature,
)
from iapas.evaluation.results import METRIC_COLUMNS, CategoryResult, DatasetResult, ImageFailure, json_safe
from iapas.evaluation.settings import (  # noqa: F401  (re-exported)
    EvalSettings,
    ProgressHooks,
    category_signature,
    stage2_pipeline,
    stage2_profile,
)
from iapas.core.images import ImageReadError, LoadedImage
from iapas.core.files import clean_stale_temp_files
from iapas.models import ModelOutputError
from iapas.core.names import path_inside
from iapas.pipeline.stage2 import Pipeline
from iapas.product.profile import Profile
from iapas.core.storage import DiskFullError
from iapas.core.types import SegmentationResult

logger = logging.getLogger(__name__)

PROFILES_DIR = "profiles"

__all__ = [
    "METRIC_COLUMNS", "CategoryResult", "DatasetResult", "EvalSettings", "EvaluateJob", "ImageFailure", "ProgressHooks",
    "RunConflictError", "evaluate_category", "measure_dataset", "metrics_from_predictions",
]


# --- one category ---------------------------------------------------------------------------------------


@dataclass
class EvaluateJob(PlainJob):
    """What ``evaluate`` writes per test image (:class:`iapas.engine.Job`): the 400x400 map and
    mask in ``maps/CATEGORY/KEY.npz`` and a :func:`prediction_record` line. Items' context is
    their :class:`~iapas.data.Sample`; the ground-truth mask is loaded beside the image. Pickles
    with the profile as a plain dict (for Ray workers)."""

    out_dir: Path
    category: str
    settings: EvalSettings
    stage2_profile: Profile | None = None

    def prepare(self, item: WorkItem, image: LoadedImage) -> np.ndarray:
        try:
            return sample_mask(item.context, expected_size=(image.height, image.width))
        except MaskError as exc:
            raise ItemError(str(exc)) from None

    def write(self, item: WorkItem, image: LoadedImage, result: SegmentationResult, prepared: np.ndarray) -> dict[str, Any]:
        settings = self.settings
        size_map, size_mask = settings.resizers()
        full = result.anomaly_map  # float64 under the paper protocol (stage2_pipeline asks for it)
        if settings.paper_arithmetic:  # the reference's order, in float64: fuse, normalise, resize
            full = full.astype(np.float64, copy=False)
        normalized = settings.paper_arithmetic and bool(settings.image_norm)
        map_eval = size_map(normalize_full_map(full) if normalized else full, settings.eval_size)
        mask_eval = size_mask(prepared, settings.eval_size)
        full_rel = None
        if settings.save_full_maps:
            full_rel = full_map_relpath(self.category, item.key)
            save_map_file(path_inside(self.out_dir, full_rel), full.astype(np.float64))
        rel = map_relpath(self.category, item.key)
        save_map_file(path_inside(self.out_dir, rel), map_eval, mask_eval)
        return prediction_record(
            item.key, item.context, image, result, map_eval, mask_eval, rel, image_normalized=normalized, full_map=full_rel
        )

    def failure_record(self, item: WorkItem, message: str) -> dict[str, Any]:
        return failure_record(item.key, item.context, message)

    def cleanup(self, item: WorkItem) -> None:
        (self.out_dir / map_relpath(self.category, item.key)).unlink(missing_ok=True)
        (self.out_dir / full_map_relpath(self.category, item.key)).unlink(missing_ok=True)


def evaluate_category(
    pipeline: Pipeline,
    category: Category,
    profile: Profile | None,
    out_dir: str | Path,
    settings: EvalSettings | None = None,
    *,
    on_image: Callable[[str, str], None] | None = None,
    metrics: bool = True,
    executor: Executor | None = None,
) -> CategoryResult:
    """Segment every test image of ``category`` (resuming) and compute its metrics (not with
    ``metrics=False``, e.g. for calibration images).

    ``pipeline`` supplies the models (its mode and size threshold are replaced by ``settings``');
    ``profile`` is the category's stage-1 profile (None in mode 'base'). Unreadable images and
    masks that do not fit their image are recorded as failed and left out of the metrics.
    ``on_image(key, status)`` is called per image with 'ok', 'failed' or 'skipped' (resumed).
    A KeyboardInterrupt propagates: finished images are on disk, run again to resume. So does a
    full disk, as :class:`~iapas.core.storage.DiskFullError`, once no new image is started, the
    finished ones are saved and the failed one's partial map is removed. ``executor``: where the
    images run (:mod:`iapas.engine`; default: this machine's threads).
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
    finished = {
        keys[s.path]: previous[keys[s.path]]
        for s in samples
        if is_done(previous.get(keys[s.path]), out, s, full_map=settings.save_full_maps)
    }
    if finished:
        logger.info("%s: resuming: %d of %d image(s) already done", category.name, len(finished), len(samples))
    summary = run_items(
        [WorkItem(keys[s.path], s.path, s) for s in samples], stage2, EvaluateJob(out, category.name, settings, used), log,
        finished=finished, executor=executor, batch_size=settings.batch_size, max_pixels=settings.max_pixels,
        on_image=on_image,
    )
    if summary.stopped is not None:
        error = summary.stop_error
        raise DiskFullError(getattr(error, "errno", None), summary.stopped)
    if summary.interrupted:
        raise KeyboardInterrupt
    result.n_new = summary.done
    ok = _collect(result, log, [keys[s.path] for s in samples])
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


def _collect(result: CategoryResult, log: ResultsLog, order: list[str]) -> list[dict[str, Any]]:
    """Put the log in the test images' order and record its keys, failures and count of finished
    images in ``result``; the records of the finished ones."""
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
    return ok



# --- a dataset ---------------------------------------------------------------------------------------------


def _calibrate(
    pipeline: Pipeline, calibration: Category, profile: Profile | None, out: Path, settings: EvalSettings, hooks: ProgressHooks,
    executor: Executor | None = None,
) -> tuple[list[float], list[ImageFailure]]:
    """Segment the calibration images (resuming; all of them: ``--limit`` bounded them when they
    were drawn): their raw image scores and failures (keys prefixed with the calibration category's name)."""
    if hooks.on_category:
        hooks.on_category(calibration.name, len(calibration.test))
    on_image = (lambda key, status: hooks.on_image(calibration.name, key, status)) if hooks.on_image else None
    done = evaluate_category(
        pipeline, calibration, profile, out, replace(settings, limit=None), on_image=on_image, metrics=False, executor=executor
    )
    scores = raw_scores(ResultsLog(predictions_path(out, calibration.name)).read(), done.keys)
    failures = [replace(f, key=f"{calibration.name}/{f.key}") for f in done.failures]
    return scores, failures


def measure_dataset(
    dataset: str | DatasetBase, root: str | Path | None, out_dir: str | Path, pipeline: Pipeline,
    settings: EvalSettings | None = None, *, stage1: Stage1Options | None = None, stage1_models: Stage1Models | None = None,
    categories: Sequence[str] | None = None, profiles_dir: str | Path | None = None, restart: bool = False,
    progress: ProgressHooks | None = None, extra_notes: Sequence[str] = (), executor: Executor | None = None,
) -> DatasetResult:
    """Evaluate ``pipeline`` on the categories of a dataset: predictions and metrics (the tables
    and the report are :func:`iapas.evaluation.run.evaluate_dataset`'s).

    ``dataset`` is a registry name (with ``root``) or a loader. Profiles come from
    ``profiles_dir`` (default ``OUT/profiles``) or are made by stage 1 with ``stage1`` (see
    :func:`~iapas.evaluation.profiles.get_profile`). Every profile is resolved and every
    signature checked before the first image is segmented, so a conflicting folder is refused
    at once. A category that cannot be evaluated (no references for stage 1, no test image) is
    recorded with its error and the others go on. A full disk (:mod:`iapas.core.storage`) stops the
    run: the category being segmented and those after it are recorded as not evaluated, the tables
    are written when there is room for them, and ``stopped`` says why. ``executor``: where the
    images run (:mod:`iapas.engine`; default: this machine's threads).
    """
    from iapas.evaluation.plan import run_notes
    settings = settings or EvalSettings()
    hooks = progress or ProgressHooks()
    loader = get_dataset(dataset, root) if isinstance(dataset, str) else dataset
    selection = select_categories(loader, categories, settings.protocol)  # refuses an unknown name in one line
    out = _open_folder(Path(out_dir), restart)
    profiles = Path(profiles_dir) if profiles_dir is not None else out / PROFILES_DIR

    run_models = RunModels.loaded(pipeline)
    models = models_signature(pipeline.config, run_models, evaluation=True)  # the report's models
    signature = run_signature(loader.name, settings, pipeline.config, run_models)
    run_file = out / RUN_FILE
    check_existing_run(out, signature)
    previous = read_run(run_file) or {}
    category_sigs: dict[str, Any] = dict(previous.get("categories", {})) if previous else {}
    created = previous.get("created") if previous else None
    created = created or datetime.now(timezone.utc).isoformat(timespec="seconds")

    # pass 1: categories, profiles, signatures
    prepared, product_notes = _prepare_categories(
        loader, selection, pipeline, out, profiles, settings, stage1, stage1_models, hooks, category_sigs
    )
    content = {
        "iapas_version": __version__, "created": created, "dataset": loader.name, "root": str(loader.root), "signature": signature,
        "settings": settings.to_dict(), "stage1": asdict(stage1) if stage1 is not None else None, "profiles_dir": str(profiles),
        "categories": category_sigs,
    }
    stopped = write_run_file(run_file, json_safe(content), default=str)

    # pass 2: stage 2 and metrics
    results, stopped = _segment_categories(prepared, pipeline, out, settings, hooks, executor, stopped)
    notes = run_notes(settings, [*extra_notes, *product_notes], stopped)
    return DatasetResult(
        dataset=loader.name, title=loader.title, root=str(loader.root), out_dir=out, settings=settings, categories=results,
        models={**models, "stage1": (stage1.settings(models["detector"]) if stage1 is not None else None)},
        notes=notes, created=created, stopped=stopped,
    )


def _open_folder(out: Path, restart: bool) -> Path:
    """The evaluation folder, made; a killed run's temporary files removed, and with ``restart``
    the results too."""
    out.mkdir(parents=True, exist_ok=True)
    removed = clean_stale_temp_files(out)  # what a killed run was writing
    if removed:
        logger.info("removed %d half-written temporary file(s) of an interrupted run in %s", removed, out)
    if restart:
        discard_results(out)
    return out


def _prepare_categories(
    loader: DatasetBase, selection: dict[str, Any], pipeline: Pipeline, out: Path, profiles: Path, settings: EvalSettings,
    stage1: Stage1Options | None, stage1_models: Stage1Models | None, hooks: ProgressHooks, category_sigs: dict[str, Any],
) -> tuple[list[Any], list[str]]:
    """Pass 1 of :func:`measure_dataset`: each category's plan and profile, its signature checked
    against ``category_sigs`` (updated) and the results on disk: what pass 2 segments (or the
    categories' results with their errors), and the notes of categories scored per part."""
    if stage1 is not None and stage1_models is None:
        stage1_models = Stage1Models(stage1, pipeline.detector)
    prepared: list[tuple[Category, Profile | None, ProfileRecord, Category | None] | CategoryResult] = []
    product_notes: list[str] = []  # notes of categories scored per part: said once
    for name, parts in selection.items():
        category, calibration = plan_category(loader, name, settings, parts)
        found = _category_profile(pipeline, category, profiles, settings, stage1, stage1_models, hooks)
        if isinstance(found, CategoryResult):
            prepared.append(found)
            continue
        profile, record = found
        sig = category_signature(pipeline, profile, settings)
        if category.split_parts:  # e.g. KSDD1's folders under the paper protocol: one profile, scored per part
            product_notes.extend(f"{name}: {note}" for note in category.notes)
        for part in [*category.parts(), *([calibration] if calibration is not None else [])]:
            old = category_sigs.get(part.name)
            if old is not None and old != sig and has_predictions(out, part.name):
                changed = differences(old, sig)
                raise RunConflictError(
                    f"{out}: category {part.name} has results made with another profile or setting ({'; '.join(changed)}); "
                    "use another --out folder, or --restart to discard them"
                )
            category_sigs[part.name] = sig
            if part is not calibration:
                prepared.append((part, profile, record, calibration))
    return prepared, product_notes


def _category_profile(
    pipeline: Pipeline, category: Category, profiles: Path, settings: EvalSettings, stage1: Stage1Options | None,
    stage1_models: Stage1Models | None, hooks: ProgressHooks,
) -> tuple[Profile | None, ProfileRecord] | CategoryResult:
    """The category's profile (:func:`get_profile`) and its record, or the category's result with
    the error when it has none or stage 2 cannot read its caption."""
    from iapas.prompts.stage1 import Stage1Error
    from iapas.product.profile import ProfileError

    name = category.name
    path = profile_path(profiles, name)
    existed = path.exists()
    on_stage1 = (lambda step, done, total, _n=name: hooks.on_stage1(_n, step, done, total)) if hooks.on_stage1 else None
    try:
        profile = get_profile(category, profiles, stage1, mode=settings.mode, models=stage1_models, progress=on_stage1)
    except (Stage1Error, ProfileError, ImageReadError, FileNotFoundError, ModelOutputError) as exc:
        logger.error("%s: %s", name, exc)
        return CategoryResult(name=name, error=f"profile: {exc}", notes=list(category.notes), n_references=len(category.references))
    record = ProfileRecord.of(profile, path if profile is not None else None, "none" if profile is None else ("file" if existed else "stage1"))
    check = getattr(stage2_pipeline(pipeline, settings), "check", None)
    try:
        if check is not None:
            check(stage2_profile(profile, settings))
    except ValueError as exc:
        logger.error("%s: %s", name, exc)
        return CategoryResult(name=name, error=str(exc), profile=record, notes=list(category.notes), n_references=len(category.references))
    return profile, record


def _segment_categories(
    prepared: list[Any], pipeline: Pipeline, out: Path, settings: EvalSettings, hooks: ProgressHooks,
    executor: Executor | None, stopped: str | None,
) -> tuple[list[CategoryResult], str | None]:
    """Stage 2 and the metrics of every prepared category (each product's calibration images
    first, once): the results, and why the run stopped early (a full disk) or None."""
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
        try:
            result = _segment_category(category, profile, calibration, calibrated, pipeline, out, settings, hooks, executor)
        except DiskFullError as exc:
            stopped = exc.strerror or str(exc)
            result = CategoryResult(name=category.name, n_test=n, error="not evaluated: the run stopped early",
                                    notes=list(category.notes), n_references=len(category.references))
        result.profile = record
        results.append(result)
    return results, stopped


def _segment_category(
    category: Category, profile: Profile | None, calibration: Category | None, calibrated: dict[str, list[float]],
    pipeline: Pipeline, out: Path, settings: EvalSettings, hooks: ProgressHooks, executor: Executor | None,
) -> CategoryResult:
    """One category's result, with the OK/NG threshold calibrated on its product's calibration
    images (segmented here the first time, their scores kept in ``calibrated``)."""
    n = len(limit_samples(category.test, settings.limit, settings.seed))
    on_image = (lambda key, status, _n=category.name: hooks.on_image(_n, key, status)) if hooks.on_image else None
    calibration_failures: list[ImageFailure] = []
    if calibration is not None and calibration.name not in calibrated:  # once per product
        calibrated[calibration.name], calibration_failures = _calibrate(
            pipeline, calibration, profile, out, settings, hooks, executor
        )
    if hooks.on_category:  # after the calibration: the step's rate and ETA count from its own start
        hooks.on_category(category.name, n)
    result = evaluate_category(pipeline, category, profile, out, settings, on_image=on_image, executor=executor)
    if calibration is not None and result.keys:
        records = ResultsLog(predictions_path(out, category.name)).read()
        result.decision = threshold_evidence(
            calibrated[calibration.name], raw_scores(records, result.keys, 0), raw_scores(records, result.keys, 1),
            settings.false_alarm_rate,
        )
        result.decision.calibration_set = calibration.name
    result.failures += calibration_failures
    return result
