"""The per-category profile: everything stage 1 decides, in a file a person can read and edit.

Stage 2 reads ``object_tag``, ``caption``, ``size_threshold`` and ``object_size``; the rest is
the record of how they were made. ``decision`` (written by ``iapas calibrate``) is the OK/NG
threshold, see :mod:`iapas.product.decision`; :meth:`Profile.judge` gives a stage-2 result's
verdict under it. The caption in the file is authoritative: edit it and stage 2 uses the edited one.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from iapas.core.version import __version__
from iapas.core import fields as checks
from iapas.product.decision import Decision, DecisionError, ImageDecision, judge
from iapas.core.fields import FieldError, check_fields
from iapas.core.files import atomic_write_text
from iapas.core.names import BadNameError, check_name
from iapas.core.plaindata import PlainDataError, load_plain
from iapas.core.caption import DEFAULT_OBJECT_JOIN, build_caption, caption_phrases, caption_words
from iapas.core.types import SegmentationResult
from iapas.core.ops import DEFAULT_SIZE_THRESHOLD

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
    size_threshold: float = DEFAULT_SIZE_THRESHOLD
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
        size_threshold: float = DEFAULT_SIZE_THRESHOLD,
        object_join: str = DEFAULT_OBJECT_JOIN,
        **extra: Any,
    ) -> Profile:
        """A profile from an object tag and anomaly nouns given by hand (``object_join``: see
        :func:`~iapas.core.caption.caption_words`)."""
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
        """Check every field (naming it) and take each in its type; :class:`ProfileError` else.
        ``category`` becomes folder and file names: it must be a plain name (:mod:`iapas.core.names`)."""
        try:
            self._check(source)
        except (FieldError, BadNameError) as exc:
            raise ProfileError(str(exc)) from None

    def _check(self, source: str) -> None:
        def what(name: str) -> str:
            return f"{source}: {name!r}"

        check_name(self.category, what("category"))
        self.object_tag = checks.text(self.object_tag, what("object_tag"), required=True)
        checks.text(self.caption, what("caption"))
        if not caption_phrases(self.caption):
            raise ProfileError(f"{source}: 'caption' is empty; it must list phrases like 'scratch . crack .'")
        self.anomaly_nouns = checks.strings(self.anomaly_nouns, what("anomaly_nouns"))
        self.include_object_tag = checks.boolean(self.include_object_tag, what("include_object_tag"))
        self.size_threshold = checks.number(self.size_threshold, what("size_threshold"), low=0.0, low_open=True)
        self.object_size = checks.optional_number(self.object_size, what("object_size"), low=0.0, high=1.0, low_open=True)
        self.models = checks.mapping(self.models, what("models"))
        self.stage1 = checks.mapping(self.stage1, what("stage1"))
        self.iapas_version = checks.text(self.iapas_version, what("iapas_version"))
        self.format = checks.count(self.format, what("format"))
        if self.format > PROFILE_FORMAT:
            raise ProfileError(f"{source}: 'format' is {self.format}, written by a newer iapas (this one reads "
                               f"format {PROFILE_FORMAT}): upgrade iapas ({self.iapas_version or 'version unknown'} wrote it)")
        if self.decision is not None:
            if not isinstance(self.decision, Decision):
                raise ProfileError(f"{source}: 'decision' must be a Decision")
            try:
                self.decision.validate(f"{source}: decision")
            except DecisionError as exc:
                raise ProfileError(str(exc)) from None

    def judge(self, result: SegmentationResult) -> ImageDecision | None:
        """The OK/NG verdict on ``result`` (``pipe(image, profile)``) under this profile's
        decision; None when the profile is not calibrated (:func:`iapas.product.decision.judge`)."""
        return judge(result, self.decision)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        if self.decision is not None:
            data["decision"] = self.decision.to_dict()
        return data

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
        check_fields(cls, data, source, ("category", "object_tag", "caption"), "profile fields", ProfileError)
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
        language = "JSON" if path.suffix.lower() == ".json" else "YAML"
        try:
            data = load_plain(text, language, "a profile")
        except PlainDataError as exc:
            raise ProfileError(f"{path}: {exc}") from None
        return cls.from_dict(data, str(path))


def base_profile(category: str = "base", object_tag: str = "object") -> Profile:
    """The paper's 'base' setting: fixed caption, no size filter (see PipelineConfig.mode)."""
    from iapas.core.caption import BASE_CAPTION

    return Profile(category=category, object_tag=object_tag, caption=BASE_CAPTION, anomaly_nouns=[])
