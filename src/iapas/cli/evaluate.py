"""``iapas evaluate``: the paper's benchmark protocol on one dataset folder.

A thin layer over :mod:`iapas.evaluation`: options -> settings, rich progress bars per category,
a summary table at the end. Exit codes: 0 all evaluated, 1 some image or category failed or the
disk filled up (the run stops early and says how to resume), 2 bad options, a conflicting output
folder or one in use by another run, 130 interrupted (run the same command again to resume).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import typer
from rich.markup import escape

from iapas.cli.common import category_names, console, fail, hold_output_lock, load_pipeline, print_stopped, setup_logging
from iapas.cli.data import AnomalousOpt, MaskPatternOpt, MasksOpt, NormalOpt, ReferenceDirOpt
from iapas.cli.engine_options import engine_executor
from iapas.cli.eval_common import (
    CHANGES, SHARED, _Bars, _config, _fmt, _prepare, _run_guarded, print_fallback,
)
from iapas.cli.options import shared
from iapas.data import DatasetError
from iapas.data.registry import dataset_names
from iapas.models.loading import ModelLoadError
from iapas.models.registry import help_table
from iapas.workflows.options import ENGINE, LOGGING, Settings

logger = logging.getLogger(__name__)


def register(app: typer.Typer) -> None:
    app.command("evaluate", epilog=help_table())(evaluate_cmd)


# --- options of evaluate alone ----------------------------------------------------------------------

ObjectOpt = typer.Option(None, "--object", help="Object tag by hand for every category (skips tagging and the detector vote).")
PromptsOpt = typer.Option(None, "--prompts", help="Anomaly nouns by hand for every category, comma separated (skips the LLM).")




def print_decisions(result: Any) -> None:
    """OK/NG at each category's calibrated threshold: false alarms next to the target, detections, counts."""
    from rich.table import Table

    from iapas.evaluation.tables import decision_rows

    s = result.settings
    table = Table(title=f"OK/NG at thresholds calibrated on held-out normal images (target false alarms {_fmt(s.false_alarm_rate)}%)")
    for col in ("category", "calibration images", "threshold", "false alarms %", "detected %", "TP/FP/TN/FN"):
        table.add_column(col, justify="left" if col == "category" else "right", overflow="fold", no_wrap=col == "TP/FP/TN/FN")
    for row in decision_rows(result):
        total = row["category"] == "mean"
        counts = "/".join("-" if row[k] is None else str(row[k]) for k in ("tp", "fp", "tn", "fn"))
        if not total and row["threshold"] is None:
            counts = "no threshold"
        threshold = "-" if row["threshold"] is None else f"{row['threshold']:.6g}"
        n = "-" if row["calibration_images"] is None else str(row["calibration_images"])
        table.add_row(
            "all" if total else escape(row["category"]), n, threshold, _fmt(row["false_alarm_rate"]), _fmt(row["detection_rate"]),
            counts, style="bold" if total else None,
        )
    console.print(table)


def print_summary(result: Any) -> None:
    """The metrics of every category and the mean, and where the files are."""
    from rich.table import Table

    s = result.settings
    table = Table(
        title=f"{result.title}: {s.protocol} protocol, mode {s.mode}" + (f", limit {s.limit}" if s.limit else "")
        + ("" if s.image_norm else ", no per-image normalisation")
    )
    for col in ("category", "images", "failed", "pixel AP", "pixel F1-max", "image AUROC", "s/image"):
        table.add_column(col, justify="left" if col == "category" else "right", overflow="fold")
    for c in result.categories:
        m = c.metrics
        per_image = f"{c.seconds / c.n_new:.3f}" if c.n_new else "-"
        failed = str(len(c.failures)) + (f" ({c.error})" if c.error else "")
        table.add_row(
            escape(c.name), str(c.n_done), escape(failed),
            _fmt(m.pixel_ap if m else None), _fmt(m.pixel_f1_max if m else None), _fmt(m.image_auroc if m else None), per_image,
        )
    mean = result.mean()
    table.add_row("mean", str(sum(c.n_done for c in result.categories)), str(result.n_failed_images),
                  _fmt(mean["pixel_ap"]), _fmt(mean["pixel_f1_max"]), _fmt(mean["image_auroc"]), "", style="bold")
    console.print(table)
    if s.calibration_images > 0:
        print_decisions(result)
    out = Path(result.out_dir)
    files = ["metrics.md", "metrics.csv", "metrics.json", "report.html"]
    console.print("wrote " + ", ".join(str(out / f) for f in files if (out / f).exists()), highlight=False, soft_wrap=True)
    unmasked = sum(c.metrics.n_pixel_excluded for c in result.categories if c.metrics is not None)
    if unmasked:
        console.print(f"{unmasked} defective image(s) have no mask: left out of the pixel metrics, kept in the image metrics")
    if result.n_failed_images:
        console.print(f"[bold red]{result.n_failed_images} image(s) failed[/] and are left out of the metrics; see the report")
    for c in result.categories:
        if c.decision is not None and c.decision.threshold is None:
            console.print(f"{c.name}: no OK/NG threshold: {c.decision.reason}", markup=False, highlight=False, soft_wrap=True)
    print_fallback({c.name: c.profile.llm_fallback for c in result.categories if c.profile.llm_fallback})
    if result.stopped:
        left = [c.name for c in result.categories if c.error == "not evaluated: the run stopped early"]
        print_stopped(result.stopped, f"categories not evaluated: {', '.join(left) or 'none'}")



# --- iapas evaluate ------------------------------------------------------------------------------------


