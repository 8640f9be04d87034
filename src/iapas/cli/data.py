"""``iapas data summary``: check that a dataset download is complete before spending GPU hours."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import typer

from rich.markup import escape

from iapas.cli.common import QuietOption, VerboseOption, console, fail, setup_logging
from iapas.data.base import DEFAULT_PROTOCOL
from iapas.data.registry import dataset_names
from iapas.workflows.summary import summary_help


def register(app: typer.Typer) -> None:
    data_app = typer.Typer(help="Benchmark datasets: check a download.", no_args_is_help=True, rich_markup_mode="markdown")
    data_app.command("summary", help=summary_help())(summary_cmd)
    app.add_typer(data_app, name="data")


# The folder dataset's layout, shared by 'data summary' and 'evaluate'.
NormalOpt = typer.Option("good", "--normal", help="folder dataset: the normal images' folder.")
AnomalousOpt = typer.Option("defect", "--anomalous", help="folder dataset: the anomalous images' folder.")
MasksOpt = typer.Option("masks", "--masks", help="folder dataset: the masks' folder.")
MaskPatternOpt = typer.Option("{stem}_mask.png", "--mask-pattern", help="folder dataset: mask file name, e.g. '{stem}.png'.")
ReferenceDirOpt = typer.Option(None, "--reference-dir", help="folder dataset: a folder of normal references.")


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
        from iapas.workflows.evaluate import calibration_count, folder_options

        plan = dict(limit=limit, calibration_images=calibration_count(calibration_images, false_alarm_rate),
                    false_alarm_rate=false_alarm_rate, calibration_from_test=calibration_from_test)
        _summary(dataset, root, as_json, categories, protocol, n_references, seed, check,
                 folder_options(normal, anomalous, masks, mask_pattern, reference_dir), plan)
    finally:
        data_logger.setLevel(level)


def _summary(
    dataset: str, root: Path, as_json: bool, categories: str | None, protocol: str, n_references: int, seed: int,
    check: bool, folder_options: dict[str, object], plan: dict[str, object] | None = None,
) -> None:
    """Print the summary (:func:`iapas.workflows.summary.summarize_dataset`); exit 1 on a problem."""
    from iapas.data import DatasetError, MaskError
    from iapas.workflows.summary import summarize_dataset

    try:
        found = summarize_dataset(dataset, root, categories, protocol, n_references, seed, check, folder_options, plan)
    except (DatasetError, MaskError, ValueError, OSError) as exc:
        raise fail(str(exc)) from None
    for note in found.notes:
        console.print(f"[yellow]note:[/] {escape(note)}", highlight=False, soft_wrap=True)
    if found.empty_masks:
        console.print(
            f"[yellow]empty masks:[/] {len(found.empty_masks)} anomalous images have a mask file without any defect pixel "
            "(they count as anomalous images, all their pixels as normal):",
            highlight=False,
            soft_wrap=True,
        )
        for path in found.empty_masks:
            console.print(f"  {escape(path)}", highlight=False, soft_wrap=True)
    problems = found.problems
    for problem in problems[:20]:
        console.print(f"[bold red]problem:[/] {escape(problem)}", highlight=False, soft_wrap=True)
    if len(problems) > 20:
        console.print(f"[bold red]... and {len(problems) - 20} more problems[/]")
    if as_json:
        data: dict[str, object] = {"dataset": found.name, "protocol": protocol, "categories": found.categories}
        if check:
            data["problems"] = problems
            data["empty_masks"] = found.empty_masks
        typer.echo(json.dumps(data))
    else:
        _print_table(found.title, str(root), protocol, found.categories)
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
