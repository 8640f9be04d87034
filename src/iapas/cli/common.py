"""Helpers shared by the CLI commands: logging, console, errors."""

from __future__ import annotations

import logging
import os

import typer
from rich.console import Console
from rich.logging import RichHandler

from iapas import __version__

console = Console(stderr=True)


def setup_logging(verbose: bool = False, quiet: bool = False) -> None:
    level = logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    root.addHandler(RichHandler(console=console, show_path=False, show_time=False, markup=False))
    root.setLevel(logging.WARNING)
    logging.getLogger("iapas").setLevel(level)
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except ImportError:  # pragma: no cover
        pass


def version_callback(value: bool) -> None:
    if value:
        typer.echo(f"iapas {__version__}")
        raise typer.Exit()


def fail(message: str, code: int = 2) -> typer.Exit:
    """Print a one-line error and return the Exit to raise."""
    console.print(f"[bold red]error:[/] {message}", highlight=False)
    return typer.Exit(code)


VerboseOption = typer.Option(False, "--verbose", "-v", help="Log debug details.")
QuietOption = typer.Option(False, "--quiet", "-q", help="Only warnings and errors.")
