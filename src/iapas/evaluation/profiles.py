"""Stage-1 profiles for an evaluation: reuse the file when it is there, else build it.

:func:`get_profile` is the one entry point: ``PROFILES/<category>.yaml`` is used as it is when
present (a person may have edited it: the file is authoritative), otherwise stage 1
(:func:`iapas.prompts.stage1.build_profile`) makes it from the category's reference images and
saves it there. Mode ``base`` uses no profile at all.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from iapas.data import Category
from iapas.profile import Profile

logger = logging.getLogger(__name__)

TAGGERS = ("clip", "ram", "manual")
LLMS = ("transformers", "openai", "knowledge")

# Object tags for the wrong-tag ablation when a dataset has one category (or every other
# category has the same tag): unrelated products, tried in this order.
FALLBACK_WRONG_TAGS: tuple[str, ...] = ("bottle", "carpet", "screw", "leather", "cable", "wood")

ProgressCallback = Callable[[str, int, int], None]


@dataclass
class Stage1Options:
    """How stage 1 makes a missing profile (the options of ``iapas profile``).

    ``object_tag`` skips tagging and the detector vote (the wrong-tag ablation sets it);
    ``nouns`` skips the LLM. ``llm='knowledge'`` answers from the offline vocabulary.
    """

    tagger: str = "clip"
    tagger_model: str | None = None
    top_k: int = 5
    tags: list[str] | None = None
    llm: str = "transformers"
    llm_model: str | None = None
    llm_base_url: str | None = None
    llm_timeout: float = 60.0
    llm_retries: int = 2
    knowledge_file: Path | None = None
    object_tag: str | None = None
    nouns: list[str] | None = None
    include_object_tag: bool = True
    size_threshold: float = 0.8
    seed: int = 0
    device: str = "auto"
    dtype: str = "auto"

    def __post_init__(self) -> None:
        if self.tags is not None and self.tagger == "clip":
            self.tagger = "manual"
        if self.tagger not in TAGGERS:
            raise ValueError(f"unknown tagger {self.tagger!r}; choose one of {', '.join(TAGGERS)}")
        if self.tagger == "manual" and not self.tags:
            raise ValueError("the manual tagger needs tags (e.g. --tags 'leather, fabric')")
        if self.llm not in LLMS:
            raise ValueError(f"unknown LLM backend {self.llm!r}; choose one of {', '.join(LLMS)}")

    def settings(self, detector_name: str | None) -> dict[str, Any]:
        """What decides a profile (recorded in it, and hashed into ``stage1.input_hash``)."""
        data = asdict(self)
        for key in ("device", "dtype", "llm_timeout", "llm_retries"):
            data.pop(key)
        data["knowledge_file"] = str(self.knowledge_file) if self.knowledge_file else None
        data["detector"] = detector_name
        return data


class Stage1Models:
    """The stage-1 models, each loaded on first use and shared by every category.

    ``options`` say which models to load (tagger, LLM, knowledge file, device); the detector is
    the stage-2 one (stage 1 uses the same Grounding DINO for the object vote). :func:`get_profile`
    takes the build settings (object tag, seed, ...) from its own ``options``, so one set of
    loaded models serves variants that differ only there (the wrong-tag ablation).
    """

    def __init__(self, options: Stage1Options, detector: Any) -> None:
        self.options = options
        self.detector = detector
        self._tagger: Any = None
        self._llm: Any = None
        self._llm_loaded = False
        self._knowledge: Any = None

    def tagger(self) -> Any:
        if self._tagger is None:
            from iapas.prompts.tagging import ClipTagger, ManualTagger, RamTagger

            o = self.options
            if o.tagger == "manual":
                self._tagger = ManualTagger(o.tags or [])
            elif o.tagger == "ram":
                self._tagger = RamTagger.from_checkpoint(o.tagger_model, device=o.device)
            else:
                kwargs: dict[str, Any] = {"device": o.device, "dtype": o.dtype, "top_k": o.top_k}
                if o.tagger_model:
                    self._tagger = ClipTagger.from_pretrained(o.tagger_model, **kwargs)
                else:
                    self._tagger = ClipTagger.from_pretrained(**kwargs)
        return self._tagger

    def llm(self) -> Any:
        """The LLM, or None for the knowledge vocabulary (or hand-given nouns)."""
        if not self._llm_loaded:
            o = self.options
            if o.nouns is not None or o.llm == "knowledge":
                self._llm = None
            elif o.llm == "openai":
                from iapas.prompts.llm import OpenAILLM

                self._llm = OpenAILLM(o.llm_model, base_url=o.llm_base_url, timeout=o.llm_timeout, max_retries=o.llm_retries)
            else:
                from iapas.prompts.llm import TransformersLLM

                if o.llm_model:
                    self._llm = TransformersLLM.from_pretrained(o.llm_model, device=o.device, dtype=o.dtype)
                else:
                    self._llm = TransformersLLM.from_pretrained(device=o.device, dtype=o.dtype)
            self._llm_loaded = True
        return self._llm

    def knowledge(self) -> Any:
        if self._knowledge is None:
            from iapas.prompts.knowledge import Knowledge

            self._knowledge = Knowledge.load(self.options.knowledge_file)
        return self._knowledge


def profile_path(profiles_dir: Path, category: str) -> Path:
    return Path(profiles_dir) / f"{category}.yaml"


def get_profile(
    category: Category,
    profiles_dir: str | Path,
    options: Stage1Options | None,
    *,
    mode: str = "iapas",
    models: Stage1Models | None = None,
    detector: Any = None,
    progress: ProgressCallback | None = None,
) -> Profile | None:
    """The stage-1 profile of ``category`` for an evaluation.

    1. ``PROFILES/<category>.yaml`` exists: it is loaded and used as written (cached; a person
       may have edited it). A broken file raises :class:`~iapas.profile.ProfileError`.
    2. Otherwise, mode ``iapas``: stage 1 builds it from ``category.references`` with
       ``options`` (models from ``models``, or loaded here with ``detector``) and saves it there.
    3. Mode ``base`` needs no profile: returns None and touches no file.

    Raises :class:`iapas.prompts.stage1.Stage1Error` when stage 1 cannot run for this category
    (e.g. no reference images), and the model loaders' errors when a model cannot be loaded.
    """
    if mode == "base":
        return None
    path = profile_path(Path(profiles_dir), category.name)
    if path.exists():
        profile = Profile.load(path)
        logger.info("%s: using the profile %s (caption '%s')", category.name, path, profile.caption)
        return profile
    if options is None:
        raise FileNotFoundError(f"{path}: no profile, and no stage-1 options to make one")
    from iapas.prompts.stage1 import Stage1Error, build_profile, input_hash

    if models is None:
        models = Stage1Models(options, detector)
    if not category.references:
        raise Stage1Error(
            f"{category.dataset or 'dataset'} category {category.name}: no normal reference images to build its "
            f"profile from; write {path} by hand (iapas profile --object ... --prompts ...)"
        )
    detector_name = getattr(models.detector, "name", None)
    references = list(category.references)
    o = options
    digest = input_hash(category.name, references, o.settings(detector_name))
    profile = build_profile(
        category.name,
        references,
        tagger=None if o.object_tag else models.tagger(),
        detector=models.detector,
        llm=models.llm(),
        knowledge=models.knowledge(),
        seed=o.seed,
        object_tag=o.object_tag,
        nouns=o.nouns,
        include_object_tag=o.include_object_tag,
        size_threshold=o.size_threshold,
        input_digest=digest,
        progress=progress,
    )
    profile.stage1["dataset"] = {
        "name": category.dataset,
        "category": category.name,
        "protocol": category.protocol,
        "notes": list(category.notes),
    }
    profile.stage1["evaluation_settings"] = o.settings(detector_name)
    profile.save(path)
    logger.info("%s: wrote the profile %s (object '%s', caption '%s')", category.name, path, profile.object_tag, profile.caption)
    return profile


def wrong_object_tags(true_tags: Mapping[str, str], fallback: Sequence[str] = FALLBACK_WRONG_TAGS) -> dict[str, str]:
    """A deliberately wrong object tag per category, for the wrong-tag ablation.

    Category ``i`` (in the given order) gets the tag of the next category whose tag differs from
    its own (cyclically); when no category has a different tag (one category, or all alike),
    the first tag of ``fallback`` that differs. E.g. ``{carpet: carpet, grid: grid, wood: wood}``
    gives ``{carpet: grid, grid: wood, wood: carpet}``.
    """
    names = list(true_tags)
    out: dict[str, str] = {}
    for i, name in enumerate(names):
        own = true_tags[name].strip().lower()
        chosen = None
        for step in range(1, len(names)):
            other = true_tags[names[(i + step) % len(names)]].strip().lower()
            if other != own:
                chosen = other
                break
        if chosen is None:
            chosen = next((t for t in fallback if t != own), None)
            if chosen is None:
                raise ValueError(f"no wrong tag available for {name!r} (tag {own!r})")
        out[name] = chosen
    return out


@dataclass
class ProfileRecord:
    """What an evaluation records about the profile it used for one category."""

    path: str | None
    source: str  # 'file' (existed), 'stage1' (built now), 'none' (base mode)
    object_tag: str | None = None
    caption: str | None = None
    object_size: float | None = None
    size_threshold: float | None = None
    models: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def of(cls, profile: Profile | None, path: Path | None, source: str) -> ProfileRecord:
        if profile is None:
            return cls(None, source)
        return cls(
            str(path) if path else None,
            source,
            profile.object_tag,
            profile.caption,
            profile.object_size,
            profile.size_threshold,
            dict(profile.models),
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
