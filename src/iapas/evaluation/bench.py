"""The benchmark: every dataset found under a folder, and the paper's ablations, side by side.

``run_bench(root_dir, out_dir, pipeline, settings, stage1=..., ablations=[...])`` finds the
paper's seven datasets under ``root_dir`` (:func:`find_datasets`), evaluates each variant of
each dataset into ``OUT/<dataset>/<variant>/`` with :func:`~iapas.evaluation.run.evaluate_dataset`
and writes the paper-style table (one row per dataset: mean pixel AP and F1-max of each variant)
as ``OUT/bench.{md,csv,json,html}``.

The columns (``default`` is always run, first) and the ``--ablation`` names are
:mod:`~iapas.evaluation.variants`'s; the table's data and files are
:mod:`~iapas.evaluation.bench_results`'s (both importable from here too).

Next to each column's metrics the table gives its time per image: the mean stage-2 seconds per
image (detection, segmentation and fusion) over the images its predictions record.

Every column of a dataset is scored on the same test images: where the ablations ask for
different reference counts (``references``), the test set is drawn once, with the references of
the largest count excluded (the draws are nested, see
:func:`~iapas.evaluation.core.restrict_to_pool`), and each column uses it.

Stage-1 profiles are shared by the variants that do not change them: ``OUT/<dataset>/profiles``
(default, prompt, size-filter, size-sweep), ``profiles-references-1``, ``profiles-wrong-tag`` and
``profiles-prompt-<style>``; the transfer runs copy the default profiles into
``profiles-transfer/<source>/<target>.yaml`` and evaluate into ``prompt-transfer/from-<source>/``.
On MVTec AD the ablation variants default to the paper's texture categories (carpet, grid,
leather, tile, wood) when a download has them; the default column always covers every category
(so its mean is the dataset's), and the bench notes give its mean over the ablation categories too,
for a like-for-like comparison with the ablation columns.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from iapas.data import DatasetError, get_dataset
from iapas.data.registry import DATASETS, dataset_names, guess_dataset
from iapas.evaluation.bench_results import (  # noqa: F401  (re-exported: importable from here as before)
    BENCH_CSV,
    BENCH_HTML,
    BENCH_JSON,
    BENCH_MD,
    BENCH_METRICS,
    TRANSFER_DIR,
    BenchResult,
    seconds_per_image,
    write_bench,
)
from iapas.evaluation.results import DatasetResult
from iapas.evaluation.settings import EvalSettings, ProgressHooks
from iapas.evaluation.plan import select_categories
from iapas.evaluation.run import evaluate_dataset
from iapas.evaluation.profiles import Stage1Models, Stage1Options, get_profile, profile_path, wrong_object_tags
from iapas.evaluation.variants import (  # noqa: F401  (re-exported: importable from here as before)
    ABLATIONS,
    DEFAULT_SIZE_THRESHOLD,
    DEFAULT_VARIANT,
    MODEL_ABLATIONS,
    SIZE_SWEEP,
    Variant,
    ablation_variants,
    is_ablation,
)
from iapas.core.files import atomic_path
from iapas.pipeline.stage2 import Pipeline
from iapas.core.storage import is_disk_full, stop_reason
from iapas.prompts.llm import DEFAULT_PROMPT_STYLE

logger = logging.getLogger(__name__)

# The paper's seven datasets, in its order, with the folder names they are downloaded as
# (compared lowercase, without punctuation), as their loaders declare them.
DATASET_FOLDERS: dict[str, tuple[str, ...]] = {name: DATASETS[name].download_folders for name in dataset_names(bench=True)}
BENCH_DATASETS: tuple[str, ...] = tuple(DATASET_FOLDERS)
ABLATION_CATEGORIES: dict[str, tuple[str, ...]] = {"mvtec": ("carpet", "grid", "leather", "tile", "wood")}
# prompt-transfer: textures and objects, so a texture's profile is tried on objects and back
TRANSFER_CATEGORIES: dict[str, tuple[str, ...]] = {"mvtec": ("carpet", "leather", "bottle", "screw")}
TRANSFER_PROFILES_DIR = "profiles-transfer"


def _folder_key(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


def find_datasets(root_dir: str | Path, names: Sequence[str] = BENCH_DATASETS) -> dict[str, Path]:
    """The datasets under ``root_dir``: ``{registry name: folder}`` in the paper's order.

    A sub-folder is recognised by its name (``MVTecAD``, ``mvtec_anomaly_detection``,
    ``KolektorSDD``, ``Magnetic-tile-defect``, ``DTD-Synthetic``, ``DAGM2007``,
    ``BTech_Dataset_transformed``, ...), else by its layout, where the categories it holds settle
    layouts that several datasets share (:func:`~iapas.data.registry.guess_dataset`: ``01/02/03``
    is BTAD). The first folder found for a dataset wins. A folder left out because its layout
    fits several datasets, or because its dataset was already found, is logged as a warning.
    """
    root = Path(root_dir).expanduser()
    if not root.is_dir():
        raise DatasetError(f"{root}: not a folder (expected a folder holding the datasets)")
    by_folder = {alias: name for name, aliases in DATASET_FOLDERS.items() for alias in aliases}
    found: dict[str, Path] = {}
    for child in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        name = by_folder.get(_folder_key(child.name))
        if name is None:
            name, candidates = guess_dataset(child, names)
            if name is None and len(candidates) > 1:
                logger.warning(
                    "%s: its layout fits %s and its categories do not settle which; left out (rename the folder "
                    "to the dataset's name, e.g. %s, to include it)", child, ", ".join(candidates), DATASET_FOLDERS[candidates[0]][0],
                )
        if name is None or name not in names:
            continue
        if name in found:
            logger.warning("%s: left out, %s is already read from %s", child, name, found[name])
            continue
        found[name] = child
    return {name: found[name] for name in names if name in found}



def load_stage2_model(kind: str, name: str, pipeline: Pipeline) -> Any:
    """The ``kind`` (detector or segmenter) adapter of ``name`` on ``pipeline``'s device and dtype
    (compiled when the pipeline's models are)."""
    from iapas.models.factory import load_detector, load_segmenter

    cfg = pipeline.config
    load = load_detector if kind == "detector" else load_segmenter
    model = load(name, device=cfg.device, dtype=cfg.dtype)
    if cfg.compile:
        model.compile()
    return model


def _variant_pipelines(
    variants: Sequence[Variant], pipeline: Pipeline, load_model: Callable[[str, str, Pipeline], Any]
) -> dict[str, Pipeline]:
    """One stage-2 pipeline per model variant, its model loaded once (before any run, so that a
    wrong name fails at once); the other variants run on ``pipeline``."""
    out: dict[str, Pipeline] = {}
    for v in variants:
        if v.detector is None and v.segmenter is None:
            continue
        detector = load_model("detector", v.detector, pipeline) if v.detector is not None else pipeline.detector
        segmenter = load_model("segmenter", v.segmenter, pipeline) if v.segmenter is not None else pipeline.segmenter
        out[v.name] = Pipeline(detector, segmenter, pipeline.config)
    return out


def _wrong_tag_profiles(
    loader: Any,
    categories: Sequence[str],
    settings: EvalSettings,
    true_dir: Path,
    wrong_dir: Path,
    stage1: Stage1Options,
    models: Stage1Models,
) -> dict[str, str]:
    """Make the wrong-tag profiles (stage 1 with another category's object tag); returns the tags used."""
    true_tags: dict[str, str] = {}
    loaded = {}
    for name in categories:
        category = loader.load(name, protocol=settings.protocol, n_references=settings.n_references, seed=settings.seed)
        loaded[name] = category
        path = profile_path(true_dir, name)
        if not path.exists():
            continue  # the default run could not make it; that category fails there too
        profile = get_profile(category, true_dir, stage1, models=models)
        assert profile is not None
        true_tags[name] = profile.object_tag
    wrong = wrong_object_tags(true_tags)
    for name, tag in wrong.items():
        if not profile_path(wrong_dir, name).exists():
            get_profile(loaded[name], wrong_dir, replace(stage1, object_tag=tag), models=models)
    return wrong


def _copy_profile(source: Path, target: Path) -> None:
    """``source``'s bytes at ``target`` (atomically; untouched when already equal)."""
    data = source.read_bytes()
    if target.exists() and target.read_bytes() == data:
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(target) as tmp:
        with open(tmp, "wb") as fh:
            fh.write(data)


def transfer_categories(name: str, available: Sequence[str], wanted: Sequence[str]) -> list[str]:
    """The categories of the prompt-transfer matrix: those asked for; else the dataset's
    :data:`TRANSFER_CATEGORIES` found (at least 2); else every category."""
    if wanted:
        return list(wanted)
    preferred = [c for c in TRANSFER_CATEGORIES.get(name, ()) if c in available]
    return preferred if len(preferred) >= 2 else list(available)


def _run_transfer(
    loader: Any,
    ds_out: Path,
    chosen: Sequence[str],
    pipeline: Pipeline,
    settings: EvalSettings,
    *,
    restart: bool,
    report: bool,
    progress: ProgressHooks | None,
    notes: Sequence[str],
) -> tuple[dict[str, DatasetResult], list[str]]:
    """Segment each of ``chosen`` with every other one's default profile; ``{source: run}`` and notes."""
    own = ds_out / DEFAULT_VARIANT.profiles_dir_name()
    runs: dict[str, DatasetResult] = {}
    missing: list[str] = []
    for source in chosen:
        path = profile_path(own, source)
        if not path.exists():  # the default run could not make it: that category failed there
            missing.append(source)
            continue
        targets = [t for t in chosen if t != source]
        if not targets:
            continue
        folder = ds_out / TRANSFER_PROFILES_DIR / source
        for target in targets:
            _copy_profile(path, profile_path(folder, target))
        runs[source] = evaluate_dataset(
            loader, None, ds_out / TRANSFER_DIR / f"from-{source}", pipeline, settings, categories=targets,
            profiles_dir=folder, restart=restart, report=report, progress=progress,
            extra_notes=[*notes, f"Prompt transfer: every category segmented with the profile of {source}."],
        )
    out_notes = [f"no profile of {', '.join(missing)} (its default run failed): left out of the transfer"] if missing else []
    return runs, out_notes


@dataclass(frozen=True)
class _BenchRuns:
    """What every run of one bench shares: the table being filled and how each run is made."""

    bench: BenchResult
    pipeline: Pipeline
    pipelines: dict[str, Pipeline]  # the model variants' own pipelines
    settings: EvalSettings
    stage1: Stage1Options | None
    models: Stage1Models | None
    restart: bool
    report: bool
    progress: ProgressHooks | None


def run_bench(
    root_dir: str | Path,
    out_dir: str | Path,
    pipeline: Pipeline,
    settings: EvalSettings | None = None,
    *,
    stage1: Stage1Options | None = None,
    ablations: Sequence[str] = (),
    sizes: Sequence[float] = SIZE_SWEEP,
    datasets: Sequence[str] | None = None,
    categories: Mapping[str, Sequence[str]] | None = None,
    restart: bool = False,
    report: bool = True,
    progress: ProgressHooks | None = None,
    on_run: Callable[[str, Variant], None] | None = None,
    load_model: Callable[[str, str, Pipeline], Any] = load_stage2_model,
) -> BenchResult:
    """Evaluate every dataset found under ``root_dir`` (or the named ``datasets``) and each
    ablation variant; write the bench table. ``categories`` maps a dataset to the categories to
    evaluate (default: all; the ablation variants on MVTec AD: the paper's textures when present,
    while the default variant still covers every category). ``load_model(kind, name, pipeline)``
    loads the detector or segmenter of a ``detector=NAME`` / ``segmenter=NAME`` variant.
    """
    settings = settings or EvalSettings()
    variants = ablation_variants(
        ablations, settings, sizes, prompt_style=stage1.prompt_style if stage1 is not None else DEFAULT_PROMPT_STYLE
    )
    if any(v.wrong_tag for v in variants) and stage1 is None:
        raise ValueError("the wrong-tag ablation runs stage 1 with wrong object tags: it needs stage-1 options")
    if any(v.prompt_style for v in variants) and stage1 is None:
        raise ValueError("the prompt-style ablation runs stage 1 with the other prompt style: it needs stage-1 options")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    found = _bench_folders(root_dir, datasets)
    bench = BenchResult(out, variants, found)
    pipelines = _variant_pipelines(variants, pipeline, load_model)
    counts = {v.n_references if v.n_references is not None else settings.n_references for v in variants}
    if len(counts) > 1:  # one test set for every column: the one the largest reference count leaves
        bench.test_pool_references = max(counts)
        settings = replace(settings, test_pool_references=max(counts))
    models = Stage1Models(stage1, pipeline.detector) if stage1 is not None else None
    runs = _BenchRuns(bench, pipeline, pipelines, settings, stage1, models, restart, report, progress)
    for name, folder in found.items():
        if bench.stopped is not None:
            break
        _bench_dataset(runs, name, folder, list((categories or {}).get(name, ())), on_run)
    try:
        write_bench(bench)
    except OSError as exc:
        if not is_disk_full(exc):
            raise
        logger.error("%s: cannot write the bench tables: %s", out, exc)
        bench.stopped = bench.stopped or stop_reason(exc)
    return bench


def _bench_folders(root_dir: str | Path, datasets: Sequence[str] | None) -> dict[str, Path]:
    """The dataset folders the bench runs: those found under ``root_dir``, or the named ``datasets``
    (each must be a bench dataset and found); DatasetError when there is none."""
    found = find_datasets(root_dir)
    if datasets:
        unknown = [d for d in datasets if d not in DATASET_FOLDERS]
        if unknown:
            raise ValueError(f"unknown dataset {', '.join(unknown)}; the bench knows {', '.join(BENCH_DATASETS)}")
        missing = [d for d in datasets if d not in found]
        if missing:
            raise DatasetError(f"{root_dir}: no folder found for {', '.join(missing)} (found: {', '.join(found) or 'none'})")
        found = {d: found[d] for d in datasets}
    if not found:
        raise DatasetError(
            f"{root_dir}: no dataset folder found; expected sub-folders such as MVTecAD, MPDD, BTAD, KolektorSDD, "
            "Magnetic-tile-defect, DTD-Synthetic, DAGM2007"
        )
    return found


def _bench_dataset(
    runs: _BenchRuns, name: str, folder: Path, wanted: list[str], on_run: Callable[[str, Variant], None] | None
) -> None:
    """Every variant of one dataset (the ``wanted`` categories, default all), into ``OUT/<name>/``;
    a dataset that cannot be read is recorded as the bench's error."""
    bench = runs.bench
    try:
        loader = get_dataset(name, folder)
        available = loader.categories()
    except DatasetError as exc:
        logger.error("%s", exc)
        bench.errors.setdefault(name, {})["*"] = str(exc)
        return
    select_categories(loader, wanted, runs.settings.protocol)  # an unknown name: one line listing the valid ones
    chosen = wanted or None
    ablation_chosen = chosen
    if not wanted and len(bench.variants) > 1 and name in ABLATION_CATEGORIES:
        textures = [c for c in ABLATION_CATEGORIES[name] if c in available]
        if textures and len(textures) < len(available):
            ablation_chosen = textures
            bench.ablation_categories[name] = textures
        elif not textures:
            bench.notes.append(
                f"{loader.title}: none of the paper's ablation categories ({', '.join(ABLATION_CATEGORIES[name])}) "
                f"is in {folder}; the ablations use every category found ({', '.join(available)})."
            )
    for variant in bench.variants:
        if on_run:
            on_run(name, variant)
        variant_chosen = chosen if variant is DEFAULT_VARIANT else ablation_chosen
        try:
            result = _bench_variant(runs, name, loader, variant, variant_chosen, available, wanted)
        except DatasetError as exc:
            logger.error("%s %s: %s", name, variant.name, exc)
            bench.errors.setdefault(name, {})[variant.name] = str(exc)
            continue
        if result is None:  # the prompt-transfer runs
            continue
        bench.results.setdefault(name, {})[variant.name] = result
        if result.stopped is not None:  # the disk is full: no further run
            bench.stopped = result.stopped
            bench.notes.append(f"The bench stopped early ({result.stopped}) in {name} {variant.name}; run it again to finish.")
            break


def _bench_variant(
    runs: _BenchRuns,
    name: str,
    loader: Any,
    variant: Variant,
    chosen: list[str] | None,
    available: list[str],
    wanted: list[str],
) -> DatasetResult | None:
    """One column of one dataset into ``OUT/<name>/<variant>/``: its evaluation, or None for the
    prompt-transfer variant (whose runs go to the bench's transfer matrix)."""
    bench, settings, stage1 = runs.bench, runs.settings, runs.stage1
    ds_out = bench.out_dir / name
    v_settings = variant.settings(settings)
    profiles_dir = ds_out / variant.profiles_dir_name()
    notes = [] if variant is DEFAULT_VARIANT else [f"Bench variant '{variant.name}': {variant.label}."]
    if bench.test_pool_references is not None:
        notes.append(
            f"Bench: every column is scored on the same test images, those left after drawing "
            f"{bench.test_pool_references} references (where the references come from the normal test images)."
        )
    if variant.transfer:
        transfer_chosen = transfer_categories(name, available, wanted)
        transfer, more = _run_transfer(
            loader, ds_out, transfer_chosen, runs.pipeline, v_settings, restart=runs.restart, report=runs.report,
            progress=runs.progress, notes=notes,
        )
        bench.transfer[name] = transfer
        bench.notes.extend(f"{loader.title} prompt-transfer: {n}." for n in more)
        return None
    if variant.wrong_tag:
        assert stage1 is not None and runs.models is not None
        wrong = _wrong_tag_profiles(
            loader, chosen or available, settings, ds_out / DEFAULT_VARIANT.profiles_dir_name(), profiles_dir, stage1, runs.models
        )
        notes.append("Wrong object tags used: " + ", ".join(f"{c} -> {t}" for c, t in wrong.items()) + ".")
    v_stage1 = stage1
    if variant.prompt_style is not None:
        assert stage1 is not None
        v_stage1 = replace(stage1, prompt_style=variant.prompt_style)
        if stage1.llm == "knowledge":
            notes.append("The knowledge vocabulary answers without messages: this column equals the default's.")
    return evaluate_dataset(
        loader,
        None,
        ds_out / variant.name,
        runs.pipelines.get(variant.name, runs.pipeline),
        v_settings,
        stage1=v_stage1,
        stage1_models=runs.models,
        categories=chosen,
        profiles_dir=profiles_dir,
        restart=runs.restart,
        report=runs.report,
        progress=runs.progress,
        extra_notes=notes,
    )
