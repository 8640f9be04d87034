"""The benchmark: every dataset found under a folder, and the paper's ablations, side by side.

``run_bench(root_dir, out_dir, pipeline, settings, stage1=..., ablations=[...])`` finds the
paper's seven datasets under ``root_dir`` (:func:`find_datasets`), evaluates each variant of
each dataset into ``OUT/<dataset>/<variant>/`` with :func:`~iapas.evaluation.run.evaluate_dataset`
and writes the paper-style table (one row per dataset: mean pixel AP and F1-max of each variant)
as ``OUT/bench.{md,csv,json,html}``.

Variants (``default`` is always run, first):

=============  =====================================================================================
ablation       variants
=============  =====================================================================================
references     ``references-1``: stage 1 from 1 reference image instead of 10
prompt         ``prompt-fixed``: the fixed caption 'defect . abnormal .' instead of the LLM's, with
               the object tag and the size filter kept (only the prompt changes)
size-filter    ``size-filter-off``: every box kept
size-sweep     ``size-0.5`` ... ``size-1.5``: size thresholds (the default column is 0.8)
wrong-tag      ``wrong-tag``: stage 1 run with each category's object tag replaced by another
               category's (never the category itself or its true tag; else an unrelated everyday
               object such as 'banana'), to see how gracefully it fails
prompt-style   ``prompt-inspector`` (or ``prompt-reference`` when the default column uses the
               inspector style): stage 1 asks the LLM with the other prompt style's messages
prompt-        ``prompt-transfer``: each category segmented with the stage-1 profile (object tag,
transfer       object size, caption) of every other category, reported as a matrix (rows: the
               category segmented, columns: whose profile) next to the own-profile column; on
               MVTec AD over textures and objects (carpet, leather, bottle, screw) where present
detector=NAME  ``detector-<name>``: stage 2 with another detector (a table name of
               :mod:`iapas.models.registry`, a hub id or a folder), the default column's profiles
segmenter=     ``segmenter-<name>``: the same with another segmenter; both are repeatable, each
NAME           model loaded once for every dataset and recorded by its resolved id
=============  =====================================================================================

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

import json
import logging
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from iapas.data import DatasetError, get_dataset
from iapas.data.registry import guess_dataset
from iapas.evaluation.core import DatasetResult, EvalSettings, ProgressHooks
from iapas.evaluation.run import evaluate_dataset
from iapas.evaluation.profiles import Stage1Models, Stage1Options, get_profile, profile_path, wrong_object_tags
from iapas.io import atomic_path, atomic_write_text
from iapas.pipeline import Pipeline
from iapas.storage import is_disk_full, stop_reason
from iapas.prompts.caption import BASE_CAPTION
from iapas.prompts.llm import DEFAULT_PROMPT_STYLE, PROMPT_STYLES

logger = logging.getLogger(__name__)

# The paper's seven datasets, in its order, with the folder names they are downloaded as
# (compared lowercase, without punctuation).
DATASET_FOLDERS: dict[str, tuple[str, ...]] = {
    "mvtec": ("mvtecad", "mvtec", "mvtecanomalydetection"),
    "mpdd": ("mpdd",),
    "btad": ("btad", "beantechanomalydetection", "btechdatasettransformed", "btechdataset"),
    "ksdd1": ("ksdd1", "ksdd", "kolektorsdd", "kolektorsdd1", "kolektor"),
    "mtd": ("mtd", "magnetictiledefect", "magnetictile", "magnetictilesurfacedefects"),
    "dtd": ("dtdsynthetic", "dtd"),
    "dagm": ("dagm2007", "dagm"),
}
BENCH_DATASETS: tuple[str, ...] = tuple(DATASET_FOLDERS)
ABLATIONS: tuple[str, ...] = (
    "references", "prompt", "size-filter", "size-sweep", "wrong-tag", "prompt-style", "prompt-transfer"
)
# ``--ablation detector=NAME`` / ``segmenter=NAME``: a column per model, the rest as the default's
MODEL_ABLATIONS: tuple[str, ...] = ("detector", "segmenter")
ABLATION_CATEGORIES: dict[str, tuple[str, ...]] = {"mvtec": ("carpet", "grid", "leather", "tile", "wood")}
# prompt-transfer: textures and objects, so a texture's profile is tried on objects and back
TRANSFER_CATEGORIES: dict[str, tuple[str, ...]] = {"mvtec": ("carpet", "leather", "bottle", "screw")}
TRANSFER_DIR = "prompt-transfer"
TRANSFER_PROFILES_DIR = "profiles-transfer"
# the metrics of the bench table, per variant
BENCH_METRICS: tuple[str, ...] = ("pixel_ap", "pixel_f1_max", "pixel_f1_max_100")
SIZE_SWEEP: tuple[float, ...] = tuple(round(0.5 + 0.1 * i, 1) for i in range(11))  # 0.5, 0.6, ..., 1.5
DEFAULT_SIZE_THRESHOLD = 0.8

BENCH_MD = "bench.md"
BENCH_CSV = "bench.csv"
BENCH_JSON = "bench.json"
BENCH_HTML = "bench.html"


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


@dataclass(frozen=True)
class Variant:
    """One column of the bench: how it differs from the default evaluation."""

    name: str  # folder name
    label: str  # column label
    n_references: int | None = None
    caption: str | None = None
    size_filter: bool = True
    size_threshold: float | None = None
    wrong_tag: bool = False
    prompt_style: str | None = None  # stage 1's LLM prompt style, when not the default column's
    transfer: bool = False
    detector: str | None = None  # stage 2's detector (resolved hub id or folder), when not the default's
    segmenter: str | None = None  # stage 2's segmenter, when not the default's

    def settings(self, base: EvalSettings) -> EvalSettings:
        return replace(
            base,
            n_references=self.n_references if self.n_references is not None else base.n_references,
            caption=self.caption if self.caption is not None else base.caption,
            size_filter=self.size_filter and base.size_filter,
            size_threshold=self.size_threshold if self.size_threshold is not None else base.size_threshold,
        )

    def profiles_dir_name(self) -> str:
        if self.wrong_tag:
            return "profiles-wrong-tag"
        if self.prompt_style is not None:
            return f"profiles-prompt-{self.prompt_style}"
        if self.n_references is not None:
            return f"profiles-references-{self.n_references}"
        return "profiles"


DEFAULT_VARIANT = Variant("default", "IAP-AS")


def is_ablation(ablation: str) -> bool:
    """Whether ``ablation`` is one of :data:`ABLATIONS` or ``detector=NAME`` / ``segmenter=NAME``."""
    kind, sep, value = ablation.partition("=")
    return ablation in ABLATIONS or (bool(sep) and kind in MODEL_ABLATIONS and bool(value.strip()))


def _model_variant(kind: str, value: str, taken: set[str]) -> Variant:
    """The column of ``--ablation kind=value``: its model by resolved id, its folder and label by
    the name typed (a folder's or hub id's last part), made unique among ``taken``."""
    from iapas.models.registry import resolve

    value = value.strip()
    resolved = resolve(kind, value)
    short = re.sub(r"[^A-Za-z0-9._-]+", "-", Path(value.rstrip("/\\")).name or value).strip("-.") or kind
    name, i = f"{kind}-{short}", 2
    while name in taken:
        name, i = f"{kind}-{short}-{i}", i + 1
    return Variant(name, f"{kind} {short}" + (f" ({i - 1})" if i > 2 else ""), **{kind: resolved})


def ablation_variants(
    ablations: Sequence[str], base: EvalSettings, sizes: Sequence[float] = SIZE_SWEEP, *,
    prompt_style: str = DEFAULT_PROMPT_STYLE,
) -> list[Variant]:
    """The variants of ``ablations`` (see the module docstring), the default first;
    ``prompt_style`` is the default column's (the prompt-style variant takes the other one)."""
    unknown = [a for a in ablations if not is_ablation(a)]
    if unknown:
        raise ValueError(
            f"unknown ablation {', '.join(unknown)}; choose from {', '.join(ABLATIONS)}, detector=NAME or segmenter=NAME"
        )
    if ablations and base.mode != "iapas":
        raise ValueError("the ablations vary IAP-AS (profiles, prompt, size filter): use mode 'iapas'")
    variants = [DEFAULT_VARIANT]
    default_size = base.size_threshold if base.size_threshold is not None else DEFAULT_SIZE_THRESHOLD
    for ablation in dict.fromkeys(ablations):
        if ablation == "references":
            one = 1 if base.n_references != 1 else 10
            variants.append(Variant(f"references-{one}", f"{one} reference{'s' if one > 1 else ''}", n_references=one))
        elif ablation == "prompt":
            variants.append(Variant("prompt-fixed", "fixed prompt", caption=BASE_CAPTION))
        elif ablation == "size-filter":
            variants.append(Variant("size-filter-off", "no size filter", size_filter=False))
        elif ablation == "size-sweep":
            for t in sizes:
                if not t > 0:
                    raise ValueError(f"size thresholds must be > 0, got {t}")
                if math.isclose(t, default_size):
                    continue  # the default column
                variants.append(Variant(f"size-{t:g}", f"size {t:g}", size_threshold=float(t)))
        elif ablation == "wrong-tag":
            variants.append(Variant("wrong-tag", "wrong object tag", wrong_tag=True))
        elif ablation == "prompt-style":
            other = next(s for s in PROMPT_STYLES if s != prompt_style)
            variants.append(Variant(f"prompt-{other}", f"{other} prompt", prompt_style=other))
        elif ablation == "prompt-transfer":
            variants.append(Variant("prompt-transfer", "other categories' profiles", transfer=True))
        else:  # detector=NAME, segmenter=NAME
            kind, _, value = ablation.partition("=")
            variants.append(_model_variant(kind, value, {v.name for v in variants}))
    return variants


