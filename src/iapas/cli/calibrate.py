"""``iapas calibrate``: an OK/NG threshold for a profile from normal images
(the procedure: :mod:`iapas.workflows.calibrate`)."""

from __future__ import annotations

from pathlib import Path

import typer

from iapas.cli.common import console, fail, hold_output_lock, load_pipeline, print_error, setup_logging
from iapas.cli.options import shared
from iapas.models.registry import help_table
from iapas.workflows.options import LOGGING, STAGE2, Settings


def register(app: typer.Typer) -> None:
    app.command("calibrate", epilog=help_table())(calibrate_cmd)


@shared(*STAGE2, "batch_size", "fuse_object_detection", "max_pixels", "restart", *LOGGING, restart={
    "help": "Discard the stage 2 results already in --out (e.g. made with other models) and segment again."})
def calibrate_cmd(
    ctx: typer.Context,
    profile_path: Path = typer.Option(..., "--profile", "-p", help="The profile to calibrate; its 'decision' section is (re)written."),
    normal: list[str] = typer.Option(
        None, "--normal", help="Normal images (files, folders, globs), not the stage-1 references. Repeatable."
    ),
    out: Path = typer.Option(None, "--out", "-o", help="Folder for the stage 2 results of the calibration images (like 'iapas segment')."),
    false_alarm_rate: float = typer.Option(None, "--false-alarm-rate", "--rate", help="Target rate of NG on normal parts "
                                           "(needs ceil((1-r)/r) images: 99 for 0.01); default 0.01, from a store the profile's."),
    from_store: Path = typer.Option(None, "--from-store", help="Instead of --normal: the folder of 'iapas serve --store'; "
                                    "the threshold from its audited normal parts' stored scores, no model run."),
    since: str = typer.Option(None, "--since", help="With --from-store: only parts inspected from this ISO date/time (UTC)."),
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
    settings: Settings = None,  # type: ignore[assignment]
) -> None:
    """Calibrate the profile's OK/NG threshold on normal images.

    Runs stage 2 on the --normal images (kept in OUT like a 'segment' run: calibrating again
    with more images segments only the new ones) and writes the profile's 'decision' section.
    Rule conformal: with n normal scores the threshold is the k-th smallest, k = ceil((n + 1)
    (1 - rate)); a new normal part is then NG with probability at most the rate. The score of an
    image is the highest level at which a region above it has --min-defect-area pixels. Stage-1
    reference images are refused (compared by content).

    With --from-store the threshold is recomputed from a station's stored scores: see the
    how-to 'feedback loop'.

    Example: iapas calibrate --profile tile.yaml --normal good/ --false-alarm-rate 0.05 --out cal/
    """
    setup_logging(settings.verbose, settings.quiet)
    from iapas.core.maps import MAP_MAX
    from iapas.workflows import calibrate as flow

    if from_store is not None:
        return _from_store(profile_path, from_store, since, false_alarm_rate, [normal, out, anomalous, masks])
    try:
        false_alarm_rate = flow.check_options(rule, false_alarm_rate, anomalous, masks, normal, out)
        profile = flow.load_profile(profile_path)
        found = flow.normal_inputs(profile, profile_path, normal, out, false_alarm_rate, rule, on_problem=print_error)
        console.print(f"reference overlap: none ({found.overlap.describe()})", soft_wrap=True, highlight=False)
        for path, ref in found.overlap.same_name:
            console.print(f"[yellow]warning[/]: {path} has the name of the reference {ref}, which is no longer there to compare")
        defects = flow.defect_inputs(anomalous, masks, out, on_problem=print_error, normal=found.found)
        hold_output_lock(ctx, out, "calibrate")  # before loading the models: a second run is refused at once
        pipeline = load_pipeline(settings.pipeline_config())
        outcome = flow.calibrate_runs(
            pipeline, profile, out, found.found, defects, rate=false_alarm_rate, min_area=min_defect_area, rule=rule,
            batch_size=settings.batch_size, max_pixels=settings.max_pixels, restart=settings.restart,
        )
        if outcome.interrupted:
            raise typer.Exit(130)
        if outcome.at_map_limit:
            console.print(
                f"[yellow]warning[/]: the threshold is at the stored maps' limit ({MAP_MAX}): with --min-defect-area the "
                "scores of hotter images cannot be told apart, so no image can be NG",
                soft_wrap=True, highlight=False,
            )
        flow.save_decision(profile, profile_path, outcome.decision)
    except flow.CalibrationError as exc:
        raise fail(str(exc)) from None
    _print_results(outcome.decision, outcome.results, profile_path, outcome.n_anomalous)
    failed = outcome.failed + len(found.problems) + len(defects.problems)
    if failed:
        console.print(f"[bold red]{failed} input(s) failed[/]; they are not part of the calibration (see above)")
        raise typer.Exit(1)


def _from_store(profile_path: Path, store: Path, since: str | None, rate: float | None, others: list) -> None:
    from iapas.workflows.calibrate import CalibrationError
    from iapas.workflows.calibrate_store import recalibrate_profile

    try:
        lines = recalibrate_profile(profile_path, store, since=since, rate=rate, others=others)
    except CalibrationError as exc:
        raise fail(str(exc)) from None
    console.print("\n".join(lines), soft_wrap=True, highlight=False)


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
