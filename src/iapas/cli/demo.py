"""``iapas demo``: a complete run on generated images, with the real models when the hub is
reachable and tiny random ones otherwise (the demo itself: :mod:`iapas.workflows.demo`)."""

from __future__ import annotations

from pathlib import Path

import typer

from iapas.cli.common import console, fail, load_pipeline, setup_logging
from iapas.cli.options import shared
from iapas.workflows.options import LOGGING, Settings


def register(app: typer.Typer) -> None:
    app.command("demo")(demo_cmd)


@shared("device", *LOGGING)
def demo_cmd(
    out: Path = typer.Option(Path("iapas-demo"), "--out", "-o", help="Folder for the example images, models and results: new, empty, or an earlier demo's (redone)."),
    detector: str = typer.Option(None, help="Use this Grounding DINO (hub id or folder)."),
    segmenter: str = typer.Option(None, help="Use this SAM (hub id or folder)."),
    tiny: bool = typer.Option(False, "--tiny", help="Tiny random models (no download; the maps are noise)."),
    full: bool = typer.Option(False, "--full", help="SAM ViT-H, the paper's (2.5 GB), instead of ViT-B."),
    settings: Settings = None,  # type: ignore[assignment]
) -> None:
    """Run stage 2 once on generated tile images, with a hand-made 'tile' profile.

    When the Hugging Face hub is reachable it downloads and runs the real models (Grounding DINO
    tiny and SAM ViT-B, about 1 GB; --full for SAM ViT-H). Offline (HF_HUB_OFFLINE set, or no
    answer from the hub) or with --tiny it builds tiny RANDOM models instead: their maps are
    noise, and only show that the installation works and what the outputs look like.
    --detector/--segmenter use the models given (hub ids or folders).
    """
    setup_logging(settings.verbose, settings.quiet)
    from iapas.cli.segment import print_summary
    from iapas.engine.runner import run_segmentation
    from iapas.pipeline.stage2 import PipelineConfig
    from iapas.workflows.demo import TINY, check_demo_out, choose_demo_models, demo_models_line, demo_profile, make_example_images

    try:
        check_demo_out(out)
    except ValueError as exc:
        raise fail(str(exc)) from None
    with console.status("checking the Hugging Face hub"):
        chosen = choose_demo_models(detector, segmenter, tiny=tiny, full=full)
    paths = make_example_images(out / "images")
    detector, segmenter = chosen.detector, chosen.segmenter
    if chosen.noise:
        from iapas.testing import make_tiny_grounding_dino, make_tiny_sam

        with console.status("building tiny random models"):
            if detector == TINY:
                detector = str(make_tiny_grounding_dino(out / "models" / "grounding-dino"))
            if segmenter == TINY:
                segmenter = str(make_tiny_sam(out / "models" / "sam"))
    profile = demo_profile(out)
    if not settings.quiet and not chosen.noise:  # a first run downloads: show it
        from transformers.utils import logging as hf_logging

        hf_logging.enable_progress_bar()
        console.print(f"loading {detector} and {segmenter} (downloaded on the first run)", highlight=False)
    pipeline = load_pipeline(PipelineConfig(detector=detector, segmenter=segmenter, device=settings.device), status=None)
    summary = run_segmentation(paths, pipeline, profile, out / "results", restart=True)
    print_summary(summary, out / "results", 0)
    console.print(f"profile: {out / 'tile.yaml'}; overlays: {out / 'results' / 'overlays'}", highlight=False)
    console.print(demo_models_line(chosen, detector, segmenter), markup=False, highlight=False, soft_wrap=True)
    if not summary.ok:
        raise typer.Exit(1)
