"""``iapas segment``: stage 2 on image files."""

from __future__ import annotations

import logging
from pathlib import Path

import typer

from iapas.cli.common import (
    QuietOption, ShowDroppedOption, VerboseOption, console, fail, hold_output_lock, print_error, print_stopped, setup_logging,
)
from iapas.cli.engine_options import CpusPerWorkerOpt, EngineOpt, GpusPerWorkerOpt, RayAddressOpt, WorkersOpt, executor_for
from iapas.core.images import DEFAULT_MAX_PIXELS
from iapas.models.detector import DEFAULT_DETECTOR
from iapas.models.registry import help_table
from iapas.models.segmenter import DEFAULT_SEGMENTER
from iapas.product.decision import NO_DECISION_MASK_LEVEL


def register(app: typer.Typer) -> None:
    app.command("segment", epilog=help_table())(segment_cmd)


def segment_cmd(
    ctx: typer.Context,
    images: list[str] = typer.Argument(..., help="Image files, folders (searched recursively) or glob patterns ('parts/*.png')."),
    profile_path: Path = typer.Option(
        None, "--profile", "-p", help="Category profile from 'iapas profile' (YAML/JSON). Required in iapas mode."
    ),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder: maps/, masks/, overlays/, results.jsonl, run.json."),
    detector: str = typer.Option(
        DEFAULT_DETECTOR, help="Grounding DINO, MM-Grounding-DINO, OWLv2 or SAM 3 (which segments too): a model name (table below), a hub id or a local folder."
    ),
    segmenter: str = typer.Option(
        DEFAULT_SEGMENTER, help="SAM, SAM-HQ or SAM 2.1: a model name (table below), a hub id or a local folder (unused with --detector sam3)."
    ),
    device: str = typer.Option("auto", help="cpu, cuda, cuda:N, mps, or auto (GPU when there is one)."),
    dtype: str = typer.Option("auto", help="float32, float16, bfloat16, or auto (float16 on GPU, float32 on CPU)."),
    mode: str = typer.Option("iapas", help="iapas: the profile's caption and the size filter; base: the paper's baseline ('defect . abnormal .', no size filter)."),
    threshold: float = typer.Option(
        None, min=0.0,
        help="Manual OK/NG threshold instead of the profile's calibrated one: NG when the score is above it (recorded as rule 'manual'). "
        f"Without a decision at all, masks/ is the map >= {NO_DECISION_MASK_LEVEL:g}.",
    ),
    size_threshold: float = typer.Option(None, help="Override the profile's size threshold (drop boxes >= this fraction of the object's area)."),
    box_threshold: float = typer.Option(0.1, help="Detector box threshold (the paper's 0.1)."),
    text_threshold: float = typer.Option(0.1, help="Detector text threshold (the paper's 0.1)."),
    batch_size: int = typer.Option(1, min=1, help="Images per model forward. Larger batches use the GPU better."),
    fuse_object_detection: bool = typer.Option(
        False,
        "--fuse-object-detection",
        help="Take the object box from the caption's forward (the caption ends with the object tag) and save one detector forward per image. Not the paper's method: object scores come from the object tag's tokens inside the longer caption.",
    ),
    compile_models: bool = typer.Option(
        False,
        "--compile",
        help="torch.compile both models: each new image size first pays a compilation (tens of seconds to minutes), then forwards run faster, mostly on a GPU. Outputs equal the uncompiled ones to float rounding, not bitwise.",
    ),
    overlay: bool = typer.Option(True, "--overlay/--no-overlay", help="Write colour overlays with the boxes."),
    show_dropped: bool = ShowDroppedOption,
    max_pixels: int = typer.Option(DEFAULT_MAX_PIXELS, min=1, help="Refuse images with more pixels than this (decompression-bomb guard)."),
    restart: bool = typer.Option(False, "--restart", help="Discard the results already in --out instead of resuming."),
    engine: str = EngineOpt,
    ray_address: str = RayAddressOpt,
    workers: int = WorkersOpt,
    gpus_per_worker: float = GpusPerWorkerOpt,
    cpus_per_worker: float = CpusPerWorkerOpt,
    verbose: bool = VerboseOption,
    quiet: bool = QuietOption,
) -> None:
    """Segment anomalies on images with a category profile.

    Writes, per image, a 16-bit PNG of the anomaly map (pixel value / 10000 = score), a binary mask
    PNG, a colour overlay, and one JSON line in OUT/results.jsonl (boxes kept and dropped with
    phrases and scores, object box, image score, timings). With a calibrated profile ('iapas
    calibrate') or --threshold, every image gets an OK/NG decision and the mask is the decision
    mask (empty exactly when OK). A run that stops part way resumes where it left off when run
    again; a full disk stops it early with the command to resume. The exit code is 1 if any
    image failed or the run stopped early. A second run into the same --out while one is
    running is refused. --engine ray runs the images on a Ray Data pool of workers (this
    machine, or a cluster with --ray-address), with the same outputs.

    Example: iapas segment parts/ --profile bottle.yaml --out results/
    """
    setup_logging(verbose, quiet)
    from iapas.data.search import mask_rule, search_images
    from iapas.core.images import show_path
    from iapas.models.loading import ModelLoadError
    from iapas.pipeline.stage2 import Pipeline, PipelineConfig
    from iapas.product.profile import Profile, ProfileError
    from iapas.product.decision import Decision, mask_level
    from iapas.engine import EngineError
    from iapas.engine.runner import RunConflictError, check_models, run_segmentation, run_signature

    if threshold is not None:  # the rule a profile's threshold follows: finite and >= 0
        from iapas.core.fields import FieldError, number

        try:
            threshold = number(threshold, "--threshold", low=0.0)
        except FieldError as exc:
            raise fail(str(exc)) from None
    profile = None
    if profile_path is not None:
        try:
            profile = Profile.load(profile_path)
        except ProfileError as exc:
            raise fail(str(exc)) from None
    elif mode == "iapas":
        raise fail("--profile is required in iapas mode (make one with 'iapas profile'), or use --mode base")
    if mode == "base":
        ignored = [name for name, used in (("--profile", profile_path is not None), ("--size-threshold", size_threshold is not None),
                                           ("--fuse-object-detection", fuse_object_detection)) if used]
        if ignored:
            console.print(f"note: --mode base uses the fixed caption and no size filter; ignoring {', '.join(ignored)}")
        profile, size_threshold, fuse_object_detection = None, None, False
    executor = executor_for(engine, out, ray_address, workers, gpus_per_worker, cpus_per_worker)
    blocking = next((q for q in (out, *out.parents) if q.exists() and not q.is_dir()), None)
    if blocking is not None:  # fail now, not after loading the models
        where = "is a file" if blocking == out else f"is inside {blocking}, which is a file"
        raise fail(f"--out {out} {where}; it must be a folder (new or from an earlier run)")
    search = search_images(images, exclude=out, keep_missing=True)
    found, problems = search.found, list(search.problems)
    inside_out = ", ".join(search.excluded_inputs)
    if search.excluded_inputs and found:
        problems += [f"{item}: left out: its images are inside --out {out} (a run never reads its own output folder)"
                     for item in search.excluded_inputs]
    for problem in problems:
        print_error(problem)
    if not any(p.exists() or p.is_symlink() for p, _ in found):
        for p, _ in found:  # only missing files: nothing to load models for
            print_error(f"{show_path(p)}: file not found")
        if inside_out:
            raise fail(f"no images to segment: the images of {inside_out} were left out because they are inside --out {out} "
                       "(a run never reads its own output folder); give an --out folder outside the inputs")
        raise fail("no images to segment")
    decision = profile.decision if profile is not None else None
    if threshold is not None:  # a manual override keeps the calibrated minimum defect area and score range
        decision = Decision.manual(threshold, decision)
    paths = [p for p, _ in found]
    roots = [root for _, root in found]
    named_masks = [p for p in paths if mask_rule(p)]
    if named_masks and len(named_masks) < len(paths):  # as a shell expands 'kos01/*'
        logging.getLogger(__name__).warning(
            "taking %d file(s) named like ground-truth masks (e.g. %s) because they were named one by one; "
            "give the folder or a quoted pattern ('dir/*') to have masks left out", len(named_masks), named_masks[0])
    if profile is not None:  # a caption the detector cannot read: say so before loading the models
        from iapas.models.detector import check_caption_length

        try:
            check_caption_length(profile.caption, detector)
        except ValueError as exc:
            raise fail(str(exc)) from None
    if not restart:  # results of other models: refused before loading these
        try:
            check_models(out, detector, segmenter)
        except RunConflictError as exc:
            raise fail(str(exc)) from None
    hold_output_lock(ctx, out, "segment")  # before loading the models: a second run is refused at once
    try:
        config = PipelineConfig(
            detector=detector,
            segmenter=segmenter,
            device=device,
            dtype=dtype,
            mode=mode,  # type: ignore[arg-type]
            box_threshold=box_threshold,
            text_threshold=text_threshold,
            size_threshold=size_threshold,
            fuse_object_detection=fuse_object_detection,
            compile=compile_models,
        )
        with console.status("loading models"):
            pipeline = Pipeline.from_config(config)
    except (ModelLoadError, ValueError) as exc:
        raise fail(str(exc)) from None
    if decision is not None and decision.rule != "manual":
        warn_if_other_settings(decision, run_signature(pipeline, profile))

    from iapas.cli.progress import RunProgress

    def columns() -> tuple:
        from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        return TextColumn("segmenting"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn()

    progress = RunProgress(console, quiet, columns)  # rich's bar on a terminal, log lines elsewhere
    with progress:
        task = progress.add_task("segmenting", total=len(paths))
        try:
            summary = run_segmentation(
                paths, pipeline, profile, out,
                threshold=mask_level(decision), decision=decision, batch_size=batch_size,
                overlay=overlay, show_dropped=show_dropped, max_pixels=max_pixels, restart=restart,
                on_image=lambda key, status: progress.advance(task, status), roots=roots, executor=executor,
            )
        except (RunConflictError, EngineError, OSError, ValueError) as exc:
            raise fail(str(exc)) from None
    print_summary(summary, out, len(problems), decision)
    failed = len(summary.failed) + len(problems)
    if summary.interrupted:
        raise typer.Exit(130)
    if failed or summary.stopped:
        raise typer.Exit(1)


def warn_if_other_settings(decision: "Decision", signature: dict) -> None:  # noqa: F821
    """The threshold holds for the models and settings it was calibrated with: say when they
    differ (models by fingerprint, whatever their paths; see :mod:`iapas.models.fingerprint`)."""
    from rich.markup import escape

    from iapas.models.fingerprint import signature_diff

    if not decision.signature:
        return
    diff = signature_diff(decision.signature, signature)
    if diff:
        console.print(
            f"[yellow]warning[/]: the profile's threshold was calibrated on results {escape(diff.describe())}; "
            "its false-alarm rate does not hold for this run: run 'iapas calibrate' again with these settings",
            soft_wrap=True, highlight=False,
        )


def verdict_counts(out: Path, keys: list[str]) -> dict[str, int]:
    """OK and NG among this run's images, from OUT/results.jsonl."""
    from iapas.engine.runner import RESULTS_FILE, ResultsLog

    records = ResultsLog(out / RESULTS_FILE).read()
    counts = {"OK": 0, "NG": 0}
    for key in keys:
        verdict = records.get(key, {}).get("decision")
        if verdict in counts:
            counts[verdict] += 1
    return counts


def print_summary(summary: "RunSummary", out: Path, missing: int, decision: "Decision | None" = None) -> None:  # noqa: F821
    from rich.table import Table

    table = Table(title="iapas segment", show_header=False)
    table.add_row("images", str(summary.total))
    table.add_row("segmented now", str(summary.done))
    table.add_row("already done (resumed)", str(summary.skipped))
    table.add_row("failed", str(len(summary.failed) + missing))
    if summary.stopped:
        table.add_row("not segmented (stopped early)", str(summary.not_run))
    if summary.done:
        table.add_row("seconds per image", f"{summary.seconds / summary.done:.3f}")
    top = sorted(summary.scores, key=lambda kv: -kv[1])[:5]
    if top:
        table.add_row("highest image scores", ", ".join(f"{k} {v:.3f}" for k, v in top))
    if decision is not None:
        counts = verdict_counts(out, [k for k, _ in summary.scores])
        rule = "manual --threshold" if decision.rule == "manual" else f"{decision.rule}, profile"
        table.add_row("OK / NG", f"{counts['OK']} / {counts['NG']} (threshold {decision.threshold:g}, {rule})")
    table.add_row("results", str(out / "results.jsonl"))
    console.print(table)
    if decision is None:
        console.print(
            "no OK/NG decision: the profile has no calibrated threshold; make one with "
            "'iapas calibrate --profile P --normal NORMAL_IMAGES --out DIR' (or give --threshold)",
            soft_wrap=True, highlight=False,
        )
    if summary.failed or missing:
        console.print(f"[bold red]{len(summary.failed) + missing} input(s) failed[/]; see the errors above and results.jsonl")
    if summary.interrupted:
        console.print("[yellow]interrupted[/]: run the same command again to resume")
    if summary.stopped:
        print_stopped(summary.stopped, f"{summary.not_run} image(s) not segmented yet")
