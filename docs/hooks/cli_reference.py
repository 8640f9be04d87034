"""mkdocs hook: the command-line reference, generated from the typer app at build time.

A page holding the line ``<!-- cli-reference -->`` gets, in its place, one section per command
of ``iapas.cli.app`` (groups included, walked recursively) with the help text that
``iapas COMMAND --help`` prints. Nothing of it is written by hand, so it cannot drift.
"""

from __future__ import annotations

import os

MARKER = "<!-- cli-reference -->"


def _sections(command, path: list[str], parent=None) -> list[str]:
    # typer may carry its own copy of click: use the command's own classes, never ``import click``
    ctx = command.context_class(command, parent=parent, info_name=path[-1], terminal_width=80, max_content_width=80)
    help_text = command.get_help(ctx).replace("python -m iapas", "iapas")
    level = "#" * min(len(path) + 1, 4)
    out = [f"{level} `{' '.join(path)}`", "", "```text", help_text, "```", ""]
    if hasattr(command, "list_commands"):  # a group: its commands in the order of `--help`
        for name in command.list_commands(ctx):
            out += _sections(command.get_command(ctx, name), [*path, name], ctx)
    return out


def cli_reference() -> str:
    """Markdown for every command of the ``iapas`` typer app."""
    os.environ.setdefault("COLUMNS", "80")
    import typer

    from iapas.cli import app

    return "\n".join(_sections(typer.main.get_command(app), ["iapas"]))


def on_page_markdown(markdown: str, page, config, files) -> str:  # noqa: ARG001 - mkdocs' signature
    if MARKER in markdown:
        markdown = markdown.replace(MARKER, cli_reference())
    return markdown
