"""The shared option table (:mod:`iapas.workflows.options`) on typer commands.

    @shared(*STAGE2, "batch_size", *LOGGING, batch_size={"default": 8})
    def serve_cmd(..., settings: Settings = None) -> None:
        settings.device, settings.pipeline_config(), ...

The options take the place of the ``settings`` parameter in the command's signature (and its
``--help``), in the order given; keyword arguments change a row for this command only.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any, get_type_hints

import typer

from iapas.workflows.options import OPTIONS, Opt, Settings


def option(row: Opt) -> Any:
    """The typer option of one row of the table."""
    choice = {"callback": _one_of(row.choices)} if row.choices else {}
    return typer.Option(row.default, *row.flags, help=row.help, min=row.min, max=row.max, show_default=row.show_default,
                        **choice)


def _one_of(choices: tuple[str, ...]) -> Callable[[str], str]:
    def check(value: str) -> str:
        if value not in choices:
            raise typer.BadParameter(f"{value!r} is not one of {', '.join(choices)}")
        return value

    return check


def shared(*names: str, **changes: dict[str, Any]) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Put the table's options ``names`` where ``command`` has its ``settings`` parameter."""
    rows = [OPTIONS[name].but(**changes.get(name, {})) for name in names]

    def wrap(command: Callable[..., Any]) -> Callable[..., Any]:
        hints = get_type_hints(command)
        params: list[inspect.Parameter] = []
        for param in inspect.signature(command).parameters.values():
            if param.name != "settings":
                params.append(param.replace(annotation=hints.get(param.name, param.annotation)))
                continue
            params += [inspect.Parameter(row.name, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=option(row),
                                         annotation=row.type) for row in rows]

        @functools.wraps(command)
        def run(**given: Any) -> Any:
            values = {row.name: given.pop(row.name) for row in rows}
            return command(**given, settings=Settings(values))

        run.__signature__ = inspect.Signature(params, return_annotation=None)  # type: ignore[attr-defined]
        run.__annotations__ = {p.name: p.annotation for p in params}
        return run

    return wrap
