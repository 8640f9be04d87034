"""``iapas segment``: stage 2 on image files."""

from __future__ import annotations

from pathlib import Path

import typer

from iapas.cli.common import QuietOption, VerboseOption, console, fail, print_error, setup_logging
from iapas.io import DEFAULT_MAX_PIXELS
from iapas.models.detector import DEFAULT_DETECTOR
from iapas.models.segmenter import DEFAULT_SEGMENTER


def register(app: typer.Typer) -> None:
    app.command("segment")(segment_cmd)


def segment_cmd(
    images: list[str] = typer.Argument(..., help="Image files, folders (searched recursively) or glob patterns ('parts/*.png')."),
    profile_path: Path = typer.Option(
        None, "--profile", "-p", help="Category profile from 'iapas profile' (YAML/JSON). Required in iapas mode."
    ),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder: maps/, masks/, overlays/, results.jsonl, run.json."),
    detector: str = typer.Option(
        DEFAULT_DETECTOR, help="Grounding DINO: hub id or local folder ('tiny' and 'base' are short for the IDEA-Research models)."
    ),
    segmenter: str = typer.Option(
        DEFAULT_SEGMENTER, help="SAM: hub id or local folder ('huge', 'large', 'base' are short for facebook/sam-vit-*)."
    ),
    device: str = typer.Option("auto", help="cpu, cuda, cuda:N, mps, or auto (GPU when there is one)."),
    dtype: str = typer.Option("auto", help="float32, float16, bfloat16, or auto (float16 on GPU, float32 on CPU)."),
    mode: str = typer.Option("iapas", help="iapas: the profile's caption and the size filter; base: the paper's baseline ('defect . abnormal .', no size filter)."),
    threshold: float = typer.Option(0.3, help="Anomaly score at which a pixel counts as anomalous in masks/ (map = sum of box confidences)."),
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
    max_pixels: int = typer.Option(DEFAULT_MAX_PIXELS, help="Refuse images with more pixels than this (decompression-bomb guard)."),
    restart: bool = typer.Option(False, "--restart", help="Discard the results already in --out instead of resuming."),
    verbose: bool = VerboseOption,
    quiet: bool = QuietOption,
) -> None:
    """Segment anomalies on images with a category profile.

    Writes, per image, a 16-bit PNG of the anomaly map (pixel value / 10000 = score), a binary mask
    PNG at --threshold, a colour overlay, and one JSON line in OUT/results.jsonl (boxes kept and
    dropped with phrases and scores, object box, image score, timings). A run that stops part way
    resumes where it left off when run again. The exit code is 1 if any image failed.

    Example: iapas segment parts/ --profile bottle.yaml --out results/
    """
    setup_logging(verbose, quiet)
    from iapas.io import find_images_with_roots
    from iapas.models.loading import ModelLoadError
    from iapas.pipeline import Pipeline, PipelineConfig
    from iapas.profile import Profile, ProfileError
    from iapas.runner import RunConflictError, run_segmentation

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
    blocking = next((q for q in (out, *out.parents) if q.exists() and not q.is_dir()), None)
    if blocking is not None:  # fail now, not after loading the models
        where = "is a file" if blocking == out else f"is inside {blocking}, which is a file"
        raise fail(f"--out {out} {where}; it must be a folder (new or from an earlier run)")
    found, problems = find_images_with_roots(images, exclude=out, keep_missing=True)
    for problem in problems:
        print_error(problem)
    if not any(p.exists() or p.is_symlink() for p, _ in found):
        for p, _ in found:  # only missing files: nothing to load models for
            print_error(f"{p}: file not found")
        raise fail("no images to segment")
    paths = [p for p, _ in found]
    roots = [root for _, root in found]
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

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    progress = Progress(
        TextColumn("segmenting"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn(),
        console=console, disable=quiet, transient=False,
    )
    with progress:
        task = progress.add_task("segment", total=len(paths))
        try:
            summary = run_segmentation(
                paths, pipeline, profile, out,
                threshold=threshold, batch_size=batch_size, overlay=overlay, max_pixels=max_pixels, restart=restart,
                on_image=lambda key, status: progress.advance(task), roots=roots,
            )
        except (RunConflictError, OSError, ValueError) as exc:
            raise fail(str(exc)) from None
    print_summary(summary, out, len(problems))
    failed = len(summary.failed) + len(problems)
    if summary.interrupted:
        raise typer.Exit(130)
    if failed:
        raise typer.Exit(1)


def print_summary(summary: "RunSummary", out: Path, missing: int) -> None:  # noqa: F821
    from rich.table import Table

    table = Table(title="iapas segment", show_header=False)
    table.add_row("images", str(summary.total))
    table.add_row("segmented now", str(summary.done))
    table.add_row("already done (resumed)", str(summary.skipped))
    table.add_row("failed", str(len(summary.failed) + missing))
    if summary.done:
        table.add_row("seconds per image", f"{summary.seconds / summary.done:.3f}")
    top = sorted(summary.scores, key=lambda kv: -kv[1])[:5]
    if top:
        table.add_row("highest image scores", ", ".join(f"{k} {v:.3f}" for k, v in top))
    table.add_row("results", str(out / "results.jsonl"))
    console.print(table)
    if summary.failed or missing:
        console.print(f"[bold red]{len(summary.failed) + missing} input(s) failed[/]; see the errors above and results.jsonl")
    if summary.interrupted:
        console.print("[yellow]interrupted[/]: run the same command again to resume")
