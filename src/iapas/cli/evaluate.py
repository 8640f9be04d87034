"""``iapas evaluate`` and ``iapas bench``: the paper's benchmark protocol on dataset folders.

A thin layer over :mod:`iapas.evaluation`: options -> settings, rich progress bars per category,
a summary table at the end. Exit codes: 0 all evaluated, 1 some image or category failed or the
disk filled up (the run stops early and says how to resume), 2 bad options, a conflicting output
folder or one in use by another run, 130 interrupted (run the same command again to resume).
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import typer
from rich.markup import escape

from iapas.cli.common import QuietOption, VerboseOption, console, fail, hold_output_lock, print_stopped, setup_logging
from iapas.cli.engine_options import CpusPerWorkerOpt, EngineOpt, GpusPerWorkerOpt, RayAddressOpt, WorkersOpt, executor_for
from iapas.cli.data import AnomalousOpt, MaskPatternOpt, MasksOpt, NormalOpt, ReferenceDirOpt, folder_options
from iapas.io import DEFAULT_MAX_PIXELS
from iapas.models.detector import DEFAULT_DETECTOR
from iapas.models.registry import help_table
from iapas.models.segmenter import DEFAULT_SEGMENTER
from iapas.prompts.resources import LlmFallback

logger = logging.getLogger(__name__)


def register(app: typer.Typer) -> None:
    app.command("evaluate", epilog=help_table())(evaluate_cmd)
    app.command("bench", epilog=help_table())(bench_cmd)


# --- options shared by both commands ----------------------------------------------------------------

ProtocolOpt = typer.Option(
    "paper", "--protocol", help="paper: the test images the paper's reference code used; full: the whole test split (normal and defective)."
)
ModeOpt = typer.Option(
    "iapas", "--mode",
    help="iapas: profile caption + size filter; base: the paper's baseline, no size filter, caption 'defect, abnormal.' "
    "and no per-image normalisation under --protocol paper (as the reference code), else 'defect . abnormal .'.",
)
SizeThresholdOpt = typer.Option(None, "--size-threshold", help="Keep boxes below this fraction of the object's area (default: each profile's, 0.8).")
ReferencesOpt = typer.Option(10, "--references", "-n", min=0, help="Normal reference images per category for stage 1.")
SeedOpt = typer.Option(0, "--seed", help="Seed for drawing the references (and --limit's subset, and LLM sampling).")
LimitOpt = typer.Option(None, "--limit", min=1, help="Quick check: at most N test images per category (seeded draw, anomalous and normal images taken in turn so both classes appear; reported as such).")
EvalSizeOpt = typer.Option(400, "--eval-size", min=8, help="Side of the square evaluation maps (the paper's 400).")
ImageNormOpt = typer.Option(
    None, "--image-norm/--no-image-norm",
    help="Min-max normalise each image's map (by its raw range) before the stack normalisation, as the paper's "
    "reference code does (default: on, except --mode base --protocol paper, where the reference skips it). "
    "Applied when the metrics are computed: switching it on a finished folder re-computes the metrics only.",
    show_default=False,
)
ImageScoreOpt = typer.Option(
    None, "--image-score", show_default=False,
    help="Image score of the image metrics: paper (each image's maximum of the normalised 400x400 stack, the "
    "reference code's; the default under --protocol paper) or raw (the raw full-resolution map's maximum; the "
    "default under --protocol full). Applied when the metrics are computed.",
)
DetectorOpt = typer.Option(DEFAULT_DETECTOR, "--detector", help="Grounding DINO, MM-Grounding-DINO, OWLv2 or SAM 3 (which segments too): a model name (table below), a hub id or a local folder.")
SegmenterOpt = typer.Option(DEFAULT_SEGMENTER, "--segmenter", help="SAM, SAM-HQ or SAM 2.1: a model name (table below), a hub id or a local folder (unused with --detector sam3).")
DeviceOpt = typer.Option("auto", "--device", help="cpu, cuda, cuda:N, mps, or auto.")
DtypeOpt = typer.Option(
    None, "--dtype", show_default=False,
    help="Detector and SAM precision: float32 (the default: the reference code's), float16, bfloat16 or auto "
    "(float16 on GPU). Stage 1's models use it too when given, else auto.",
)
#: The detector's and SAM's precision in evaluate and bench when --dtype is not given (the reference ran float32).
EVAL_DTYPE = "float32"
BatchOpt = typer.Option(1, "--batch-size", min=1, help="Images per model forward.")
BoxThresholdOpt = typer.Option(0.1, "--box-threshold", help="Detector box threshold (the paper's 0.1).")
TextThresholdOpt = typer.Option(0.1, "--text-threshold", help="Detector text threshold (the paper's 0.1).")
TaggerOpt = typer.Option("clip", "--tagger", help="Stage 1 tagger: clip, ram (--tagger-model CHECKPOINT) or manual (--tags).")
TaggerModelOpt = typer.Option(None, "--tagger-model", help="CLIP hub id or folder; for ram, the checkpoint file.")
TopKOpt = typer.Option(5, "--top-k", min=1, help="CLIP tagger: tags kept per reference image.")
TagsOpt = typer.Option(None, "--tags", help="Tags by hand for every category, comma separated (implies --tagger manual).")
ObjectOpt = typer.Option(None, "--object", help="Object tag by hand for every category (skips tagging and the detector vote).")
LlmOpt = typer.Option("transformers", "--llm", help="Anomaly nouns from: transformers (local chat model), openai (compatible endpoint) or knowledge (offline).")
LlmModelOpt = typer.Option(None, "--llm-model", help="transformers: hub id or folder (default Meta-Llama-3-8B-Instruct); openai: model name.")
LlmBaseUrlOpt = typer.Option(None, "--llm-base-url", help="openai: server URL (or IAPAS_LLM_BASE_URL / OPENAI_BASE_URL).")
LlmTimeoutOpt = typer.Option(60.0, "--llm-timeout", min=0.001, help="openai: seconds per request.")
LlmRetriesOpt = typer.Option(2, "--llm-retries", min=0, help="openai: retries after errors and time-outs.")
LlmFallbackOpt = typer.Option(
    "auto", "--llm-fallback",
    help="auto: when the LLM fails, a profile's nouns come from the knowledge vocabulary; never: stop with an error.",
)
KnowledgeOpt = typer.Option(None, "--knowledge", help="A knowledge YAML instead of the built-in vocabulary.")
PromptsOpt = typer.Option(None, "--prompts", help="Anomaly nouns by hand for every category, comma separated (skips the LLM).")
ObjectInCaptionOpt = typer.Option(True, "--object-in-caption/--no-object-in-caption", help="Append the object tag to the caption (as the reference code does).")
ObjectJoinOpt = typer.Option(
    "phrase", "--object-join",
    help="Stage 1: the object tag joins the caption as its own phrase (phrase) or, as in the reference code, "
    "with a comma to the last word (comma).",
)
PromptStyleOpt = typer.Option(
    "reference", "--prompt-style",
    help="Stage 1: the LLM's messages, reference (the paper's reference code's) or inspector (iapas's own wording).",
)
RestartOpt = typer.Option(False, "--restart", help="Discard the predictions already in the output folder (profiles are kept).")
ReportOpt = typer.Option(True, "--report/--no-report", help="Write report.html (images inlined).")
FuseOpt = typer.Option(
    False, "--fuse-object-detection", help="Take the object box from the caption's forward (one detector forward; not the paper's method)."
)
MaxPixelsOpt = typer.Option(DEFAULT_MAX_PIXELS, "--max-pixels", min=1, help="Refuse images with more pixels (decompression-bomb guard).")


def _split(values: list[str] | None) -> list[str]:
    return [v.strip() for item in values or [] for v in item.split(",") if v.strip()]


def _stage1_options(mode: str, **values: Any) -> Any:
    """Stage1Options for mode iapas (None for base); a bad combination exits with a message."""
    from iapas.evaluation import Stage1Options
    from iapas.prompts.caption import split_word_list

    if mode != "iapas":
        return None
    tags, prompts = values.pop("tags"), values.pop("prompts")
    try:
        return Stage1Options(
            tags=split_word_list(tags) if tags else None,
            nouns=split_word_list(prompts) if prompts is not None else None,
            **values,
        )
    except ValueError as exc:
        raise fail(str(exc)) from None


def _calibration_count(n: int | None, rate: float) -> int:
    """--calibration-images, or by default the fewest images the conformal threshold needs."""
    from iapas.decision import images_needed

    return images_needed(rate) if n is None else n


def _settings(**values: Any) -> Any:
    from iapas.evaluation import EvalSettings

    try:
        return EvalSettings(**values)
    except ValueError as exc:
        raise fail(str(exc)) from None


def _pipeline(
    detector: str, segmenter: str, device: str, dtype: str, mode: str, box_threshold: float, text_threshold: float, fuse: bool
) -> Any:
    from iapas.models.loading import ModelLoadError
    from iapas.pipeline import Pipeline, PipelineConfig

    try:
        config = PipelineConfig(
            detector=detector, segmenter=segmenter, device=device, dtype=dtype, mode=mode,  # type: ignore[arg-type]
            box_threshold=box_threshold, text_threshold=text_threshold, fuse_object_detection=fuse,
        )
        with console.status("loading models"):
            return Pipeline.from_config(config)
    except (ModelLoadError, ValueError) as exc:
        raise fail(str(exc)) from None


def _joint_detector(detector: str) -> bool:
    """Whether ``detector`` segments too (SAM 3: no segmenter runs, recorded as 'none'); False
    when its config cannot be read (loading it reports why)."""
    from iapas.models.factory import returns_masks
    from iapas.models.loading import ModelLoadError

    try:
        return returns_masks(detector)
    except (ModelLoadError, OSError, ValueError):
        return False


def _model_names(
    detector: str, segmenter: str, device: str, dtype: str, box_threshold: float, text_threshold: float, fuse: bool
) -> dict[str, Any]:
    """What :func:`iapas.evaluation.core.model_names` will say once the models are loaded."""
    from iapas.models.detector import DETECTOR_CHOICES
    from iapas.models.loading import resolve_device, resolve_dtype
    from iapas.models.segmenter import SEGMENTER_CHOICES
    from iapas.pipeline import NoSegmenter, PipelineConfig

    resolved = resolve_device(device)
    return {
        "detector": DETECTOR_CHOICES.get(detector, detector),
        "segmenter": NoSegmenter.name if _joint_detector(detector) else SEGMENTER_CHOICES.get(segmenter, segmenter),
        "box_threshold": box_threshold,
        "text_threshold": text_threshold,
        "nms_iou": PipelineConfig().nms_iou,
        "fuse_object_detection": fuse,
        "dtype": str(resolve_dtype(dtype, resolved)),
        "device": resolved,
    }


def _columns() -> tuple[Any, ...]:
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    return TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn()


class _Bars:
    """Progress per category (and per stage-1 step while a profile is made): rich bars on a
    terminal, log lines elsewhere (:class:`iapas.cli.progress.RunProgress`)."""

    def __init__(self, quiet: bool) -> None:
        from iapas.cli.progress import RunProgress

        self.progress = RunProgress(console, quiet, _columns)
        self.tasks: dict[str, Any] = {}
        self.prefix = ""

    def hooks(self) -> Any:
        from iapas.evaluation import ProgressHooks

        return ProgressHooks(on_category=self.on_category, on_image=self.on_image, on_stage1=self.on_stage1)

    def on_category(self, name: str, total: int) -> None:
        self.tasks[name] = self.progress.add_task(f"{self.prefix}{name}", total=total)

    def on_image(self, name: str, key: str, status: str) -> None:
        if name in self.tasks:
            self.progress.advance(self.tasks[name], status)

    def on_stage1(self, name: str, step: str, done: int, total: int) -> None:
        key = f"{name}:{step}"
        if key not in self.tasks:
            self.tasks[key] = self.progress.add_task(f"{self.prefix}{name} (stage 1: {step})", total=total)
        self.progress.update(self.tasks[key], completed=done)

    def __enter__(self) -> _Bars:
        self.progress.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.progress.__exit__(*exc)


def _fmt(value: float | None) -> str:
    return "-" if value is None or not math.isfinite(value) else f"{100 * value:.2f}"


def print_fallback(fell_back: dict[str, str]) -> None:
    """One line naming the categories whose anomaly nouns came from the knowledge fallback, and why."""
    if fell_back:
        console.print(
            f"LLM fallback: the anomaly nouns of {', '.join(fell_back)} come from the knowledge vocabulary, not the LLM, "
            f"because {next(iter(fell_back.values()))}", markup=False, highlight=False, soft_wrap=True,
        )


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


def _run_guarded(fn: Any) -> Any:
    """Run ``fn``; map the library's errors to one-line messages and exit codes."""
    from iapas.data import DatasetError
    from iapas.engine import EngineError
    from iapas.evaluation import RunConflictError
    from iapas.models.loading import ModelLoadError
    from iapas.profile import ProfileError
    from iapas.prompts.knowledge import KnowledgeError
    from iapas.prompts.llm import LLMError
    from iapas.prompts.tagging import TaggerError

    try:
        return fn()
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/]: finished images are saved; run the same command again to resume")
        raise typer.Exit(130) from None
    except (RunConflictError, DatasetError, ModelLoadError, TaggerError, LLMError, KnowledgeError, ProfileError, EngineError) as exc:
        raise fail(str(exc)) from None
    except ValueError as exc:
        raise fail(str(exc)) from None
    except OSError as exc:
        from iapas.storage import is_disk_full, stop_reason

        if not is_disk_full(exc):
            raise fail(str(exc)) from None
        print_stopped(stop_reason(exc), "the run did not finish")  # e.g. while a profile was written
        raise typer.Exit(1) from None