SizeFilterOpt = typer.Option(True, "--size-filter/--no-size-filter", help="Drop boxes larger than the object (ablation: off).")
CaptionOpt = typer.Option(None, "--caption", help="A fixed caption for every category instead of the profiles' (mode iapas, e.g. 'defect . abnormal .').")
ProfilesOpt = typer.Option(None, "--profiles", help="Folder of CATEGORY.yaml profiles to use, and to write missing ones to (default OUT/profiles).")
FalseAlarmRateOpt = typer.Option(
    0.01, "--false-alarm-rate", min=0.0001, max=0.9999,
    help="Target false-alarm rate of each category's calibrated OK/NG threshold.",
)
CalibrationImagesOpt = typer.Option(
    None, "--calibration-images", min=0, show_default=False,
    help="Normal images per category, held out from the references and the test set, to calibrate the "
    "threshold on (default: the fewest the rate needs, 99 for 0.01; 0: no calibration). Without a normal "
    "training split they are drawn from the normal test images (at most half), which they leave: under "
    "--protocol full, or with --calibration-from-test (under paper: no threshold then). --limit bounds them too.",
)
CalibrationFromTestOpt = typer.Option(
    False, "--calibration-from-test",
    help="Under --protocol paper, where a dataset has no normal training images beyond the references, draw the "
    "calibration images from the normal test images (which then leave the test set; the reference tests them).",
)
SaveFullMapsOpt = typer.Option(
    False, "--save-full-maps",
    help="Also keep each test image's full-resolution fused map (float64, as the metrics used it, before any "
    "normalisation) as OUT/full_maps/CATEGORY/KEY.npz (array 'map'), to recompute the metrics with your own tools.",
)


@shared(*SHARED, *ENGINE, *LOGGING, **CHANGES)
def evaluate_cmd(
    ctx: typer.Context,
    dataset: str = typer.Option(..., "--dataset", "-d", help=f"Dataset: {', '.join(dataset_names(folder=False))} (or folder)."),
    root: Path = typer.Option(..., "--root", "-r", help="The dataset's folder, as downloaded."),
    out: Path = typer.Option(..., "--out", "-o", help="Evaluation folder (created; an existing one is resumed)."),
    categories: list[str] = typer.Option(None, "--categories", "-c", help="Only these categories (comma separated or repeated)."),
    settings: Settings = None,  # type: ignore[assignment]  (the shared options: SHARED)
    size_filter: bool = SizeFilterOpt,
    caption: str = CaptionOpt,
    normal: str = NormalOpt,
    anomalous: str = AnomalousOpt,
    masks: str = MasksOpt,
    mask_pattern: str = MaskPatternOpt,
    reference_dir: str = ReferenceDirOpt,
    profiles: Path = ProfilesOpt,
    object_tag: str = ObjectOpt,
    prompts: str = PromptsOpt,
    false_alarm_rate: float = FalseAlarmRateOpt,
    calibration_images: int = CalibrationImagesOpt,
    calibration_from_test: bool = CalibrationFromTestOpt,
    save_full_maps: bool = SaveFullMapsOpt,
) -> None:
    """Evaluate IAP-AS on a benchmark dataset with the paper's protocol.

    Makes (or reuses) the stage-1 profile of each category in OUT/profiles, segments every test
    image (resumable: a re-run skips finished images), min-max normalises each image's map
    (--no-image-norm: not), resizes maps to 400x400 (bicubic) and masks (nearest) and normalises
    each category's maps over its stack: under --protocol paper the reference code's arithmetic
    to the bit (float64, normalise then OpenCV's cubic resize), under full PIL's resize of the
    float32 map; writes metrics.csv/json/md
    (pixel AP, pixel F1-max and companions per category and their mean), predictions/CATEGORY.jsonl,
    maps/ (.npz; --save-full-maps: full_maps/ too) and a self-contained report.html. Each category's OK/NG threshold is
    calibrated on held-out normal images (--calibration-images, --false-alarm-rate); the tables
    give the false-alarm rate it has on the normal test images, the detection rate and the counts.
    --engine ray runs stage 2 on a Ray Data pool of workers (stage 1 stays on this machine).

    Example, offline with tiny models:
    iapas evaluate --dataset mtd --root data/MTD --out runs/mtd --detector tiny-models/grounding-dino
    --segmenter tiny-models/sam --tagger-model tiny-models/clip --llm knowledge
    """
    options = {**locals(), **settings.values}  # every option by name, for the library's set-up
    setup_logging(settings.verbose, settings.quiet)
    from iapas.evaluation import evaluate_dataset
    from iapas.engine.runfolder import RunConflictError
    from iapas.workflows.evaluate import open_dataset

    options["categories"] = categories = category_names(categories, "--categories")
    executor = engine_executor(settings, out)
    setup = _prepare(options)
    s = settings
    config = _config(s.detector, s.segmenter, s.device, setup.dtype, s.mode, s.box_threshold, s.text_threshold, s.fuse_object_detection)
    try:
        loader = open_dataset(options, setup.settings, config)  # a wrong -c or a conflicting folder: before models load
    except (DatasetError, ValueError, RunConflictError, ModelLoadError) as exc:
        raise fail(str(exc)) from None
    hold_output_lock(ctx, out, "evaluate")  # before loading the models: a second run is refused at once
    pipeline = load_pipeline(config)
    bars = _Bars(s.quiet)
    with bars:
        result = _run_guarded(
            lambda: evaluate_dataset(
                loader, None, out, pipeline, setup.settings, stage1=setup.stage1, categories=categories or None,
                profiles_dir=profiles, restart=s.restart, report=s.report, progress=bars.hooks(), executor=executor,
            )
        )
    print_summary(result)
    if result.failed:
        raise typer.Exit(1)
