"""Evaluation and bench set-up: the options of ``iapas evaluate`` / ``iapas bench`` (or of a Python
caller, by the same names) -> :class:`~iapas.evaluation.EvalSettings`, the stage-1 options, the
stage-2 precision and the dataset checked before any model loads.

``options`` is a mapping of the commands' parameter names (``mode``, ``dtype``, ``references``,
``tags``, ``object_in_caption``, ...); a name a command does not have takes its default. Bad
values raise ValueError (or the dataset's and run folder's own errors) with a one-line message.
"""

from __future__ import annotations
from iapas.core.ops import DEFAULT_SIZE_THRESHOLD

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: The detector's and SAM's precision in evaluate and bench when --dtype is not given (the reference ran float32).
EVAL_DTYPE = "float32"

#: EvalSettings fields taken from the options as they are (``references`` is ``n_references``).
SETTINGS_FIELDS = (
    "protocol", "mode", "size_threshold", "size_filter", "caption", "seed", "eval_size", "limit", "batch_size",
    "max_pixels", "image_norm", "image_score", "false_alarm_rate", "save_full_maps", "calibration_from_test",
)
#: Stage1Options fields taken from the options as they are.
STAGE1_FIELDS = (
    "tagger", "tagger_model", "top_k", "llm", "llm_model", "llm_base_url", "llm_timeout", "llm_retries", "llm_fallback",
    "knowledge_file", "object_join", "prompt_style", "text_processing", "seed", "device",
)


def calibration_count(n: int | None, rate: float) -> int:
    """--calibration-images, or by default the fewest images the conformal threshold needs."""
    from iapas.product.decision import images_needed

    return images_needed(rate) if n is None else n


def split_list(values: list[str] | None) -> list[str]:
    """The words of a comma-separated, repeatable option."""
    return [v.strip() for item in values or [] for v in item.split(",") if v.strip()]


def folder_options(normal: str, anomalous: str, masks: str, mask_pattern: str, reference_dir: str | None) -> dict[str, object]:
    """The folder dataset's layout options, as :func:`iapas.data.get_dataset` takes them."""
    return dict(normal=normal, anomalous=anomalous, masks=masks, mask_pattern=mask_pattern, references=reference_dir)


def stage1_options(mode: str, **values: Any) -> Any:
    """Stage1Options for mode iapas (None for base); ``tags`` and ``prompts`` as typed (comma
    separated). A bad combination raises ValueError."""
    from iapas.core.caption import split_word_list
    from iapas.prompts.resources import Stage1Options

    if mode != "iapas":
        return None
    tags, prompts = values.pop("tags"), values.pop("prompts")
    return Stage1Options(
        tags=split_word_list(tags) if tags else None,
        nouns=split_word_list(prompts) if prompts is not None else None,
        **values,
    )


@dataclass(frozen=True)
class Setup:
    """What a run is set up with: the evaluation settings, stage 1's options (None in mode base)
    and stage 2's precision."""

    settings: Any
    stage1: Any
    dtype: str


def prepare(options: Mapping[str, Any]) -> Setup:
    """The settings, stage-1 options and stage-2 precision of evaluate's or bench's options:
    --dtype, when given, is every model's precision; else stage 2 runs in :data:`EVAL_DTYPE`
    and stage 1 in auto."""
    from iapas.evaluation.settings import EvalSettings

    o = options
    values = {k: o[k] for k in SETTINGS_FIELDS if k in o}
    if "false_alarm_rate" in o:
        values["calibration_images"] = calibration_count(o.get("calibration_images"), o["false_alarm_rate"])
    settings = EvalSettings(n_references=o["references"], **values)
    size = o["size_threshold"]
    stage1 = stage1_options(
        o["mode"], tags=o["tags"], prompts=o.get("prompts"), object_tag=o.get("object_tag"),
        include_object_tag=o["object_in_caption"], size_threshold=size if size is not None else DEFAULT_SIZE_THRESHOLD,
        dtype=o["dtype"] or "auto", **{k: o[k] for k in STAGE1_FIELDS},
    )
    return Setup(settings, stage1, o["dtype"] or EVAL_DTYPE)


def open_dataset(options: Mapping[str, Any], settings: Any, config: Any) -> Any:
    """evaluate's dataset loader, checked before any model loads: the categories (a wrong -c is
    one line), the output folder (one made with other settings or models, by the signature of
    ``config``, the stage-2 settings the run will load, is refused unless ``restart``) and a
    fixed caption the detector cannot read."""
    from iapas.data import canonical_name, get_dataset
    from iapas.engine.signature import RunModels
    from iapas.evaluation.plan import select_categories
    from iapas.evaluation.runfolder import check_existing_run, run_signature

    o = options
    name = canonical_name(o["dataset"])
    layout = [o[k] for k in ("normal", "anomalous", "masks", "mask_pattern", "reference_dir")]
    loader = get_dataset(name, o["root"], **(folder_options(*layout) if name == "folder" else {}))
    select_categories(loader, o["categories"], o["protocol"])
    if not o["restart"]:
        check_existing_run(o["out"], run_signature(loader.name, settings, config, RunModels.named(config)))
    if o["caption"] and o["mode"] == "iapas":
        from iapas.models.detector import check_caption_length

        check_caption_length(o["caption"], o["detector"])
    return loader


def bench_categories(values: list[str] | None) -> dict[str, list[str]]:
    """'mvtec:carpet,grid' (repeatable) -> {'mvtec': ['carpet', 'grid']}; each name a plain one."""
    from iapas.core.names import check_name
    from iapas.data import canonical_name

    out: dict[str, list[str]] = {}
    for item in values or []:
        if ":" not in item:
            raise ValueError(f"--categories takes DATASET:cat1,cat2 (e.g. mvtec:carpet,grid), got {item!r}")
        name, cats = item.split(":", 1)
        key = canonical_name(name)
        out.setdefault(key, []).extend(check_name(c, f"--categories {name}:") for c in split_list([cats]))
    return out


def check_bench_categories(root_dir: Path, per_dataset: dict[str, list[str]], protocol: str) -> None:
    """Refuse a category a dataset of ``root_dir`` does not have (its valid names in the message)."""
    from iapas.data import canonical_name, get_dataset
    from iapas.evaluation.bench import find_datasets
    from iapas.evaluation.plan import select_categories

    if not per_dataset:
        return
    found = find_datasets(root_dir)
    for dataset, names in per_dataset.items():
        name = canonical_name(dataset)
        if name in found and names:
            select_categories(get_dataset(name, found[name]), names, protocol)
