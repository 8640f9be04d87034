"""``iapas testing``: tools for checking an installation without model downloads."""

from __future__ import annotations

from pathlib import Path

import typer

from iapas.cli.common import QuietOption, VerboseOption, console, setup_logging

app = typer.Typer(
    help="Offline checks: tiny random models of the real architectures.", no_args_is_help=True, rich_markup_mode=None
)


@app.command("make-tiny-models")
def make_tiny_models_cmd(
    out_dir: Path = typer.Argument(..., help="Folder to write DIR/grounding-dino, DIR/sam (and stage 1's tiny models) into."),
    seed: int = typer.Option(0, help="Seed for the random weights."),
    verbose: bool = VerboseOption,
    quiet: bool = QuietOption,
) -> None:
    """Write tiny, randomly initialised models of the real classes (Grounding DINO, SAM, ...).

    They load through exactly the code that loads hub models, so
    'iapas segment --detector DIR/grounding-dino --segmenter DIR/sam' checks an offline
    install end to end in seconds. Their outputs are random: never judge quality with them.
    """
    setup_logging(verbose, quiet)
    from iapas.testing import make_tiny_models

    made = make_tiny_models(out_dir, seed=seed)
    for name, path in made.items():
        console.print(f"{name:>15}: {path}")