# --- iapas evaluate ------------------------------------------------------------------------------------


def evaluate_cmd(
    ctx: typer.Context,
    dataset: str = typer.Option(..., "--dataset", "-d", help="Dataset: mvtec, mpdd, btad, ksdd1, mtd, dtd, dagm, visa (or folder)."),
    root: Path = typer.Option(..., "--root", "-r", help="The dataset's folder, as downloaded."),
    out: Path = typer.Option(..., "--out", "-o", help="Evaluation folder (created; an existing one is resumed)."),
    categories: list[str] = typer.Option(None, "--categories", "-c", help="Only these categories (comma separated or repeated)."),
    protocol: str = ProtocolOpt,
    mode: str = ModeOpt,
    size_threshold: float = SizeThresholdOpt,
    size_filter: bool = typer.Option(True, "--size-filter/--no-size-filter", help="Drop boxes larger than the object (ablation: off)."),
    caption: str = typer.Option(None, "--caption", help="A fixed caption for every category instead of the profiles' (mode iapas, e.g. 'defect . abnormal .')."),
    references: int = ReferencesOpt,
    seed: int = SeedOpt,
    limit: int = LimitOpt,
    normal: str = NormalOpt,
    anomalous: str = AnomalousOpt,
    masks: str = MasksOpt,
    mask_pattern: str = MaskPatternOpt,
    reference_dir: str = ReferenceDirOpt,
    eval_size: int = EvalSizeOpt,
    image_norm: bool | None = ImageNormOpt,
    image_score: str = ImageScoreOpt,
    profiles: Path = typer.Option(None, "--profiles", help="Folder of CATEGORY.yaml profiles to use, and to write missing ones to (default OUT/profiles)."),
    detector: str = DetectorOpt,
    segmenter: str = SegmenterOpt,
    device: str = DeviceOpt,
    dtype: str = DtypeOpt,
    batch_size: int = BatchOpt,
    box_threshold: float = BoxThresholdOpt,
    text_threshold: float = TextThresholdOpt,
    fuse_object_detection: bool = FuseOpt,
    tagger: str = TaggerOpt,
    tagger_model: str = TaggerModelOpt,
    top_k: int = TopKOpt,
    tags: str = TagsOpt,
    object_tag: str = ObjectOpt,
    llm: str = LlmOpt,
    llm_model: str = LlmModelOpt,
    llm_base_url: str = LlmBaseUrlOpt,
    llm_timeout: float = LlmTimeoutOpt,
    llm_retries: int = LlmRetriesOpt,
    llm_fallback: LlmFallback = LlmFallbackOpt,
    knowledge_file: Path = KnowledgeOpt,
    prompts: str = PromptsOpt,
    object_in_caption: bool = ObjectInCaptionOpt,
    object_join: str = ObjectJoinOpt,
    prompt_style: str = PromptStyleOpt,
    false_alarm_rate: float = typer.Option(
        0.01, "--false-alarm-rate", min=0.0001, max=0.9999,
        help="Target false-alarm rate of each category's calibrated OK/NG threshold.",
    ),
    calibration_images: int = typer.Option(
        None, "--calibration-images", min=0, show_default=False,
        help="Normal images per category, held out from the references and the test set, to calibrate the "
        "threshold on (default: the fewest the rate needs, 99 for 0.01; 0: no calibration). Without a normal "
        "training split they are drawn from the normal test images (at most half), which they leave.",
    ),
    restart: bool = RestartOpt,
    report: bool = ReportOpt,
    max_pixels: int = MaxPixelsOpt,
    engine: str = EngineOpt,
    ray_address: str = RayAddressOpt,
    workers: int = WorkersOpt,
    gpus_per_worker: float = GpusPerWorkerOpt,
    cpus_per_worker: float = CpusPerWorkerOpt,
    verbose: bool = VerboseOption,
    quiet: bool = QuietOption,
) -> None:
    """Evaluate IAP-AS on a benchmark dataset with the paper's protocol.

    Makes (or reuses) the stage-1 profile of each category in OUT/profiles, segments every test
    image (resumable: a re-run skips finished images), resizes maps to 400x400 (bicubic) and masks
    (nearest) with OpenCV's arithmetic under --protocol paper (PIL's under full), min-max normalises
    each image's map (--no-image-norm: not) and then each category's maps over its stack, and
    writes metrics.csv/json/md
    (pixel AP, pixel F1-max and companions per category and their mean), predictions/CATEGORY.jsonl,
    maps/ (float32 .npz) and a self-contained report.html. Each category's OK/NG threshold is
    calibrated on held-out normal images (--calibration-images, --false-alarm-rate); the tables
    give the false-alarm rate it has on the normal test images, the detection rate and the counts.
    --engine ray runs stage 2 on a Ray Data pool of workers (stage 1 stays on this machine).

    Example, offline with tiny models:
    iapas evaluate --dataset mtd --root data/MTD --out runs/mtd --detector tiny-models/grounding-dino
    --segmenter tiny-models/sam --tagger-model tiny-models/clip --llm knowledge
    """
    setup_logging(verbose, quiet)
    from iapas.evaluation import evaluate_dataset

    executor = executor_for(engine, out, ray_address, workers, gpus_per_worker, cpus_per_worker)
    settings = _settings(
        protocol=protocol, mode=mode, size_threshold=size_threshold, size_filter=size_filter, caption=caption,
        n_references=references, seed=seed, eval_size=eval_size, limit=limit, batch_size=batch_size, max_pixels=max_pixels,
        image_norm=image_norm, image_score=image_score, false_alarm_rate=false_alarm_rate,
        calibration_images=_calibration_count(calibration_images, false_alarm_rate),
    )
    stage1_dtype, dtype = dtype or "auto", dtype or EVAL_DTYPE
    stage1 = _stage1_options(
        mode, tagger=tagger, tagger_model=tagger_model, top_k=top_k, tags=tags, llm=llm, llm_model=llm_model,
        llm_base_url=llm_base_url, llm_timeout=llm_timeout, llm_retries=llm_retries, llm_fallback=llm_fallback,
        knowledge_file=knowledge_file,
        object_tag=object_tag, prompts=prompts, include_object_tag=object_in_caption, object_join=object_join,
        prompt_style=prompt_style,
        size_threshold=size_threshold if size_threshold is not None else 0.8, seed=seed, device=device, dtype=stage1_dtype,
    )
    from iapas.evaluation.core import RunConflictError, check_existing_run, run_signature

    try:
        from iapas.data import DatasetError, canonical_name, get_dataset

        name = canonical_name(dataset)
        options = folder_options(normal, anomalous, masks, mask_pattern, reference_dir) if name == "folder" else {}
        loader = get_dataset(name, root, **options)
        loader.categories()
        if not restart:  # refuse a conflicting folder before spending time on loading models
            check_existing_run(out, run_signature(loader.name, settings, _model_names(detector, segmenter, device, dtype, box_threshold, text_threshold, fuse_object_detection)))
        if caption and mode == "iapas":  # a caption the detector cannot read: say so before loading the models
            from iapas.models.detector import check_caption_length

            check_caption_length(caption, detector)
    except (DatasetError, ValueError, RunConflictError) as exc:
        raise fail(str(exc)) from None
    hold_output_lock(ctx, out, "evaluate")  # before loading the models: a second run is refused at once
    pipeline = _pipeline(detector, segmenter, device, dtype, mode, box_threshold, text_threshold, fuse_object_detection)
    bars = _Bars(quiet)
    with bars:
        result = _run_guarded(
            lambda: evaluate_dataset(
                loader, None, out, pipeline, settings, stage1=stage1, categories=_split(categories) or None,
                profiles_dir=profiles, restart=restart, report=report, progress=bars.hooks(), executor=executor,
            )
        )
    print_summary(result)
    if result.failed:
        raise typer.Exit(1)


