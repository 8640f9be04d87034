"""``iapas demo``: a complete run on generated images, with no download."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import typer

from iapas.cli.common import QuietOption, VerboseOption, console, setup_logging


def register(app: typer.Typer) -> None:
    app.command("demo")(demo_cmd)


def make_example_images(folder: Path, count: int = 4, seed: int = 0) -> list[Path]:
    """Grey tiles with a few dark scratches and spots: a stand-in product, written as PNGs."""
    from PIL import Image, ImageDraw, ImageFilter

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        noise = rng.normal(150, 12, (240, 320)).clip(0, 255).astype(np.uint8)
        image = Image.fromarray(noise).filter(ImageFilter.GaussianBlur(1.5)).convert("RGB")
        draw = ImageDraw.Draw(image)
        draw.rectangle([20, 20, 300, 220], outline=(90, 90, 90), width=3)  # the part's edge
        if i % 2 == 1:  # every other tile is defective
            x, y = (int(v) for v in rng.integers(60, 200, size=2))
            draw.line([x, y, x + 60, y + 25], fill=(40, 40, 40), width=3)
            draw.ellipse([x - 30, y + 30, x - 18, y + 42], fill=(30, 30, 30))
        path = folder / f"tile_{i:02d}.png"
        image.save(path)
        paths.append(path)
    return paths


def demo_cmd(
    out: Path = typer.Option(Path("iapas-demo"), "--out", "-o", help="Folder for the example images, models and results."),
    detector: str = typer.Option(None, help="Use this Grounding DINO (hub id or folder) instead of a tiny random one."),
    segmenter: str = typer.Option(None, help="Use this SAM (hub id or folder) instead of a tiny random one."),
    device: str = typer.Option("auto", help="cpu, cuda, mps or auto."),
    verbose: bool = VerboseOption,
    quiet: bool = QuietOption,
) -> None:
    """Run stage 2 once on generated tile images, with a hand-made 'tile' profile.

    Without --detector/--segmenter it builds tiny RANDOM models (no download), so the maps are
    noise: the demo shows that the installation works and what the outputs look like. Pass real
    models (e.g. --detector IDEA-Research/grounding-dino-tiny --segmenter facebook/sam-vit-base)
    for meaningful maps.
    """
    setup_logging(verbose, quiet)
    from iapas.cli.segment import print_summary
    from iapas.pipeline import Pipeline, PipelineConfig
    from iapas.profile import Profile
    from iapas.runner import run_segmentation

    paths = make_example_images(out / "images")
    if detector is None or segmenter is None:
        from iapas.testing import make_tiny_grounding_dino, make_tiny_sam

        with console.status("building tiny random models"):
            detector = detector or str(make_tiny_grounding_dino(out / "models" / "grounding-dino"))
            segmenter = segmenter or str(make_tiny_sam(out / "models" / "sam"))
    profile = Profile.from_prompts("tile", "tile", ["scratch", "crack", "spot"], stage1={"source": "demo"})
    profile.save(out / "tile.yaml")
    from iapas.cli.common import fail
    from iapas.models.loading import ModelLoadError

    try:
        pipeline = Pipeline.from_config(PipelineConfig(detector=detector, segmenter=segmenter, device=device))
    except (ModelLoadError, ValueError) as exc:
        raise fail(str(exc)) from None
    summary = run_segmentation(paths, pipeline, profile, out / "results", restart=True)
    print_summary(summary, out / "results", 0)
    console.print(f"profile: {out / 'tile.yaml'}; overlays: {out / 'results' / 'overlays'}")
    if not summary.ok:
        raise typer.Exit(1)
