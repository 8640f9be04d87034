"""``iapas testing``: tools for checking an installation without model downloads."""

from __future__ import annotations

from pathlib import Path

import typer

from iapas.cli.common import QuietOption, VerboseOption, console, setup_logging
from iapas.testing.presets import PRESETS

app = typer.Typer(
    help="Offline checks: tiny random models of the real architectures.", no_args_is_help=True, rich_markup_mode=None
)


@app.command("make-tiny-models")
def make_tiny_models_cmd(
    out_dir: Path = typer.Argument(..., help="Folder to write DIR/grounding-dino, DIR/mm-grounding-dino, DIR/sam, DIR/sam-hq, DIR/sam3, DIR/owlv2, DIR/sam2 (and stage 1's tiny models) into."),
    seed: int = typer.Option(0, help="Seed for the random weights."),
    verbose: bool = VerboseOption,
    quiet: bool = QuietOption,
) -> None:
    """Write tiny, randomly initialised models of the real classes (Grounding DINO, MM-Grounding-DINO, SAM, SAM-HQ, SAM 3, OWLv2, SAM 2, ...).

    They load through exactly the code that loads hub models, so
    'iapas segment --detector DIR/grounding-dino --segmenter DIR/sam' checks an offline
    install end to end in seconds. Their outputs are random: never judge quality with them.
    """
    setup_logging(verbose, quiet)
    from iapas.testing import make_tiny_models

    made = make_tiny_models(out_dir, seed=seed)
    for name, path in made.items():
        console.print(f"{name:>15}: {path}")


@app.command("make-random-models")
def make_random_models_cmd(
    out_dir: Path = typer.Argument(..., help="Folder to write one DIR/PRESET folder per preset into."),
    preset: list[str] = typer.Option(
        ..., "--preset", help=f"Preset to write (repeat for several): {', '.join(PRESETS)}."
    ),
    seed: int = typer.Option(0, help="Seed for the random weights."),
    verbose: bool = VerboseOption,
    quiet: bool = QuietOption,
) -> None:
    """Write real-size models with RANDOM weights: the hub models' architectures.

    Each preset has the configuration and processor of its hub model (e.g. sam-vit-huge is
    facebook/sam-vit-huge's, 641 M parameters), so a run costs what the real model costs. The
    OUTPUTS ARE NOISE: use them to measure speed and memory offline, never to judge results.
    Pass a folder as --detector or --segmenter. SAM ViT-H takes about 2.6 GB of disk.
    """
    setup_logging(verbose, quiet)
    from iapas.cli.common import fail
    from iapas.testing.presets import make_random_models

    try:
        made = make_random_models(out_dir, preset, seed=seed)
    except ValueError as exc:
        raise fail(str(exc)) from None
    for name, path in made.items():
        console.print(f"{name:>20}: {path}")
    console.print("note: random weights, the outputs are noise (for speed and memory measurements only)")
