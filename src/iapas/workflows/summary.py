"""A dataset download checked before spending GPU hours: what ``iapas data summary`` counts, per
category, as ``iapas evaluate`` will run it (its very plan: references, test images, anomalous
ones, masks, calibration images, defect types), and with ``check`` every mask opened."""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any


@dataclass
class DatasetSummary:
    """The counts per category (one row per part evaluate scores), notes, problems (a reason to
    exit 1) and anomalous images whose mask is empty (named, not a problem)."""

    name: str
    title: str
    protocol: str
    categories: dict[str, dict[str, object]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    empty_masks: list[str] = field(default_factory=list)


def summarize_dataset(
    dataset: str, root: Path, categories: str | None, protocol: str, n_references: int, seed: int, check: bool,
    folder_options: dict[str, object], plan: dict[str, object] | None = None,
) -> DatasetSummary:
    """The summary of ``dataset`` at ``root`` (``categories`` comma separated, None: all); ``plan``
    holds evaluate's limit and calibration options. Raises ValueError (DatasetError, MaskError)
    or OSError with a one-line message."""
    from iapas.data import canonical_name, get_dataset
    from iapas.evaluation.plan import select_categories
    from iapas.evaluation.settings import EvalSettings

    if protocol not in ("full", "paper"):
        raise ValueError(f"--protocol must be 'full' or 'paper', not {protocol!r}")
    name = canonical_name(dataset)
    settings = EvalSettings(protocol=protocol, n_references=n_references, seed=seed, **(plan or {}))  # type: ignore[arg-type]
    loader = get_dataset(name, root, **(folder_options if name == "folder" else {}))
    _check_layout(loader, name, root)
    out = DatasetSummary(name, loader.title, protocol)
    wanted = [c.strip() for c in categories.split(",") if c.strip()] if categories else []
    selection = select_categories(loader, wanted, protocol)  # a wrong -c: one line listing the valid names
    if not categories:
        missing = loader.missing_categories()
        if missing:
            out.notes.append(
                f"{len(missing)} of the {len(loader.expected_categories)} {loader.title} categories are not here: {', '.join(missing)}"
            )
    for category, parts in selection.items():
        _count_category(out, loader, category, parts, settings, check)
    if check:
        from iapas.data.check import empty_folders

        out.problems.extend(f"{f}: empty folder (no image in it)" for d in loader.data_dirs() for f in empty_folders(d))
    return out


def _check_layout(loader: Any, name: str, root: Path) -> None:
    """The dataset's categories can be listed; else its error, with the dataset the folder looks like."""
    from iapas.data import DatasetError
    from iapas.data.registry import guess_datasets

    try:
        loader.categories()
    except DatasetError as exc:
        others = [n for n in guess_datasets(root) if n != name]
        hint = f" (it looks like --dataset {' or '.join(others)})" if others else ""
        raise DatasetError(f"{exc}{hint}") from None


def _count_category(out: DatasetSummary, loader: Any, category: str, parts: Any, settings: Any, check: bool) -> None:
    """One category's rows (KSDD1's folders under the paper protocol: one each), notes and mask checks."""
    from iapas.data.check import check_masks
    from iapas.evaluation.plan import plan_category, planned_tests

    cat, calibration = plan_category(loader, category, settings, parts)  # evaluate's very plan
    for i, part in enumerate(cat.parts()):  # what evaluate scores: KSDD1's folders under the paper protocol
        run = replace(part, test=planned_tests(part, settings))
        row: dict[str, object] = {
            "references": len(run.references),
            "test": len(run.test),
            "anomalous": run.anomalous,
            "with_mask": run.with_mask,
            # the product's calibration images (segmented once), on its first row
            "calibration": len(calibration.test) if calibration is not None and i == 0 else 0,
            "defect_types": run.defect_types,
        }
        if part.product:
            row["product"] = part.product
        out.categories[part.name] = row
    out.notes.extend(f"{category}: {note}" for note in cat.notes)
    if check:
        found = check_masks(cat.test)
        out.problems.extend(found.problems)
        out.empty_masks.extend(str(s.path) for s in found.empty)
        out.problems.extend(f"{part.name}: no test images" for part in cat.parts() if not part.test)


def _code_spans(text: str) -> str:
    """Put path-like words of a layout sentence in markdown code spans (so <, * and _ show as typed)."""

    def span(match: re.Match[str]) -> str:
        word, tail = match.group(1), match.group(2)
        return f"`{word}`{tail}"

    return re.sub(r"(?<!\S)([^\s,;()]*[/<*][^\s,;()]*)([,;)]*)", span, text)


def _layouts_help() -> str:
    from iapas.data.registry import DATASETS

    return "\n".join(f"- **{name}**: {_code_spans(cls.layout)}" for name, cls in DATASETS.items())


def summary_help() -> str:
    """What the summary counts and checks, and each dataset's expected layout (markdown): the
    help of ``iapas data summary``."""
    from iapas.data.registry import aliases_text

    return (
        "Count, per category, the normal references and the test images (anomalous ones, masks, defect types) "
        "of a dataset in its original layout, as iapas evaluate will run them (same default --protocol).\n\n"
        "Run it after a download: a missing category, split or mask folder shows up here, not hours into an "
        "evaluation. Where there is no train split (KSDD1, MTD, or a copy without train/), the references are "
        "drawn from the normal test images (fixed --seed) and left out of the test set.\n\n"
        "'anomalous' counts defective test images (by folder, by label file, or for KSDD1 and KSDD2 by a non-empty "
        "mask); 'with mask' counts the anomalous test images that have a mask file (normal images need none: their "
        "ground truth is all zeros). An anomalous image's mask file may be empty (4 of MTD's MT_Uneven): it still "
        "counts, and --check names it.\n\n"
        "--protocol paper (the default) keeps the test images the paper's reference code used: MVTec AD the whole "
        "test split; BTAD test/ko only; DAGM the labelled (defective) images of Train and Test; MPDD, DTD-Synthetic, "
        "WFDD the defective images; VisA, MTD and KSDD2 every test image (so the same as full); KSDD1 every image, "
        "each kosNN folder its own category (one row per folder; the references are shared). --protocol full: "
        "the whole test split, KSDD1 as one category. The folder dataset has no paper protocol (same as full).\n\n"
        "'calibration' counts the normal images evaluate holds out to calibrate the OK/NG threshold (same "
        "--calibration-images, --false-alarm-rate, --limit; under --protocol paper never test images, so 0 where there "
        "is no normal training split beyond the references, unless --calibration-from-test); --limit counts what a "
        "quick check runs.\n\n"
        "--check opens every mask: an unreadable mask, one of another size than its image, an empty folder (no "
        "image anywhere below it) or a category without test images make it exit 1; anomalous images whose mask is "
        "empty are named too, without failing.\n\n"
        "Expected layouts (ROOT = --root):\n\n" + _layouts_help() + "\n\n"
        "Aliases: " + aliases_text() + "."
    )
