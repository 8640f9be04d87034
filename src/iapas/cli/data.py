"""``iapas data summary``: check that a dataset download is complete before spending GPU hours."""

from __future__ import annotations

import json
import logging
import re
from dataclasses import replace
from pathlib import Path

import typer

from rich.markup import escape

from iapas.cli.common import QuietOption, VerboseOption, console, fail, setup_logging
from iapas.data.base import DEFAULT_PROTOCOL
from iapas.data.registry import DATASETS, aliases_text, dataset_names


def _code_spans(text: str) -> str:
    """Put path-like words of a layout sentence in markdown code spans (so <, * and _ show as typed)."""

    def span(match: re.Match[str]) -> str:
        word, tail = match.group(1), match.group(2)
        return f"`{word}`{tail}"

    return re.sub(r"(?<!\S)([^\s,;()]*[/<*][^\s,;()]*)([,;)]*)", span, text)


def _layouts_help() -> str:
    return "\n".join(f"- **{name}**: {_code_spans(cls.layout)}" for name, cls in DATASETS.items())


SUMMARY_HELP = (
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


def register(app: typer.Typer) -> None:
    data_app = typer.Typer(help="Benchmark datasets: check a download.", no_args_is_help=True, rich_markup_mode="markdown")
    data_app.command("summary", help=SUMMARY_HELP)(summary_cmd)
    app.add_typer(data_app, name="data")


# The folder dataset's layout, shared by 'data summary' and 'evaluate'.
NormalOpt = typer.Option("good", "--normal", help="folder dataset: the normal images' folder.")
AnomalousOpt = typer.Option("defect", "--anomalous", help="folder dataset: the anomalous images' folder.")
MasksOpt = typer.Option("masks", "--masks", help="folder dataset: the masks' folder.")
MaskPatternOpt = typer.Option("{stem}_mask.png", "--mask-pattern", help="folder dataset: mask file name, e.g. '{stem}.png'.")
ReferenceDirOpt = typer.Option(None, "--reference-dir", help="folder dataset: a folder of normal references.")


def folder_options(normal: str, anomalous: str, masks: str, mask_pattern: str, reference_dir: str | None) -> dict[str, object]:
    return dict(normal=normal, anomalous=anomalous, masks=masks, mask_pattern=mask_pattern, references=reference_dir)


def summary_cmd(
    dataset: str = typer.Option(..., "--dataset", "-d", help=f"Dataset: {', '.join(dataset_names())}."),
    root: Path = typer.Option(..., "--root", "-r", help="The dataset's folder, as downloaded."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object on stdout instead of a table."),
    categories: str = typer.Option(None, "--categories", "-c", help="Only these categories, comma separated."),
    protocol: str = typer.Option(
        DEFAULT_PROTOCOL, "--protocol", help="'paper' (the paper's test images, as iapas evaluate) or 'full' (whole test split)."
    ),
    n_references: int = typer.Option(10, "--references", "-n", min=0, help="Number of normal reference images per category."),
    seed: int = typer.Option(0, "--seed", help="Seed for drawing the references (and --limit's subset)."),
    limit: int = typer.Option(None, "--limit", min=1, help="As evaluate's --limit: at most N test (and calibration) images per category."),
    calibration_images: int = typer.Option(
        None, "--calibration-images", min=0, show_default=False,
        help="As evaluate's: normal images held out to calibrate the OK/NG threshold (default: the fewest --false-alarm-rate needs).",
    ),
    false_alarm_rate: float = typer.Option(0.01, "--false-alarm-rate", min=0.0001, max=0.9999, help="As evaluate's."),
    calibration_from_test: bool = typer.Option(False, "--calibration-from-test", help="As evaluate's."),
    check: bool = typer.Option(
        False, "--check", help="Also open every mask (slower): name bad, misfit and empty masks and empty folders; exit 1 on a problem."
    ),
    normal: str = NormalOpt,
    anomalous: str = AnomalousOpt,
    masks: str = MasksOpt,
    mask_pattern: str = MaskPatternOpt,
    reference_dir: str = ReferenceDirOpt,
    verbose: bool = VerboseOption,
    quiet: bool = QuietOption,
) -> None:
    setup_logging(verbose, quiet)
    data_logger = logging.getLogger("iapas.data")
    level = data_logger.level
    if not verbose:
        # Each note printed below repeats a loader warning: say it once.
        data_logger.setLevel(logging.ERROR)
    try:
        from iapas.cli.evaluate import _calibration_count

        plan = dict(limit=limit, calibration_images=_calibration_count(calibration_images, false_alarm_rate),
                    false_alarm_rate=false_alarm_rate, calibration_from_test=calibration_from_test)
        _summary(dataset, root, as_json, categories, protocol, n_references, seed, check,
                 folder_options(normal, anomalous, masks, mask_pattern, reference_dir), plan)
    finally:
        data_logger.setLevel(level)


def _summary(
    dataset: str,
    root: Path,
    as_json: bool,
    categories: str | None,
    protocol: str,
    n_references: int,
    seed: int,
    check: bool,
    folder_options: dict[str, object],
    plan: dict[str, object] | None = None,
) -> None:
    from iapas.data import DatasetError, MaskError, canonical_name, get_dataset
    from iapas.evaluation.plan import plan_category, planned_tests, select_categories
    from iapas.evaluation.settings import EvalSettings
    from iapas.data.check import check_masks, empty_folders
    from iapas.data.registry import guess_datasets

    if protocol not in ("full", "paper"):
        raise fail(f"--protocol must be 'full' or 'paper', not {protocol!r}")
    try:
        name = canonical_name(dataset)
    except ValueError as exc:
        raise fail(str(exc)) from None
    options = folder_options if name == "folder" else {}
    try:
        settings = EvalSettings(protocol=protocol, n_references=n_references, seed=seed, **(plan or {}))  # type: ignore[arg-type]
    except ValueError as exc:
        raise fail(str(exc)) from None
    summary: dict[str, dict[str, object]] = {}
    notes: list[str] = []
    problems: list[str] = []
    empty_masks: list[str] = []
    try:
        loader = get_dataset(name, root, **options)
        try:
            available = loader.categories()
        except DatasetError as exc:
            others = [n for n in guess_datasets(root) if n != name]
            hint = f" (it looks like --dataset {' or '.join(others)})" if others else ""
            raise fail(f"{exc}{hint}") from None
        wanted = [c.strip() for c in categories.split(",") if c.strip()] if categories else []
        selection = select_categories(loader, wanted, protocol)  # a wrong -c: one line listing the valid names
        if not categories:
            missing = loader.missing_categories()
            if missing:
                notes.append(
                    f"{len(missing)} of the {len(loader.expected_categories)} {loader.title} categories are not here: {', '.join(missing)}"
                )
        for category, parts in selection.items():
            cat, calibration = plan_category(loader, category, settings, parts)  # evaluate's very plan
            for i, part in enumerate(cat.parts()):  # what evaluate scores: KSDD1's folders under the paper protocol
                run = replace(part, test=planned_tests(part, settings))
                summary[part.name] = {
                    "references": len(run.references),
                    "test": len(run.test),
                    "anomalous": run.anomalous,
                    "with_mask": run.with_mask,
                    # the product's calibration images (segmented once), on its first row
                    "calibration": len(calibration.test) if calibration is not None and i == 0 else 0,
                    "defect_types": run.defect_types,
                }
                if part.product:
                    summary[part.name]["product"] = part.product
            notes.extend(f"{category}: {note}" for note in cat.notes)
            if check:
                found = check_masks(cat.test)
                problems.extend(found.problems)
                empty_masks.extend(str(s.path) for s in found.empty)
                problems.extend(f"{part.name}: no test images" for part in cat.parts() if not part.test)
        if check:
            problems.extend(f"{f}: empty folder (no image in it)" for d in loader.data_dirs() for f in empty_folders(d))
    except (DatasetError, MaskError, ValueError, OSError) as exc:
        raise fail(str(exc)) from None

    for note in notes:
        console.print(f"[yellow]note:[/] {escape(note)}", highlight=False, soft_wrap=True)
    if empty_masks:
        console.print(
            f"[yellow]empty masks:[/] {len(empty_masks)} anomalous images have a mask file without any defect pixel "
            "(they count as anomalous images, all their pixels as normal):",
            highlight=False,
            soft_wrap=True,
        )
        for path in empty_masks:
            console.print(f"  {escape(path)}", highlight=False, soft_wrap=True)
    for problem in problems[:20]:
        console.print(f"[bold red]problem:[/] {escape(problem)}", highlight=False, soft_wrap=True)
    if len(problems) > 20:
        console.print(f"[bold red]... and {len(problems) - 20} more problems[/]")
    if as_json:
        data: dict[str, object] = {"dataset": name, "protocol": protocol, "categories": summary}
        if check:
            data["problems"] = problems
            data["empty_masks"] = empty_masks
        typer.echo(json.dumps(data))
    else:
        _print_table(loader.title, str(root), protocol, summary)
    if problems:
        raise typer.Exit(1)


def _print_table(title: str, root: str, protocol: str, summary: dict[str, dict[str, object]]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{title} at {root} ({protocol} protocol)")
    table.add_column("category")
    for column in ("references", "test", "anomalous", "with mask", "calibration"):
        table.add_column(column, justify="right")
    table.add_column("defect types")
    for category, row in summary.items():
        table.add_row(
            category,
            str(row["references"]),
            str(row["test"]),
            str(row["anomalous"]),
            str(row["with_mask"]),
            str(row["calibration"]),
            ", ".join(row["defect_types"]),  # type: ignore[arg-type]
        )
    Console().print(table)
