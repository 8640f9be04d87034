"""Typed checks of the fields of a hand-editable file (a profile and its decision section).

Each checker takes the value as loaded (YAML or JSON) and the field's description (``"p.yaml:
decision: 'threshold'"``) and returns the value in its type, or raises :class:`FieldError` with
one line naming the field, what it must be and what it is. A bool is never a number (YAML's
``true``), a string never a number (``abc``, or ``"0.5"``), and numbers are finite (``.inf``,
``.nan``, ``1e309``) unless said otherwise.
"""

from __future__ import annotations

from dataclasses import fields

import math
import numbers
from typing import Any


class FieldError(ValueError):
    """A field of a file has the wrong type or value; the message names it."""


def _shown(value: Any) -> str:
    try:
        text = repr(value)
    except ValueError:  # an integer too long to print
        return "a very long integer"
    return text if len(text) <= 60 else text[:57] + "..."


def _bounds(low: float | None, high: float | None, low_open: bool, high_open: bool) -> str:
    if high is None:
        return f"{'>' if low_open else '>='} {low:g}"
    if low is None:
        return f"{'<' if high_open else '<='} {high:g}"
    return f"in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"


def number(value: Any, what: str, *, low: float | None = None, high: float | None = None,
           low_open: bool = False, high_open: bool = False) -> float:
    """A finite real number in the bounds given (closed unless ``low_open``/``high_open``)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise FieldError(f"{what} must be a number, got {_shown(value)}")
    try:
        result = float(value)
    except OverflowError:  # an integer beyond float's range
        result = math.inf if value > 0 else -math.inf
    if not math.isfinite(result):
        raise FieldError(f"{what} must be a finite number, got {_shown(value)}")
    too_low = low is not None and (result <= low if low_open else result < low)
    too_high = high is not None and (result >= high if high_open else result > high)
    if too_low or too_high:
        raise FieldError(f"{what} must be {_bounds(low, high, low_open, high_open)}, got {_shown(value)}")
    return result


def optional_number(value: Any, what: str, **bounds: Any) -> float | None:
    return None if value is None else number(value, what, **bounds)


def count(value: Any, what: str) -> int:
    """A non-negative integer (``3``; not ``3.0``, ``-1``, ``true`` or ``.inf``)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise FieldError(f"{what} must be a non-negative integer, got {_shown(value)}")
    if value < 0:
        raise FieldError(f"{what} must be >= 0, got {value}")
    return int(value)


def boolean(value: Any, what: str) -> bool:
    if not isinstance(value, bool):
        raise FieldError(f"{what} must be true or false, got {_shown(value)}")
    return value


def text(value: Any, what: str, *, required: bool = False) -> str:
    """A string (``required``: with something other than spaces in it)."""
    if not isinstance(value, str):
        raise FieldError(f"{what} must be a string, got {_shown(value)}")
    if required and not value.strip():
        raise FieldError(f"{what} must be a non-empty string")
    return value


def choice(value: Any, what: str, allowed: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value not in allowed:
        raise FieldError(f"{what} must be one of {', '.join(allowed)}, got {_shown(value)}")
    return value


def mapping(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise FieldError(f"{what} must be a mapping, got {_shown(value)}")
    return value


def strings(value: Any, what: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise FieldError(f"{what} must be a list of strings, got {_shown(value)}")
    return value


__all__ = ["FieldError", "boolean", "choice", "count", "mapping", "number", "optional_number", "strings", "text"]


def check_fields(cls: type, data: Any, source: str, required: tuple[str, ...], what: str, error: type[Exception]) -> None:
    """``data`` is a mapping of ``cls``'s dataclass fields with the ``required`` ones, else
    ``error`` naming ``source``."""
    if not isinstance(data, dict):
        raise error(f"{source}: expected a mapping of {what}, got {type(data).__name__}")
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise error(f"{source}: unknown field(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    missing = [k for k in required if k not in data]
    if missing:
        raise error(f"{source}: missing field(s) {', '.join(missing)}")