# --- iapas bench ---------------------------------------------------------------------------------------


def _parse_categories(values: list[str] | None) -> dict[str, list[str]]:
    """'mvtec:carpet,grid' (repeatable) -> {'mvtec': ['carpet', 'grid']}."""
    from iapas.data import canonical_name

    out: dict[str, list[str]] = {}
    for item in values or []:
        if ":" not in item:
            raise fail(f"--categories takes DATASET:cat1,cat2 (e.g. mvtec:carpet,grid), got {item!r}")
        name, cats = item.split(":", 1)
        try:
            key = canonical_name(name)
        except ValueError as exc:
            raise fail(str(exc)) from None
        out.setdefault(key, []).extend(c.strip() for c in cats.split(",") if c.strip())
    return out


def bench_cmd(
    ctx: typer.Context,
    root_dir: Path = typer.Option(..., "--root-dir", help="Folder holding the datasets (MVTecAD, MPDD, BTAD, KolektorSDD, Magnetic-tile-defect, DTD-Synthetic, DAGM2007)."),
    out: Path = typer.Option(..., "--out", "-o", help="Bench folder: DATASET/VARIANT/ runs and bench.md/csv/json/html."),
    datasets: list[str] = typer.Option(None, "--datasets", help="Only these datasets (comma separated): mvtec, mpdd, btad, ksdd1, mtd, dtd, dagm."),
    categories: list[str] = typer.Option(None, "--categories", help="DATASET:cat1,cat2 (repeatable). Default: all; the ablation columns on mvtec: carpet, grid, leather, tile, wood (the default column: all)."),
    ablation: list[str] = typer.Option(None, "--ablation", help="references, prompt, size-filter, size-sweep, wrong-tag, prompt-style, prompt-transfer, detector=NAME or segmenter=NAME (repeatable; NAME: a model name below, a hub id or a folder; a column with that stage-2 model, the default column's profiles)."),
    sizes: str = typer.Option("0.5,0.6,0.7,0.8,0.9,1.0,1.1,1.2,1.3,1.4,1.5", "--sizes", help="Size thresholds of --ablation size-sweep."),
    protocol: str = ProtocolOpt,
    mode: str = ModeOpt,
    size_threshold: float = SizeThresholdOpt,
    references: int = ReferencesOpt,
    seed: int = SeedOpt,
    limit: int = LimitOpt,
    eval_size: int = EvalSizeOpt,
    image_norm: bool | None = ImageNormOpt,
    image_score: str = ImageScoreOpt,
    detector: str = DetectorOpt,
    segmenter: str = SegmenterOpt,
    device: str = DeviceOpt,
    dtype: str = DtypeOpt,
    batch_size: int = BatchOpt,
    box_threshold: float = BoxThresholdOpt,
    text_threshold: float = TextThresholdOpt,
    fuse_object_detection: bool = FuseOpt,
    tagger: str = TaggerOpt,
    tagger_model: str = TaggerModelOpt,
    top_k: int = TopKOpt,
    tags: str = TagsOpt,
    llm: str = LlmOpt,
    llm_model: str = LlmModelOpt,
    llm_base_url: str = LlmBaseUrlOpt,
    llm_timeout: float = LlmTimeoutOpt,
    llm_retries: int = LlmRetriesOpt,
    llm_fallback: LlmFallback = LlmFallbackOpt,
    knowledge_file: Path = KnowledgeOpt,
    object_in_caption: bool = ObjectInCaptionOpt,
    object_join: str = ObjectJoinOpt,
    prompt_style: str = PromptStyleOpt,
    restart: bool = RestartOpt,
    report: bool = ReportOpt,
    max_pixels: int = MaxPixelsOpt,
    verbose: bool = VerboseOption,
    quiet: bool = QuietOption,
) -> None:
    """Run the benchmark on every dataset found under --root-dir, and the paper's ablations.

    Each dataset (and each ablation variant) is an 'iapas evaluate' run in OUT/DATASET/VARIANT/;
    stage-1 profiles are shared by the variants that do not change them. Writes OUT/bench.md (one
    row per dataset: mean pixel AP, F1-max and seconds per image of each variant side by side),
    bench.csv, bench.json and bench.html. --ablation detector=NAME (or segmenter=NAME) adds a
    column that runs stage 2 with that model on the same images and profiles.

    Example: iapas bench --root-dir datasets --out runs/bench --datasets mvtec --ablation size-filter --ablation prompt
    """
    setup_logging(verbose, quiet)
    from iapas.evaluation.bench import ABLATIONS, is_ablation, run_bench

    ablations = _split(ablation)
    unknown = [a for a in ablations if not is_ablation(a)]
    if unknown:
        raise fail(
            f"unknown --ablation {', '.join(unknown)}; choose from {', '.join(ABLATIONS)}, detector=NAME or segmenter=NAME"
        )
    try:
        size_list = [float(s) for s in sizes.split(",") if s.strip()]
    except ValueError:
        raise fail(f"--sizes must be comma-separated numbers, got {sizes!r}") from None
    settings = _settings(
        protocol=protocol, mode=mode, size_threshold=size_threshold, n_references=references, seed=seed,
        eval_size=eval_size, limit=limit, batch_size=batch_size, max_pixels=max_pixels, image_norm=image_norm,
        image_score=image_score,
    )
    stage1_dtype, dtype = dtype or "auto", dtype or EVAL_DTYPE
    stage1 = _stage1_options(
        mode, tagger=tagger, tagger_model=tagger_model, top_k=top_k, tags=tags, llm=llm, llm_model=llm_model,
        llm_base_url=llm_base_url, llm_timeout=llm_timeout, llm_retries=llm_retries, llm_fallback=llm_fallback,
        knowledge_file=knowledge_file,
        object_tag=None, prompts=None, include_object_tag=object_in_caption, object_join=object_join,
        prompt_style=prompt_style,
        size_threshold=size_threshold if size_threshold is not None else 0.8, seed=seed, device=device, dtype=stage1_dtype,
    )
    from iapas.data import canonical_name

    try:
        wanted = [canonical_name(d) for d in _split(datasets)] or None
    except ValueError as exc:
        raise fail(str(exc)) from None
    per_dataset = _parse_categories(categories)
    hold_output_lock(ctx, out, "bench")  # the whole bench folder, with every evaluation in it
    pipeline = _pipeline(detector, segmenter, device, dtype, mode, box_threshold, text_threshold, fuse_object_detection)
    bars = _Bars(quiet)

    def on_run(name: str, variant: Any) -> None:
        bars.prefix = f"{name}/{variant.name}: "

    with bars:
        bench = _run_guarded(
            lambda: run_bench(
                root_dir, out, pipeline, settings, stage1=stage1, ablations=ablations, sizes=size_list, datasets=wanted,
                categories=per_dataset, restart=restart, report=report, progress=bars.hooks(), on_run=on_run,
            )
        )
    _print_bench(bench)
    if bench.failed:
        raise typer.Exit(1)


