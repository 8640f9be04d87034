"""An offline vocabulary of anomaly nouns per object family: stage 1 without an LLM.

It answers the question stage 1 asks an LLM ("which anomalous parts can appear on a <tag>?")
from a data file (``knowledge.yaml`` next to this module, or one given by the user), so it
needs no model and always gives the same answer. It is the ``--llm knowledge`` backend and the
fallback when an LLM fails.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from iapas.core.plaindata import PlainDataError, load_plain
from iapas.core.caption import clean_nouns

DEFAULT_FAMILY = "default"


class KnowledgeError(ValueError):
    """The knowledge file is missing or malformed; the message names the file."""


@dataclass(frozen=True)
class KnowledgeAnswer:
    """The nouns for one object: which family matched, through which word, and the nouns."""

    family: str
    matched: str | None  # the object word that selected the family (None for the default)
    nouns: tuple[str, ...]


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+(?:-[a-z0-9]+)*", text.lower())


def _singular_forms(word: str) -> list[str]:
    """``word`` and the forms an English plural would come from (screws -> screw, boxes -> box)."""
    forms = [word]
    if len(word) > 3 and word.endswith("ies"):
        forms.append(word[:-3] + "y")
    if len(word) > 3 and word.endswith("es"):
        forms.append(word[:-2])
    if len(word) > 2 and word.endswith("s") and not word.endswith("ss"):
        forms.append(word[:-1])
    return forms


@dataclass(frozen=True)
class Knowledge:
    """Families of objects and their anomaly nouns (see ``knowledge.yaml`` for the format)."""

    families: dict[str, tuple[str, ...]]  # family -> nouns
    objects: dict[str, str]  # object phrase -> family
    default_nouns: tuple[str, ...]
    source: str = "builtin"

    @classmethod
    def from_dict(cls, data: Any, source: str = "knowledge") -> Knowledge:
        if not isinstance(data, dict):
            raise KnowledgeError(f"{source}: expected a mapping with 'default' and 'families'")
        default = data.get("default")
        if not isinstance(default, dict) or not isinstance(default.get("nouns"), list) or not default["nouns"]:
            raise KnowledgeError(f"{source}: 'default.nouns' must be a non-empty list of nouns")
        raw_families = data.get("families")
        if not isinstance(raw_families, dict) or not raw_families:
            raise KnowledgeError(f"{source}: 'families' must be a non-empty mapping of family -> objects, nouns")
        families: dict[str, tuple[str, ...]] = {}
        objects: dict[str, str] = {}
        for name, body in raw_families.items():
            if not isinstance(body, dict):
                raise KnowledgeError(f"{source}: family {name!r} must be a mapping with 'objects' and 'nouns'")
            nouns, objs = body.get("nouns"), body.get("objects")
            if not isinstance(nouns, list) or not nouns or not isinstance(objs, list) or not objs:
                raise KnowledgeError(f"{source}: family {name!r} needs non-empty lists 'objects' and 'nouns'")
            families[str(name)] = tuple(clean_nouns(str(n) for n in nouns))
            for obj in objs:
                key = " ".join(_words(str(obj)))
                if not key:
                    continue
                if key in objects and objects[key] != name:
                    raise KnowledgeError(
                        f"{source}: object {key!r} is in families {objects[key]!r} and {name!r}; it may belong to one only"
                    )
                objects[key] = str(name)
        return cls(families, objects, tuple(clean_nouns(str(n) for n in default["nouns"])), source)

    @classmethod
    def load(cls, path: str | Path | None = None) -> Knowledge:
        """The built-in vocabulary, or the YAML file at ``path``."""
        if path is None:
            text = resources.files("iapas.prompts").joinpath("knowledge.yaml").read_text(encoding="utf-8")
            source = "builtin knowledge.yaml"
        else:
            path = Path(path)
            try:
                text = path.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                raise KnowledgeError(f"{path}: cannot read knowledge file: {exc}") from None
            source = str(path)
        try:  # no anchors or aliases, bounded depth, one line: as a profile (a knowledge file is edited by hand too)
            data = load_plain(text, "YAML", "a knowledge file")
        except PlainDataError as exc:
            raise KnowledgeError(f"{source}: {exc}") from None
        return cls.from_dict(data, source)

    def family_of(self, phrase: str) -> tuple[str, str] | None:
        """``(family, matched word)`` for one tag: the whole phrase, else its words from the left."""
        words = _words(phrase)
        if not words:
            return None
        for form in _singular_forms(" ".join(words)):
            if form in self.objects:
                return self.objects[form], form
        for word in words:
            for form in _singular_forms(word):
                if form in self.objects:
                    return self.objects[form], form
        return None

    def answer(self, object_tag: str, other_tags: Iterable[str] = ()) -> KnowledgeAnswer:
        """The nouns for ``object_tag``; the reference images' other tags break a miss."""
        for tag in [object_tag, *other_tags]:
            hit = self.family_of(tag)
            if hit is not None:
                family, matched = hit
                return KnowledgeAnswer(family, matched, self.families[family])
        return KnowledgeAnswer(DEFAULT_FAMILY, None, self.default_nouns)

    def all_nouns(self) -> list[str]:
        """Every noun of the vocabulary once, in file order (defaults first)."""
        out = list(self.default_nouns)
        for nouns in self.families.values():
            out.extend(nouns)
        return clean_nouns(out)

    def base_form(self, word: str, extra_nouns: Sequence[str] = ()) -> str:
        """A plural, ``-ed`` or ``-ing`` form whose stem is a known anomaly noun becomes that noun.

        ``scratches`` -> ``scratch``, ``scratched`` -> ``scratch``, ``chipped`` -> ``chip``,
        ``frayed`` -> ``fray``; any other word is returned unchanged. Only nouns this vocabulary (or ``extra_nouns``) knows are
        produced, so the rule cannot invent words.
        """
        known = set(self.all_nouns()) | set(extra_nouns)
        if word in known:
            return word
        head, _, last = word.rpartition(" ")  # inflection sits on the last word: 'loose threads'
        prefix = head + " " if head else ""
        for suffix in ("ed", "ing", "es", "s", "d"):
            if len(last) > len(suffix) + 1 and last.endswith(suffix):
                stem = last[: -len(suffix)]
                candidates = [stem, stem + "e"]
                if len(stem) > 2 and stem[-1] == stem[-2]:  # chipped -> chipp -> chip
                    candidates.append(stem[:-1])
                for cand in candidates:
                    if prefix + cand in known:
                        return prefix + cand
        return word
