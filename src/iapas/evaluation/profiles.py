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
from iapas.core.names import path_inside
from iapas.product.profile import Profile
# Stage1Options and Stage1Models live in iapas.prompts.resources (iapas profile uses them too);
# iapas.evaluation re-exports them from here.
from iapas.prompts.resources import Stage1Models, Stage1Options
from iapas.prompts.stage1 import fallback_reason

logger = logging.getLogger(__name__)

# Object tags for the wrong-tag ablation when no other category of the dataset has a usable tag:
# everyday things that are neither a category of the benchmark datasets nor an industrial
# product or surface, tried in this order.
FALLBACK_WRONG_TAGS: tuple[str, ...] = ("banana", "bicycle", "teapot", "umbrella", "giraffe", "guitar")

ProgressCallback = Callable[[str, int, int], None]


def profile_path(profiles_dir: Path, category: str) -> Path:
    return path_inside(profiles_dir, f"{category}.yaml")


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
       may have edited it). A broken file raises :class:`~iapas.product.profile.ProfileError`.
    2. Otherwise, mode ``iapas``: stage 1 builds it from ``category.references`` with
       ``options`` (models from ``models``, or loaded here with ``detector``; without either,
       the detector is ``options.detector``, loaded) and saves it there.
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
        _warn_if_other_inputs(profile, path, category, options, models, detector)
        return profile
    if options is None:
        raise FileNotFoundError(f"{path}: no profile, and no stage-1 options to make one")
    from iapas.prompts.stage1 import Stage1Error, build_with_models

    if models is None:
        models = Stage1Models(options, detector)
    if not category.references:
        raise Stage1Error(
            f"{category.dataset or 'dataset'} category {category.name}: no normal reference images to build its "
            f"profile from; write {path} by hand (iapas profile --object ... --prompts ...)"
        )
    detector_name = models.detector_id()
    references = list(category.references)
    o = options
    digest = models.input_hash(category.name, references, o)  # the same key as iapas profile's
    profile = build_with_models(category.name, references, models, o, input_digest=digest, progress=progress)
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


def _warn_if_other_inputs(
    profile: Profile, path: Path, category: Category, options: Stage1Options | None, models: Stage1Models | None,
    detector: Any,
) -> None:
    """Warn when a stage-1 profile on file was made from other inputs than ``options`` would use
    (e.g. another --prompt-style or --object-join): it is still used as written."""
    made = profile.stage1.get("input_hash") if profile.stage1.get("source") == "stage1" else None
    if options is None or not made or not category.references:
        return
    try:
        now = (models or Stage1Models(options, detector)).input_hash(category.name, list(category.references), options)
    except Exception:  # noqa: BLE001 - only a warning: an unreadable setting is reported where it is used
        return
    if now != made:
        logger.warning(
            "%s: %s was made from other stage-1 inputs (references, models or options such as --prompt-style) "
            "than this run's; using it as written (delete it, or give another --profiles folder, to make it again)",
            category.name, path,
        )


def _plain(text: str) -> str:
    return " ".join(text.lower().replace("_", " ").replace("-", " ").split())


def is_wrong_tag(tag: str, category: str, true_tag: str) -> bool:
    """Whether ``tag`` is really wrong for ``category``: not empty, and neither equal to nor
    containing (nor contained in) the category's name or its true tag, case-insensitive
    ('bottle' is not wrong for bottle, nor 'glass bottle', nor 'nut' for metal_nut)."""
    t = _plain(tag)
    if not t:
        return False
    return all(not (t in o or o in t) for o in (_plain(category), _plain(true_tag)) if o)


def wrong_object_tags(true_tags: Mapping[str, str], fallback: Sequence[str] = FALLBACK_WRONG_TAGS) -> dict[str, str]:
    """A deliberately wrong object tag per category (``{category: its true tag}``), for the
    wrong-tag ablation.

    Category ``i`` (in the given order) gets the tag of the next category (cyclically) that
    :func:`is_wrong_tag` accepts for it; when there is none (one category, or all alike), the
    first such tag of ``fallback``. E.g. ``{carpet: carpet, grid: grid, wood: wood}`` gives
    ``{carpet: grid, grid: wood, wood: carpet}``.
    """
    names = list(true_tags)
    out: dict[str, str] = {}
    for i, name in enumerate(names):
        own = true_tags[name]
        others = [true_tags[names[(i + step) % len(names)]] for step in range(1, len(names))]
        chosen = next((_plain(t) for t in [*others, *fallback] if is_wrong_tag(t, name, own)), None)
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
    llm_fallback: str | None = None  # why the knowledge vocabulary replaced the LLM, when it did

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
            fallback_reason(profile.stage1),
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