def _print_bench(bench: Any) -> None:
    from rich.table import Table

    table = Table(title="IAP-AS benchmark: mean pixel AP / F1-max / paper's 100-thr. F1-max (%) / s per image")
    table.add_column("dataset")
    labels = bench.column_labels()
    for _, label in labels:
        table.add_column(escape(label), justify="right")
    for row in bench.rows():
        cells = []
        for name, _ in labels:
            v = row.get(name)
            t = v.get("seconds_per_image") if v is not None else None
            t_cell = f"{t:.3f}s" if isinstance(t, float) and t == t else "-"
            cells.append("-" if v is None else f"{_fmt(v['pixel_ap'])} / {_fmt(v['pixel_f1_max'])} / {_fmt(v['pixel_f1_max_100'])} / {t_cell}")
        table.add_row(escape(str(row["dataset"])), *cells)
    console.print(table)
    for name, errs in bench.errors.items():
        for variant, message in errs.items():
            console.print(f"[bold red]{escape(name)} {escape(variant)}:[/] {escape(message)}", highlight=False, soft_wrap=True)
    print_fallback({
        f"{name}/{variant}/{c.name}": c.profile.llm_fallback
        for name, runs in bench.results.items() for variant, run in runs.items()
        for c in run.categories if c.profile.llm_fallback
    })
    console.print(f"wrote {bench.out_dir / 'bench.md'}, bench.csv, bench.json, bench.html", highlight=False, soft_wrap=True)
    if bench.stopped:
        print_stopped(bench.stopped, "the bench did not finish")
