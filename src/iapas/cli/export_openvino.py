"""``iapas export openvino``: the models as OpenVINO IR ahead of time (see iapas.workflows.export_openvino)."""

from __future__ import annotations

from pathlib import Path

import typer

from iapas.cli.common import QuietOption, VerboseOption, console, fail, setup_logging
from iapas.models.registry import DEFAULT_DETECTOR, DEFAULT_SEGMENTER


def openvino_cmd(
    detector: str = typer.Option(DEFAULT_DETECTOR, "--detector", help="Grounding DINO / MM-Grounding-DINO / LLMDet."),
    segmenter: str = typer.Option(DEFAULT_SEGMENTER, "--segmenter", help="SAM or SAM-HQ; 'none' to skip it."),
    out: Path = typer.Option(..., "--out", help="The IR cache folder; runs read it as $IAPAS_OPENVINO_CACHE."),
    image_size: list[str] = typer.Option(["900x900"], "--image-size", help="HxW of the images runs will see "
                                         "(repeat): the detector has one graph per resized shape."),
    ov_int8: bool = typer.Option(False, "--ov-int8", help="The detector's weights as int8 (as --ov-int8 runs)."),
    verbose: bool = VerboseOption, quiet: bool = QuietOption,
) -> None:
    """Convert the detector and SAM to OpenVINO IR once, for --runtime openvino runs."""
    setup_logging(verbose, quiet)
    from iapas.models.loading import ModelLoadError, one_line
    from iapas.workflows.export_openvino import export_openvino, parse_size

    try:
        report = export_openvino(detector, None if segmenter == "none" else segmenter, out,
                                 [parse_size(s) for s in image_size], ov_int8)
    except (ValueError, ModelLoadError, RuntimeError) as exc:
        raise fail(one_line(exc)) from None
    console.print(f"{len(report.entries)} IR entries in {out} ({report.seconds:.0f} s): IAPAS_OPENVINO_CACHE={out}")


def register(export_app: typer.Typer) -> None:
    export_app.command("openvino")(openvino_cmd)
