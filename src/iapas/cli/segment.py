"""``iapas segment``: stage 2 on image files."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from iapas.cli.common import console, fail, hold_output_lock, load_pipeline, print_error, print_stopped, setup_logging
from iapas.cli.engine_options import engine_executor
from iapas.cli.options import shared
from iapas.models.registry import help_table
from iapas.product.decision import NO_DECISION_MASK_LEVEL, mask_level
from iapas.workflows.options import ENGINE, LOGGING, STAGE2, Settings

if TYPE_CHECKING:
    from iapas.engine.base import RunSummary
    from iapas.product.decision import Decision


def register(app: typer.Typer) -> None:
    app.command("segment", epilog=help_table())(segment_cmd)


@shared(*STAGE2, "box_threshold", "text_threshold", "size_threshold", "batch_size", "fuse_object_detection",
        "compile_models", "show_dropped", "max_pixels", "restart", *ENGINE, *LOGGING)
def segment_cmd(
    ctx: typer.Context,
    images: list[str] = typer.Argument(..., help="Image files, folders (searched recursively) or glob patterns ('parts/*.png')."),
    profile_path: Path = typer.Option(
        None, "--profile", "-p", help="Category profile from 'iapas profile' (YAML/JSON). Required in iapas mode."
    ),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder: maps/, masks/, overlays/, results.jsonl, run.json."),
    mode: str = typer.Option("iapas", help="iapas: the profile's caption and the size filter; base: the paper's baseline ('defect . abnormal .', no size filter)."),
    threshold: float = typer.Option(
        None, min=0.0,
        help="Manual OK/NG threshold instead of the profile's calibrated one: NG when the score is above it (recorded as rule 'manual'). "
        f"Without a decision at all, masks/ is the map >= {NO_DECISION_MASK_LEVEL:g}.",
    ),
    overlay: bool = typer.Option(True, "--overlay/--no-overlay", help="Write colour overlays with the boxes."),
    settings: Settings = None,  # type: ignore[assignment]
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
    setup_logging(settings.verbose, settings.quiet)
    from iapas.engine import EngineError, runfolder, runner, signature  # here, not at import: `iapas --help` stays light
    from iapas.workflows import segment as flow

    try:
        threshold = flow.manual_threshold(threshold)
        profile = flow.load_profile(profile_path, mode)
    except flow.SegmentError as exc:
        raise fail(str(exc)) from None
    profile, config = _stage2(settings, mode, profile_path, profile)
    executor = engine_executor(settings, out)
    try:
        flow.check_out_folder(out)
        inputs = flow.find_inputs(images, out)
        for problem in inputs.problems + inputs.missing:
            print_error(problem)
        if inputs.empty:
            raise flow.SegmentError(inputs.why_empty(out))
        flow.check_before_loading(profile, settings.detector, settings.segmenter, out, settings.restart)
    except flow.SegmentError as exc:
        raise fail(str(exc)) from None
    decision = flow.decision_for(profile, threshold)
    hold_output_lock(ctx, out, "segment")  # before loading the models: a second run is refused at once
    pipeline = load_pipeline(config)
    warn_if_other_settings(flow.other_settings(decision, signature.run_signature(pipeline, profile)))
    progress, task = _progress(settings.quiet, len(inputs.paths))
    with progress:
        try:
            summary = runner.run_segmentation(
                inputs.paths, pipeline, profile, out,
                threshold=mask_level(decision), decision=decision,
                batch_size=settings.batch_size, overlay=overlay, show_dropped=settings.show_dropped,
                max_pixels=settings.max_pixels, restart=settings.restart, roots=inputs.roots, executor=executor,
                on_image=lambda key, status: progress.advance(task, status),
            )
        except (runfolder.RunConflictError, EngineError, OSError, ValueError) as exc:
            raise fail(str(exc)) from None
    print_summary(summary, out, len(inputs.problems), decision, profile_given=profile is not None)
    if summary.interrupted:
        raise typer.Exit(130)
    if summary.failed or inputs.problems or summary.stopped:
        raise typer.Exit(1)


def _stage2(settings: Any, mode: str, profile_path: Path | None, profile: Any) -> tuple[Any, Any]:
    """The run's profile (none in base mode, which says what it ignores) and stage-2 configuration,
    checked before the output folder is taken: a bad value is one line and leaves nothing behind."""
    size_threshold, fuse = settings.size_threshold, settings.fuse_object_detection
    if mode == "base":
        from iapas.workflows.segment import base_mode_ignores

        ignored = base_mode_ignores(profile_path, size_threshold, fuse)
        if ignored:
            console.print(f"note: --mode base uses the fixed caption and no size filter; ignoring {', '.join(ignored)}")
        profile, size_threshold, fuse = None, None, False
    try:
        return profile, settings.pipeline_config(mode=mode, size_threshold=size_threshold, fuse_object_detection=fuse)
    except ValueError as exc:
        raise fail(str(exc)) from None


def _progress(quiet: bool, total: int) -> tuple:
    """Rich's bar on a terminal, log lines elsewhere, and its task."""
    from iapas.cli.progress import RunProgress

    def columns() -> tuple:
        from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        return TextColumn("segmenting"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn()

    progress = RunProgress(console, quiet, columns)
    return progress, progress.add_task("segmenting", total=total)


def warn_if_other_settings(diff: str | None) -> None:
    """The threshold holds for the models and settings it was calibrated with: say when they differ."""
    from rich.markup import escape

    if diff:
        console.print(
            f"[yellow]warning[/]: the profile's threshold was calibrated on results {escape(diff)}; "
            "its false-alarm rate does not hold for this run: run 'iapas calibrate' again with these settings",
            soft_wrap=True, highlight=False,
        )


def print_summary(summary: RunSummary, out: Path, missing: int, decision: Decision | None = None,
                  profile_given: bool = True) -> None:
    from rich.table import Table

    from iapas.workflows.segment import verdict_counts

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
            "'iapas calibrate --profile P --normal NORMAL_IMAGES --out DIR' (or give --threshold)"
            if profile_given else "no OK/NG decision: --mode base has no profile to calibrate; give --threshold",
            soft_wrap=True, highlight=False,
        )
    if summary.failed or missing:
        console.print(f"[bold red]{len(summary.failed) + missing} input(s) failed[/]; see the errors above and results.jsonl")
    if summary.interrupted:
        console.print("[yellow]interrupted[/]: run the same command again to resume")
    if summary.stopped:
        print_stopped(summary.stopped, f"{summary.not_run} image(s) not segmented yet")
