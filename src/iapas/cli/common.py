"""Helpers shared by the CLI commands: logging, console, errors."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import typer
from rich.console import Console
from rich.text import Text

from iapas.cli.options import option
from iapas.core.version import __version__
from iapas.models.loading import one_line
from iapas.workflows.options import OPTIONS

console = Console(stderr=True)


_LEVEL_STYLES = {"DEBUG": "dim", "INFO": "cyan", "WARNING": "yellow", "ERROR": "bold red", "CRITICAL": "bold red"}


class ConsoleHandler(logging.Handler):
    """Log records as single, unwrapped lines on the shared console (works under progress bars),
    so an error line can be copied or grepped whole."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            level = record.levelname
            line = Text(f"{level.lower()}: ", style=_LEVEL_STYLES.get(level, ""))
            text = self.format(record)
            line.append(text if record.exc_info else one_line(text))
            console.print(line, soft_wrap=True, highlight=False)
        except Exception:  # pragma: no cover - logging must never raise
            self.handleError(record)


def setup_logging(verbose: bool = False, quiet: bool = False) -> None:
    level = logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    root.addHandler(ConsoleHandler())
    root.setLevel(logging.WARNING)
    logging.getLogger("iapas").setLevel(level)
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except ImportError:  # pragma: no cover
        pass
    # huggingface_hub has its own stderr handler and also propagates to ours: every retry
    # warning was printed twice. Keep ours only (one formatted line each).
    try:
        import huggingface_hub.utils.logging  # noqa: F401 - adds its handler on import: do that first
    except ImportError:  # pragma: no cover
        pass
    hub = logging.getLogger("huggingface_hub")
    for handler in list(hub.handlers):
        hub.removeHandler(handler)
    hub.propagate = True


def version_callback(value: bool) -> None:
    if value:
        typer.echo(f"iapas {__version__}")
        raise typer.Exit()


def print_error(message: str) -> None:
    """One unwrapped error line; the message is plain text (no rich markup)."""
    console.print(Text("error: ", style="bold red") + Text(one_line(str(message))), highlight=False, soft_wrap=True)


def hold_output_lock(ctx: typer.Context, folder: Path, command: str) -> None:
    """Hold the exclusive lock of the output folder (:func:`iapas.core.lock.output_lock`) until the
    command ``ctx`` ends; another run holding it exits here with a one-line message (code 2)."""
    from iapas.core.lock import OutputLockedError, output_lock

    try:
        ctx.with_resource(output_lock(folder, command))
    except (OutputLockedError, OSError) as exc:
        raise fail(str(exc)) from None


def print_stopped(reason: str, left: str) -> None:
    """A run stopped early (the disk is full): why, what is left, and the command to resume."""
    import sys

    from iapas.core.storage import resume_command

    console.print(Text("stopped early: ", style="bold red") + Text(f"{reason}; {left}; finished images are saved"),
                  highlight=False, soft_wrap=True)
    console.print(Text(f"free some space, then resume with: {resume_command(sys.argv[1:])}"), highlight=False, soft_wrap=True)


def fail(message: str, code: int = 2) -> typer.Exit:
    """Print a one-line error and return the Exit to raise."""
    print_error(message)
    return typer.Exit(code)


# the table's logging and overlay options, for commands that list their options by hand
VerboseOption = option(OPTIONS["verbose"])
QuietOption = option(OPTIONS["quiet"])


def category_names(values: list[str] | None, option: str) -> list[str]:
    """The names of a comma-separated, repeatable option, each a plain name (:mod:`iapas.core.names`:
    it becomes folder and file names), else a one-line failure (exit 2)."""
    from iapas.core.names import BadNameError, check_name

    names = [v.strip() for item in values or [] for v in item.split(",") if v.strip()]
    try:
        return [check_name(name, option) for name in names]
    except BadNameError as exc:
        raise fail(str(exc)) from None


def load_pipeline(config: "PipelineConfig", status: str | None = "loading models") -> "Pipeline":  # noqa: F821
    """The stage-2 pipeline of ``config`` (a spinner on a terminal), or a one-line failure (exit 2)."""
    from contextlib import nullcontext

    from iapas.models.loading import ModelLoadError
    from iapas.pipeline.stage2 import Pipeline

    try:
        with console.status(status) if status else nullcontext():
            return Pipeline.from_config(config)
    except (ModelLoadError, ValueError) as exc:
        raise fail(str(exc)) from None
