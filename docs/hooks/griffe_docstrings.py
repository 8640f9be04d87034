"""griffe extension for the API pages: the package's docstrings are written for ``help()`` and
Sphinx-style roles, not Markdown. Before mkdocstrings renders one, this turns

- doctest lines (``>>> ...`` with their ``...`` continuations and output) into a ``pycon`` block,
  instead of Markdown's nested block quotes;
  (``# doctest:`` flags dropped);
- the roles ``:class:`x```, ``:func:`x```, ``:mod:`~x``` ... into inline code.

It changes nothing in the source: only what the site shows.
"""

from __future__ import annotations

import re

import griffe

DOCTEST_FLAGS = re.compile(r"\s*# doctest:.*$")
ROLE = re.compile(r":(?:class|func|meth|mod|data|attr|exc|obj):`~?([^`]+)`")


def markdown_docstring(text: str) -> str:
    out: list[str] = []
    in_doctest = False
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith(">>>") and not in_doctest:
            out += ["", "```pycon"]
            in_doctest = True
        elif in_doctest and not stripped:
            out += ["```", ""]
            in_doctest = False
        out.append(DOCTEST_FLAGS.sub("", line.strip()) if in_doctest else ROLE.sub(r"`\1`", line))
    if in_doctest:
        out.append("```")
    return "\n".join(out)


class MarkdownDocstrings(griffe.Extension):
    def on_instance(self, *, obj, **kwargs) -> None:  # noqa: ARG002 - griffe's signature
        if obj.docstring is not None:
            obj.docstring.value = markdown_docstring(obj.docstring.value)