@dataclass
class BenchResult:
    """The bench table's data: per dataset and variant, the evaluation (or the error)."""

    out_dir: Path
    variants: list[Variant]
    datasets: dict[str, Path]
    results: dict[str, dict[str, DatasetResult]] = field(default_factory=dict)
    errors: dict[str, dict[str, str]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    ablation_categories: dict[str, list[str]] = field(default_factory=dict)  # where the ablations run on fewer categories
    # prompt-transfer: dataset -> source category (whose profile) -> the run of the other categories
    transfer: dict[str, dict[str, DatasetResult]] = field(default_factory=dict)
    test_pool_references: int | None = None  # every column's test set is the one this many references leave
    stopped: str | None = None  # why the bench stopped early (the disk is full), see iapas.storage

    @property
    def failed(self) -> bool:
        runs = [r for by in (self.results, self.transfer) for rs in by.values() for r in rs.values()]
        return self.stopped is not None or bool(self.errors) or any(r.failed for r in runs)

    def transfer_matrix(self, dataset: str) -> dict[str, Any] | None:
        """The prompt-transfer matrix of ``dataset``: ``{"categories": [...], "own": {target: metrics},
        "matrix": {target: {source: metrics}}}`` with metrics ``{pixel_ap, pixel_f1_max, pixel_f1_max_100}``
        (None where not evaluated); ``own`` is the default column's. None without a transfer run."""
        runs = self.transfer.get(dataset)
        if not runs:
            return None
        default = self.results.get(dataset, {}).get(DEFAULT_VARIANT.name)
        sources = list(runs)
        targets = list(dict.fromkeys(sources + [c.name for r in runs.values() for c in r.categories]))

        def pick(result: DatasetResult | None, name: str) -> dict[str, float] | None:
            c = next((c for c in result.categories if c.name == name), None) if result is not None else None
            if c is None or c.metrics is None:
                return None
            return {k: float(getattr(c.metrics, k)) for k in BENCH_METRICS}

        matrix = {t: {s: (pick(runs[s], t) if s != t else None) for s in sources} for t in targets}
        return {"categories": targets, "sources": sources, "own": {t: pick(default, t) for t in targets}, "matrix": matrix}

    def _transfer_mean(self, dataset: str) -> dict[str, Any] | None:
        data = self.transfer_matrix(dataset)
        if data is None:
            return None
        cells = [v for row in data["matrix"].values() for v in row.values() if v is not None]
        out: dict[str, Any] = {}
        for k in BENCH_METRICS:
            finite = [c[k] for c in cells if math.isfinite(c[k])]
            out[k] = sum(finite) / len(finite) if finite else float("nan")
        out["categories"] = len(cells)
        out["failed"] = any(r.failed for r in self.transfer[dataset].values())
        return out

    def rows(self) -> list[dict[str, Any]]:
        rows = []
        for name in self.datasets:
            runs = self.results.get(name, {})
            title = next((r.title for r in runs.values()), name)
            row: dict[str, Any] = {"dataset": title, "name": name}
            for v in self.variants:
                if v.transfer:  # the mean over the matrix's cells (category, other category's profile)
                    row[v.name] = self._transfer_mean(name)
                    continue
                r = runs.get(v.name)
                if r is None:
                    row[v.name] = None
                    continue
                mean = r.mean()
                row[v.name] = {
                    **{k: mean[k] for k in BENCH_METRICS},
                    "seconds_per_image": seconds_per_image(r),
                    "categories": len([c for c in r.categories if c.metrics is not None]),
                    "failed": r.failed,
                }
            rows.append(row)
        return rows

    def column_labels(self) -> list[tuple[str, str]]:
        return [(v.name, v.label) for v in self.variants]


def seconds_per_image(result: DatasetResult) -> float:
    """The mean stage-2 seconds per image of ``result``: each segmented image's recorded timings
    (detection, segmentation, fusion) summed, averaged over every category's images (resumed ones
    included, as recorded when they ran); NaN when no image has timings."""
    times: list[float] = []
    for c in result.categories:
        path = result.out_dir / c.predictions if c.predictions else None
        if path is None or not path.is_file():
            continue
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue  # a torn last line: the evaluation reports it
            timings = record.get("timings") if isinstance(record, dict) and record.get("status") == "ok" else None
            if isinstance(timings, dict) and timings:
                times.append(sum(float(t) for t in timings.values()))
    return sum(times) / len(times) if times else float("nan")


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
    bench = BenchResult(out, variants, found)
    pipelines = _variant_pipelines(variants, pipeline, load_model)
    counts = {v.n_references if v.n_references is not None else settings.n_references for v in variants}
    if len(counts) > 1:  # one test set for every column: the one the largest reference count leaves
        bench.test_pool_references = max(counts)
        settings = replace(settings, test_pool_references=max(counts))
    models = Stage1Models(stage1, pipeline.detector) if stage1 is not None else None
    for name, folder in found.items():
        if bench.stopped is not None:
            break
        ds_out = out / name
        try:
            loader = get_dataset(name, folder)
            available = loader.categories()
        except DatasetError as exc:
            logger.error("%s", exc)
            bench.errors.setdefault(name, {})["*"] = str(exc)
            continue
        wanted = list((categories or {}).get(name, ()))
        unknown = [c for c in wanted if c not in available]
        if unknown:
            raise DatasetError(f"{folder}: no {loader.title} category {', '.join(unknown)}; found: {', '.join(available)}")
        chosen = wanted or None
        ablation_chosen = chosen
        if not wanted and len(variants) > 1 and name in ABLATION_CATEGORIES:
            textures = [c for c in ABLATION_CATEGORIES[name] if c in available]
            if textures and len(textures) < len(available):
                ablation_chosen = textures
                bench.ablation_categories[name] = textures
            elif not textures:
                bench.notes.append(
                    f"{loader.title}: none of the paper's ablation categories ({', '.join(ABLATION_CATEGORIES[name])}) "
                    f"is in {folder}; the ablations use every category found ({', '.join(available)})."
                )
        for variant in variants:
            variant_chosen = chosen if variant is DEFAULT_VARIANT else ablation_chosen
            if on_run:
                on_run(name, variant)
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
                try:
                    runs, more = _run_transfer(
                        loader, ds_out, transfer_chosen, pipeline, v_settings, restart=restart, report=report,
                        progress=progress, notes=notes,
                    )
                except DatasetError as exc:
                    logger.error("%s %s: %s", name, variant.name, exc)
                    bench.errors.setdefault(name, {})[variant.name] = str(exc)
                    continue
                bench.transfer[name] = runs
                bench.notes.extend(f"{loader.title} prompt-transfer: {n}." for n in more)
                continue
            try:
                if variant.wrong_tag:
                    assert stage1 is not None and models is not None
                    wrong = _wrong_tag_profiles(
                        loader, variant_chosen or available, settings, ds_out / DEFAULT_VARIANT.profiles_dir_name(), profiles_dir, stage1, models
                    )
                    notes.append("Wrong object tags used: " + ", ".join(f"{c} -> {t}" for c, t in wrong.items()) + ".")
                v_stage1 = stage1
                if variant.prompt_style is not None:
                    assert stage1 is not None
                    v_stage1 = replace(stage1, prompt_style=variant.prompt_style)
                    if stage1.llm == "knowledge":
                        notes.append("The knowledge vocabulary answers without messages: this column equals the default's.")
                result = evaluate_dataset(
                    loader,
                    None,
                    ds_out / variant.name,
                    pipelines.get(variant.name, pipeline),
                    v_settings,
                    stage1=v_stage1,
                    stage1_models=models,
                    categories=variant_chosen,
                    profiles_dir=profiles_dir,
                    restart=restart,
                    report=report,
                    progress=progress,
                    extra_notes=notes,
                )
            except DatasetError as exc:
                logger.error("%s %s: %s", name, variant.name, exc)
                bench.errors.setdefault(name, {})[variant.name] = str(exc)
                continue
            bench.results.setdefault(name, {})[variant.name] = result
            if result.stopped is not None:  # the disk is full: no further run
                bench.stopped = result.stopped
                bench.notes.append(f"The bench stopped early ({result.stopped}) in {name} {variant.name}; run it again to finish.")
                break
    try:
        write_bench(bench)
    except OSError as exc:
        if not is_disk_full(exc):
            raise
        logger.error("%s: cannot write the bench tables: %s", out, exc)
        bench.stopped = bench.stopped or stop_reason(exc)
    return bench


def write_bench(bench: BenchResult) -> dict[str, Path]:
    """Write bench.md, bench.csv, bench.json and bench.html into the bench folder."""
    from iapas.evaluation.tables import bench_csv, bench_markdown, pct, transfer_markdown
    from iapas.report import write_bench_report

    out = bench.out_dir
    rows = bench.rows()
    labels = bench.column_labels()
    first = next((r for runs in bench.results.values() for r in runs.values()), None)
    notes = list(bench.notes)
    if first is not None:
        notes.insert(0, first.protocol_sentence())
        s = first.settings
        notes.insert(1, f"Mode {s.mode}; models: detector {first.models.get('detector')}, segmenter {first.models.get('segmenter')}; iapas {first.iapas_version}.")
        if s.limit is not None:
            notes.append(f"Quick check: at most {s.limit} test images per category; not full-benchmark numbers.")
    for name, chosen in bench.ablation_categories.items():
        runs = bench.results.get(name, {})
        title = next((r.title for r in runs.values()), name)
        note = (
            f"{title}: the {DEFAULT_VARIANT.label} column is the mean over every category; the ablation columns are over "
            f"the paper's ablation categories only ({', '.join(chosen)})"
        )
        default = runs.get(DEFAULT_VARIANT.name)
        if default is not None:
            mean = default.mean(chosen)
            note += f"; over those, {DEFAULT_VARIANT.label} has pixel AP {pct(mean['pixel_ap'])}, F1-max {pct(mean['pixel_f1_max'])}"
        notes.append(note + ".")
    if bench.test_pool_references is not None:
        notes.append(
            f"Every column of a dataset is scored on the same test images: the test set is drawn once, with the "
            f"references of the largest count ({bench.test_pool_references}) excluded, where the references come from "
            "the normal test images."
        )
    matrices = {name: m for name in bench.datasets if (m := bench.transfer_matrix(name)) is not None}
    if matrices:
        notes.append(
            "The prompt-transfer column is the mean over the matrix's cells: each category segmented with another "
            "category's stage-1 profile (its object tag, object size and caption); the matrices follow."
        )
    for name, errs in bench.errors.items():
        for variant, message in errs.items():
            notes.append(f"{name} {'' if variant == '*' else variant + ' '}not evaluated: {message}")
    for name, runs in bench.results.items():
        for variant, r in runs.items():
            if r.failed:
                notes.append(f"{name} {variant}: some images or categories failed (see its report).")
    for name, by_source in bench.transfer.items():
        for source, r in by_source.items():
            if r.failed:
                notes.append(f"{name} prompt-transfer from {source}: some images or categories failed (see its report).")
    markdown = bench_markdown(rows, labels, "IAP-AS benchmark", notes)
    for name, matrix in matrices.items():
        title = next((r.title for r in bench.results.get(name, {}).values()), name)
        markdown += "\n" + transfer_markdown(title, matrix)
    paths = {"md": out / BENCH_MD, "csv": out / BENCH_CSV, "json": out / BENCH_JSON, "html": out / BENCH_HTML}
    atomic_write_text(paths["md"], markdown)
    atomic_write_text(paths["csv"], bench_csv(rows, labels))
    data = {
        "variants": [
            {"name": v.name, "label": v.label, **{k: m for k in ("detector", "segmenter") if (m := getattr(v, k)) is not None}}
            for v in bench.variants
        ],
        "datasets": {k: str(v) for k, v in bench.datasets.items()},
        "rows": rows,
        "errors": bench.errors,
        "ablation_categories": bench.ablation_categories,
        "test_pool_references": bench.test_pool_references,
        "prompt_transfer": matrices,
        "notes": notes,
    }
    atomic_write_text(paths["json"], json.dumps(_finite(data), indent=2) + "\n")
    links = {
        f"{name} / {variant}": f"{name}/{variant}/report.html"
        for name, runs in bench.results.items()
        for variant in runs
        if (out / name / variant / "report.html").exists()
    }
    links.update(
        {
            f"{name} / {TRANSFER_DIR} from {source}": f"{name}/{TRANSFER_DIR}/from-{source}/report.html"
            for name, by_source in bench.transfer.items()
            for source in by_source
            if (out / name / TRANSFER_DIR / f"from-{source}" / "report.html").exists()
        }
    )
    write_bench_report(paths["html"], "IAP-AS benchmark", markdown, links)
    return paths


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value
