"""The per-category profile: everything stage 1 decides, in a file a person can read and edit.

Stage 2 reads ``object_tag``, ``caption``, ``size_threshold`` and ``object_size``; the rest is
the record of how they were made. ``decision`` (written by ``iapas calibrate``) is the OK/NG
threshold, see :mod:`iapas.decision`. The caption in the file is authoritative: edit it and stage 2
uses the edited one.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from iapas import __version__
from iapas.decision import Decision, DecisionError
from iapas.io import atomic_write_text
from iapas.prompts.caption import DEFAULT_OBJECT_JOIN, build_caption, caption_phrases, caption_words

PROFILE_FORMAT = 1


class ProfileError(ValueError):
    """A profile file is missing, malformed or unusable; the message names the file."""


@dataclass
class Profile:
    category: str
    object_tag: str
    caption: str
    anomaly_nouns: list[str] = field(default_factory=list)
    include_object_tag: bool = True
    size_threshold: float = 0.8
    object_size: float | None = None  # median normalised object area over the references
    models: dict[str, Any] = field(default_factory=dict)
    stage1: dict[str, Any] = field(default_factory=dict)
    decision: Decision | None = None  # the OK/NG threshold from 'iapas calibrate'
    iapas_version: str = __version__
    format: int = PROFILE_FORMAT

    @classmethod
    def from_prompts(
        cls,
        category: str,
        object_tag: str,
        nouns: list[str],
        *,
        include_object_tag: bool = True,
        size_threshold: float = 0.8,
        object_join: str = DEFAULT_OBJECT_JOIN,
        **extra: Any,
    ) -> Profile:
        """A profile from an object tag and anomaly nouns given by hand (``object_join``: see
        :func:`~iapas.prompts.caption.caption_words`)."""
        caption = build_caption(nouns, object_tag, include_object_tag, object_join)
        profile = cls(
            category=category,
            object_tag=object_tag.strip().lower(),
            caption=caption,
            anomaly_nouns=[w for w in caption_words(nouns, include_object_tag=False) if w not in ("abnormal", "defect", object_tag.strip().lower())],
            include_object_tag=include_object_tag,
            size_threshold=size_threshold,
            **extra,
        )
        profile.validate()
        return profile

    def validate(self, source: str = "profile") -> None:
        if not isinstance(self.category, str) or not self.category.strip():
            raise ProfileError(f"{source}: 'category' must be a non-empty string")
        if not isinstance(self.object_tag, str) or not self.object_tag.strip():
            raise ProfileError(f"{source}: 'object_tag' must be a non-empty string")
        if not isinstance(self.caption, str) or not caption_phrases(self.caption):
            raise ProfileError(f"{source}: 'caption' is empty; it must list phrases like 'scratch . crack .'")
        try:
            self.size_threshold = float(self.size_threshold)
        except (TypeError, ValueError):
            raise ProfileError(f"{source}: 'size_threshold' must be a number, got {self.size_threshold!r}") from None
        if not self.size_threshold > 0:
            raise ProfileError(f"{source}: 'size_threshold' must be > 0, got {self.size_threshold}")
        if self.object_size is not None:
            try:
                self.object_size = float(self.object_size)
            except (TypeError, ValueError):
                raise ProfileError(f"{source}: 'object_size' must be a number or null") from None
            if not 0 < self.object_size <= 1:
                raise ProfileError(f"{source}: 'object_size' must be in (0, 1], got {self.object_size}")
        for name in ("models", "stage1"):
            if not isinstance(getattr(self, name), dict):
                raise ProfileError(f"{source}: '{name}' must be a mapping")
        if not isinstance(self.anomaly_nouns, list):
            raise ProfileError(f"{source}: 'anomaly_nouns' must be a list")
        if self.decision is not None:
            if not isinstance(self.decision, Decision):
                raise ProfileError(f"{source}: 'decision' must be a Decision")
            try:
                self.decision.validate(f"{source}: decision")
            except DecisionError as exc:
                raise ProfileError(str(exc)) from None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def save(self, path: str | Path) -> Path:
        """Write the profile as YAML (``.yaml``/``.yml``) or JSON (``.json``), atomically."""
        path = Path(path)
        self.validate(str(path))
        data = self.to_dict()
        if path.suffix.lower() == ".json":
            text = json.dumps(data, indent=2, ensure_ascii=False) + "\n"
        else:
            header = (
                "# iapas category profile. Stage 2 uses object_tag, caption, size_threshold and\n"
                "# object_size; edit them freely (the caption is used as written). The rest records\n"
                "# how stage 1 made them; 'decision' is the OK/NG threshold from 'iapas calibrate'.\n"
            )
            text = header + yaml.safe_dump(data, sort_keys=False, allow_unicode=True, width=100)
        atomic_write_text(path, text)
        return path

    @classmethod
    def from_dict(cls, data: Any, source: str = "profile") -> Profile:
        check_fields(cls, data, source, ("category", "object_tag", "caption"), "profile fields")
        data = {k: v for k, v in data.items() if not (v is None and k in ("models", "stage1", "anomaly_nouns"))}
        if data.get("decision") is not None:
            try:
                data["decision"] = Decision.from_dict(data["decision"], f"{source}: decision")
            except DecisionError as exc:
                raise ProfileError(str(exc)) from None
        profile = cls(**data)
        profile.validate(source)
        return profile

    @classmethod
    def load(cls, path: str | Path) -> Profile:
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ProfileError(f"{path}: profile file not found") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ProfileError(f"{path}: cannot read profile: {exc}") from None
        try:
            data = json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
        except (yaml.YAMLError, ValueError) as exc:
            raise ProfileError(f"{path}: {_syntax_error(exc, 'JSON' if path.suffix.lower() == '.json' else 'YAML')}") from None
        return cls.from_dict(data, str(path))


def check_fields(
    cls: type, data: Any, source: str, required: tuple[str, ...], what: str = "fields", error: type[Exception] = ProfileError
) -> None:
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


def _syntax_error(exc: Exception, language: str) -> str:
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


def base_profile(category: str = "base", object_tag: str = "object") -> Profile:
    """The paper's 'base' setting: fixed caption, no size filter (see PipelineConfig.mode)."""
    from iapas.prompts.caption import BASE_CAPTION

    return Profile(category=category, object_tag=object_tag, caption=BASE_CAPTION, anomaly_nouns=[])
