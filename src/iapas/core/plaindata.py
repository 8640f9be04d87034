"""YAML and JSON files that a person writes or edits (profiles, knowledge files), read safely:
no anchors or aliases (a 1 KB file of nested aliases expands to gigabytes), at most
:data:`MAX_DEPTH` levels of lists and mappings (the parsers recurse: thousands of levels end in a
RecursionError), and every problem as one line, ``line L, column C: ...`` where it has a place.

Imports nothing of iapas: every loader of such a file calls :func:`load_plain` and puts its own
path in front of the message.
"""

from __future__ import annotations

import json
from typing import Any

import yaml

MAX_DEPTH = 32  # nesting levels such a file may have (a profile needs 4)


class PlainDataError(ValueError):
    """The text is not plain YAML or JSON of bounded size; the message is one line without the path."""


class _Refused(Exception):
    """What such a file must not hold, found at a line and column of it."""

    def __init__(self, message: str, mark: Any) -> None:
        super().__init__(message)
        self.line, self.column = mark.line + 1, mark.column + 1


class _PlainLoader(yaml.SafeLoader):
    """YAML's safe loader without anchors and aliases and at most :data:`MAX_DEPTH` levels deep."""

    _depth = 0
    what = "this file"

    def compose_node(self, parent: Any, index: Any) -> Any:
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
            raise _Refused(f"anchors and aliases (&name, *name) are not allowed in {self.what}", event.start_mark)
        if self._depth >= MAX_DEPTH:
            raise _Refused(f"lists or mappings nested more than {MAX_DEPTH} levels deep; refused", event.start_mark)
        self._depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def _too_deep(data: Any) -> bool:
    """Whether ``data`` (loaded JSON) holds lists or mappings more than :data:`MAX_DEPTH` deep."""
    level = [data]
    for _ in range(MAX_DEPTH):
        level = [v for item in level if isinstance(item, (list, dict))
                 for v in (item.values() if isinstance(item, dict) else item)]
        if not level:
            return False
    return any(isinstance(item, (list, dict)) for item in level)


def syntax_error(exc: Exception, language: str) -> str:
    """One line for a YAML or JSON syntax error: line, column and the problem (PyYAML's own
    message spans four lines with a copy of the text)."""
    if isinstance(exc, json.JSONDecodeError):
        return f"line {exc.lineno}, column {exc.colno}: not valid {language}: {exc.msg}"
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None)
    if mark is not None and problem:
        context = getattr(exc, "context", None)
        detail = f"{problem} ({context})" if context else problem
        return f"line {mark.line + 1}, column {mark.column + 1}: not valid {language}: {detail}"
    return f"not valid {language}: {' '.join(str(exc).split())}"


def load_plain(text: str, language: str = "YAML", what: str = "this file") -> Any:
    """The data of ``text`` (``language`` "YAML" or "JSON"), else :class:`PlainDataError` with one
    line; ``what`` names the kind of file in the message about anchors ("a profile")."""
    too_deep = f"lists or mappings nested more than {MAX_DEPTH} levels deep; refused"
    loader = type("_Loader", (_PlainLoader,), {"what": what})
    try:
        data = json.loads(text) if language == "JSON" else yaml.load(text, Loader=loader)  # noqa: S506
    except _Refused as exc:
        raise PlainDataError(f"line {exc.line}, column {exc.column}: {exc}") from None
    except RecursionError:
        raise PlainDataError(too_deep) from None
    except (yaml.YAMLError, ValueError) as exc:
        raise PlainDataError(syntax_error(exc, language)) from None
    if _too_deep(data):
        raise PlainDataError(too_deep)
    return data


__all__ = ["MAX_DEPTH", "PlainDataError", "load_plain", "syntax_error"]
