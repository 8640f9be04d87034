"""``iapas calibrate``: an OK/NG threshold for a profile from normal images."""

from __future__ import annotations

from pathlib import Path

import typer

from iapas.cli.common import QuietOption, VerboseOption, console, fail, hold_output_lock, print_error, setup_logging
from iapas.core.images import DEFAULT_MAX_PIXELS
from iapas.models.detector import DEFAULT_DETECTOR
from iapas.models.registry import help_table
from iapas.models.segmenter import DEFAULT_SEGMENTER

ANOMALOUS_DIR = "anomalous"


def register(app: typer.Typer) -> None:
    app.command("calibrate", epilog=help_table())(calibrate_cmd)


def calibrate_cmd(
    ctx: typer.Context,
    profile_path: Path = typer.Option(..., "--profile", "-p", help="The profile to calibrate; its 'decision' section is (re)written."),
    normal: list[str] = typer.Option(
        ..., "--normal", help="Normal images (files, folders, globs), not the stage-1 references. Repeatable."
    ),
    out: Path = typer.Option(..., "--out", "-o", help="Folder for the stage 2 results of the calibration images (like 'iapas segment')."),
    false_alarm_rate: float = typer.Option(
        0.01, "--false-alarm-rate", help="Target rate of NG on normal parts (needs ceil((1-r)/r) images: 99 for 0.01)."
    ),
    min_defect_area: int = typer.Option(
        0, "--min-defect-area", min=0, help="Pixels a region above the threshold needs to count as a defect."
    ),
    anomalous: list[str] = typer.Option(
        None, "--anomalous", help="Images with defects (optional): report the F1 threshold and detection rates."
    ),
    masks: Path = typer.Option(
        None, "--masks", help="Masks of the --anomalous images, named STEM_mask, STEM or STEM_label (any image suffix); an empty mask means normal."
    ),
    rule: str = typer.Option("conformal", "--rule", help="conformal (normal images only) or f1 (needs --anomalous)."),
    detector: str = typer.Option(DEFAULT_DETECTOR, help="Grounding DINO, MM-Grounding-DINO, OWLv2 or SAM 3 (which segments too): a model name (table below), a hub id or a local folder."),
    segmenter: str = typer.Option(DEFAULT_SEGMENTER, help="SAM, SAM-HQ or SAM 2.1: a model name (table below), a hub id or a local folder (unused with --detector sam3)."),
    device: str = typer.Option("auto", help="cpu, cuda, cuda:N, mps, or auto."),
    dtype: str = typer.Option("auto", help="float32, float16, bfloat16, or auto."),
    batch_size: int = typer.Option(1, min=1, help="Images per model forward."),
    fuse_object_detection: bool = typer.Option(
        False, "--fuse-object-detection", help="As for 'iapas segment' (not the paper's method)."
    ),
    max_pixels: int = typer.Option(DEFAULT_MAX_PIXELS, help="Refuse images with more pixels than this."),
    restart: bool = typer.Option(
        False, "--restart", help="Discard the stage 2 results already in --out (e.g. made with other models) and segment again."
    ),
    verbose: bool = VerboseOption,
    quiet: bool = QuietOption,
) -> None:
    """Calibrate the profile's OK/NG threshold on normal images.

    Runs stage 2 on the --normal images (kept in OUT like a 'segment' run: calibrating again
    with more images segments only the new ones) and writes the profile's 'decision' section.
    Rule conformal: with n normal scores the threshold is the k-th smallest, k = ceil((n + 1)
    (1 - rate)); a new normal part is then NG with probability at most the rate. The score of an
    image is the highest level at which a region above it has --min-defect-area pixels. Stage-1
    reference images are refused (compared by content).

    Example: iapas calibrate --profile tile.yaml --normal good/ --false-alarm-rate 0.05 --out cal/
    """
    setup_logging(verbose, quiet)
    from iapas.product.calibration import calibrate, check_finite, check_reference_overlap, stored_scores
    from iapas.product.decision import DecisionError, images_needed
    from iapas.data.search import find_images_with_roots
    from iapas.models.loading import ModelLoadError
    from iapas.core.maps import MAP_MAX
    from iapas.pipeline.stage2 import Pipeline, PipelineConfig
    from iapas.product.profile import Profile, ProfileError
    from iapas.engine.runner import (
        RESULTS_FILE,
        ResultsLog,
        RunConflictError,
        assign_keys,
        run_segmentation,
        run_signature,
    )

    if rule not in ("conformal", "f1"):
        raise fail(f"--rule must be conformal or f1, got {rule!r}")
    if not 0 < false_alarm_rate < 1:
        raise fail(f"--false-alarm-rate must be in (0, 1), got {false_alarm_rate}")
    if rule == "f1" and not anomalous:
        raise fail("--rule f1 needs labelled defective images: give --anomalous DIR")
    if masks is not None and not anomalous:
        raise fail("--masks goes with --anomalous")
    try:
        profile = Profile.load(profile_path)
    except ProfileError as exc:
        raise fail(str(exc)) from None

    found, problems = find_images_with_roots(list(normal), exclude=out)
    for problem in problems:
        print_error(problem)
    paths = [p for p, _ in found]
    needed = images_needed(false_alarm_rate)
    if rule == "conformal" and len(paths) < needed:
        raise fail(
            f"{len(paths)} normal image(s) found; a false-alarm rate of {false_alarm_rate:g} needs at least {needed} "
            "(more normal images, or a higher --false-alarm-rate)"
        )
    check = check_reference_overlap(profile, profile_path, paths)
    if check.overlaps:
        for path, ref in check.overlaps:
            print_error(f"{path}: the same file as the stage-1 reference {ref}")
        raise fail(f"{len(check.overlaps)} calibration image(s) are stage-1 references of {profile_path}; leave them out")
    console.print(f"reference overlap: none ({check.describe()})", soft_wrap=True, highlight=False)
    for path, ref in check.same_name:
        console.print(f"[yellow]warning[/]: {path} has the name of the reference {ref}, which is no longer there to compare")

    defect_found: list[tuple[Path, Path]] = []
    if anomalous:
        defect_found, defect_problems = find_images_with_roots(list(anomalous), exclude=out)
        for problem in defect_problems:
            print_error(problem)
        problems += defect_problems
        if not defect_found:
            raise fail("no --anomalous images found")
    labels: dict[Path, bool] = {}
    if masks is not None:
        labels, mask_problems = _mask_labels([p for p, _ in defect_found], masks)
        for problem in mask_problems:
            print_error(problem)
        problems += mask_problems

    hold_output_lock(ctx, out, "calibrate")  # before loading the models: a second run is refused at once
    try:
        config = PipelineConfig(
            detector=detector, segmenter=segmenter, device=device, dtype=dtype,
            fuse_object_detection=fuse_object_detection,
        )
        with console.status("loading models"):
            pipeline = Pipeline.from_config(config)
    except (ModelLoadError, ValueError) as exc:
        raise fail(str(exc)) from None

    runs = [(out, found)]
    if defect_found:
        runs.append((out / ANOMALOUS_DIR, defect_found))
    failed = len(problems)
    scores: list[dict[str, float]] = []
    for run_out, items in runs:
        run_paths, roots = [p for p, _ in items], [r for _, r in items]
        keys = assign_keys(run_paths, roots)
        try:
            summary = run_segmentation(  # no decision: the records keep the raw scores and maps
                run_paths, pipeline, profile, run_out, batch_size=batch_size, max_pixels=max_pixels, roots=roots,
                restart=restart,
            )
        except (RunConflictError, OSError, ValueError) as exc:
            raise fail(str(exc)) from None
        failed += len(summary.failed)
        if summary.interrupted:
            raise typer.Exit(130)
        records = ResultsLog(run_out / RESULTS_FILE).read()
        key_of = dict(zip(run_paths, keys))
        run_scores = stored_scores(run_out, records, keys, min_defect_area)
        scores.append({str(p): run_scores[key_of[p]] for p in run_paths if key_of[p] in run_scores})

    normal_scores = list(scores[0].values())
    anomalous_scores: list[float] = []
    if defect_found:
        for p, _ in defect_found:
            s = scores[1].get(str(p))
            if s is None or (masks is not None and p not in labels):
                continue
            (anomalous_scores if labels.get(p, True) else normal_scores).append(s)
    try:
        for run_scores in scores:
            check_finite(run_scores)
        decision, results = calibrate(
            normal_scores, anomalous_scores, rate=false_alarm_rate, min_area=min_defect_area, rule=rule,
            signature=run_signature(pipeline, profile),
        )
    except DecisionError as exc:
        raise fail(str(exc)) from None
    if decision.min_defect_area > 1 and decision.threshold >= MAP_MAX:
        console.print(
            f"[yellow]warning[/]: the threshold is at the stored maps' limit ({MAP_MAX}): with --min-defect-area the "
            "scores of hotter images cannot be told apart, so no image can be NG",
            soft_wrap=True, highlight=False,
        )
    profile.decision = decision
    try:
        profile.save(profile_path)
    except (ProfileError, OSError) as exc:
        raise fail(f"{profile_path}: cannot write the profile: {exc}") from None
    _print_results(decision, results, profile_path, len(anomalous_scores))
    if failed:
        console.print(f"[bold red]{failed} input(s) failed[/]; they are not part of the calibration (see above)")
        raise typer.Exit(1)


def _mask_labels(paths: list[Path], masks: Path) -> tuple[dict[Path, bool], list[str]]:
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


def _print_results(decision, results, profile_path: Path, n_anomalous: int) -> None:  # noqa: ANN001
    from rich.table import Table

    def pct(value: float | None) -> str:
        return "-" if value is None else f"{100 * value:.1f}%"

    table = Table(title=f"iapas calibrate: {decision.n_calibration} normal, {n_anomalous} defective image(s)")
    for column in ("rule", "threshold", "false alarms (normal)", "detection (defective)", "F1", "note"):
        table.add_column(column)
    for r in results:
        chosen = " (chosen)" if r.rule == decision.rule else ""
        table.add_row(
            r.rule + chosen, "-" if r.threshold is None else f"{r.threshold:.4f}", pct(r.false_alarm_rate),
            pct(r.detection_rate), "-" if r.f1 is None else f"{r.f1:.3f}", r.note,
        )
    console.print(table)
    console.print(
        f"wrote the decision section of {profile_path}: NG when the score (min defect area "
        f"{decision.min_defect_area} px) is above {decision.threshold:.4f}; 'iapas segment --profile {profile_path}' "
        "now decides OK/NG",
        soft_wrap=True, highlight=False,
    )
