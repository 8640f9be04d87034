"""``iapas export``: a run's results in other tools' formats (``coco``: masks for annotation tools)."""

from __future__ import annotations

from pathlib import Path

import typer

from iapas.cli.common import QuietOption, VerboseOption, console, fail, setup_logging

export_app = typer.Typer(help="Export a run's masks (coco) or the models (openvino) for other tools.", no_args_is_help=True, rich_markup_mode=None)


@export_app.command("coco")
def coco_cmd(
    run_dir: Path = typer.Argument(..., help="A segment folder, an evaluate folder or a station store (serve --store)."),
    out: Path = typer.Option(..., "--out", "-o", help="The COCO instances JSON file to write."),
    boxes_only: bool = typer.Option(False, "--boxes-only", help="Boxes without masks (for runs made before masks were kept)."),
    verbose: bool = VerboseOption,
    quiet: bool = QuietOption,
) -> None:
    """Write the kept instances of a run as a COCO instances file.

    One image per segmented image (its verdict and scores as attributes), one
    annotation per kept box: its SAM mask as COCO RLE, its box, its phrase as
    the category, its score. CVAT reads it as COCO 1.0 (see the docs' how-to
    "Export masks to CVAT").
    """
    setup_logging(verbose, quiet)
    from iapas.evaluation.coco import KIND_WORDS, ExportError, export_coco

    try:
        summary = export_coco(run_dir, out, boxes_only)
    except ExportError as exc:
        raise fail(str(exc)) from None
    skipped = f", {summary.skipped} failed image(s) left out" if summary.skipped else ""
    console.print(f"wrote {out}: {summary.images} image(s), {summary.annotations} annotation(s), "
                  f"{summary.categories} categories from {KIND_WORDS[summary.kind]}{skipped}", highlight=False, soft_wrap=True)


def register(app: typer.Typer) -> None:
    app.add_typer(export_app, name="export")
