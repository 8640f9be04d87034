"""Profile building and reuse: what ``iapas profile`` does, for the CLI and Python users alike.

A profile is made from reference images (:func:`profile_from_references`), from a dataset's
categories (:func:`dataset_profiles`) or by hand (:func:`hand_profile`). A file already there is
reused when it was made from the same inputs (:func:`keep_existing`; hand edits survive), made
again when its nouns came from the knowledge vocabulary after an LLM failure and nobody edited it,
and refused otherwise (unless ``force``). Messages go to the job's ``say`` and ``error``; a
refusal raises :class:`ProfileJobError` with the CLI's exit code.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from iapas.data import DatasetError
from iapas.prompts.resources import LLMS, TAGGERS, LoadingHook, Stage1Models, Stage1Options

logger = logging.getLogger(__name__)

ProgressFactory = Callable[[str], AbstractContextManager[Any]]
"""Called with a category's name; the stage-1 steps run inside the returned context, which
yields the progress callback (stage, done, total) or None."""


class ProfileJobError(Exception):
    """A one-line refusal; ``code`` is the exit code the CLI ends with."""

    def __init__(self, message: str, code: int = 2) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class ProfileJob:
    """What a profile run does besides stage 1: how many references to draw, overwrite, where
    messages go, the progress per category and the spinner while a model loads."""

    references: int = 10
    force: bool = False
    say: Callable[[str], None] = field(default=logger.info)
    error: Callable[[str], None] = field(default=logger.error)
    progress: ProgressFactory = field(default=lambda category: nullcontext(None))
    loading: LoadingHook | None = None


def profile_options(tagger: str | None, tags: str | None, llm: str, prompts: str | None, **values: Any) -> Stage1Options:
    """The Stage1Options of ``iapas profile``: --tags implies the manual tagger; a bad
    combination raises :class:`ProfileJobError`."""
    from iapas.core.caption import split_word_list

    if tags is not None and tagger not in (None, "manual"):
        raise ProfileJobError(f"--tags gives the tags by hand (the manual tagger); it cannot go with --tagger {tagger}")
    tagger = "manual" if tags is not None else tagger or "clip"
    if tagger not in TAGGERS:
        raise ProfileJobError(f"unknown --tagger {tagger!r}; choose one of {', '.join(TAGGERS)}")
    if tagger == "manual" and not tags:
        raise ProfileJobError("--tagger manual needs --tags 'tag, tag'")
    if llm not in LLMS:
        raise ProfileJobError(f"unknown --llm {llm!r}; choose one of {', '.join(LLMS)}")
    try:
        return Stage1Options(
            tagger=tagger, tags=split_word_list(tags) if tagger == "manual" else None, llm=llm,
            nouns=split_word_list(prompts) if prompts is not None else None, **values,
        )
    except ValueError as exc:
        raise ProfileJobError(str(exc)) from None


def dataset_like(inputs: list[str], paths: list[Path]) -> str | None:
    """An error message when a reference folder is a dataset's category (or root) folder, whose
    defect images and masks would be drawn as 'normal' references; else None.

    A folder given with -r that is, or holds, a ``ground_truth`` folder or a ``test`` folder with
    a subfolder other than ``good`` (with images found there) is taken as such.
    """
    for item in inputs:
        folder = Path(item).expanduser()
        if not folder.is_dir():
            continue
        base = folder.absolute().parent
        for path in paths:
            try:
                parts = path.absolute().relative_to(base).parts[:-1]  # starts with the folder's own name
            except ValueError:
                continue
            hit = next(
                (i for i, part in enumerate(parts)
                 if part == "ground_truth" or (part == "test" and i + 1 < len(parts) and parts[i + 1] != "good")),
                None,
            )
            if hit is None:
                continue
            category = base.joinpath(*parts[:hit])
            what = "ground_truth/" if parts[hit] == "ground_truth" else f"test/{parts[hit + 1]}/"
            return (
                f"{folder} looks like a dataset folder ({category} has {what}): its defect images and masks are not "
                f"normal references. Give its normal images, e.g. -r {category / 'train' / 'good'}, or use the "
                f"dataset's own split: --dataset NAME --root {category.parent} --categories {category.name} (NAME e.g. mvtec)"
            )
    return None


def reference_images(reference: list[str], n: int, seed: int, say: Callable[[str], None]) -> list[Path]:
    """The ``n`` reference images drawn (with ``seed``) from files, folders and patterns, leaving
    out masks; a dataset's folder or no image raises :class:`ProfileJobError`."""
    from iapas.data.search import mask_rule, search_images
    from iapas.prompts.stage1 import Stage1Error, select_references

    search = search_images(list(reference))  # leaves out the masks of folders (and says so)
    paths = search.paths
    for problem in search.problems:
        say(f"warning: {problem}")
    found = dataset_like(list(reference), paths + [m for m, _ in search.masks])
    if found:
        raise ProfileJobError(found)
    masks = [p for p in paths if mask_rule(p)]  # named one by one: still not references
    if masks:
        say(f"warning: left out {len(masks)} mask image(s) ({mask_rule(masks[0])}, e.g. {masks[0]}): masks are not reference images")
        paths = [p for p in paths if not mask_rule(p)]
    if not paths:
        raise ProfileJobError("no reference images found in " + ", ".join(reference))
    if n > len(paths):
        say(f"warning: --references {n} asked for, but only {len(paths)} image(s) found; using all of them")
    try:
        return select_references(paths, n, seed)
    except Stage1Error as exc:
        raise ProfileJobError(str(exc)) from None


def profile_from_references(category: str, reference: list[str], out: Path, opts: Stage1Options, job: ProfileJob) -> str:
    """Stage 1 on reference images: 'written', 'cached' or 'conflict' (see :func:`keep_existing`)."""
    chosen = reference_images(reference, job.references, opts.seed, job.say)
    return make_one(category, chosen, out, opts, job, Stage1Models(opts, loading=job.loading))


def hand_profile(category: str, out: Path, opts: Stage1Options, job: ProfileJob) -> str:
    """The profile from the object tag and nouns alone (no model is loaded): 'written', 'cached' or 'conflict'."""
    from iapas.core.version import __version__
    from iapas.product.profile import Profile, ProfileError
    from iapas.prompts.stage1 import input_hash

    nouns = opts.nouns or []
    prompts = ",".join(nouns)  # the --prompts text as typed, as Stage1Models.settings records it
    settings = {
        "mode": "manual", "object": opts.object_tag, "prompts": prompts, "size_threshold": opts.size_threshold,
        "include_object_tag": opts.include_object_tag, "object_join": opts.object_join,
    }
    if opts.text_processing != "iapas":
        settings["text_processing"] = opts.text_processing
    digest = input_hash(category, [], settings)
    decision = keep_existing(out, digest, job, opts.size_threshold)
    if decision != "write":
        return decision
    try:
        profile = Profile.from_prompts(
            category, opts.object_tag, nouns, include_object_tag=opts.include_object_tag,
            size_threshold=opts.size_threshold, object_join=opts.object_join,
            stage1={
                "source": "manual", "prompts": prompts, "object_join": opts.object_join, "input_hash": digest,
                "iapas_version": __version__, "text_processing": opts.text_processing,
            },
        )
        if opts.text_processing == "reference":
            profile = reference_caption(profile, nouns)
        profile.save(out)
    except (ProfileError, OSError) as exc:
        raise ProfileJobError(str(exc)) from None
    job.say(f"wrote {out}: object '{profile.object_tag}', caption '{profile.caption}'")
    return "written"


def keep_existing(out: Path, digest: str, job: ProfileJob, size_threshold: float) -> str:
    """'write' when ``out`` may be (over)written; 'cached' when it holds a profile of the same
    inputs (kept, with any hand edits); 'conflict' when it holds something else and no force."""
    if job.force or not out.exists():
        return "write"
    from iapas.product.profile import Profile, ProfileError

    try:
        existing = Profile.load(out)
    except ProfileError as exc:
        job.error(f"{out} exists but is not a usable profile ({exc}); use --force to overwrite it")
        return "conflict"
    if existing.stage1.get("input_hash") != digest:
        job.error(
            f"{out} exists and was made from other inputs (reference images, models or options "
            "differ, or it was written by hand); use --force to overwrite it"
        )
        return "conflict"
    return _same_inputs(out, existing, job, size_threshold)


def _same_inputs(out: Path, existing: Any, job: ProfileJob, size_threshold: float) -> str:
    """A profile made from the same inputs: made again after an unedited LLM failure, else kept."""
    from iapas.prompts.stage1 import fallback_reason, llm_error_fallback

    s1 = existing.stage1
    failed = llm_error_fallback(s1)
    caption = s1.get("caption") if isinstance(s1.get("caption"), dict) else {}
    obj = s1.get("object") if isinstance(s1.get("object"), dict) else {}
    # what stage 1 wrote into the four fields stage 2 reads, against what the file holds now
    made = {
        "caption": (caption.get("text"), existing.caption),
        "object_tag": (obj.get("tag"), existing.object_tag),
        "object_size": (obj.get("object_size", existing.object_size), existing.object_size),
        "size_threshold": (size_threshold, existing.size_threshold),
    }
    edited = any(was is not None and was != now for was, now in made.values())
    if failed and not edited:
        job.say(f"{out}: made from the same inputs, but after an LLM failure ({failed}); making it again")
        return "write"
    if failed:
        job.say(f"{out}: made after an LLM failure ({failed}) but edited by hand; keeping it (use --force to make it again)")
    elif (reason := fallback_reason(s1)) is not None:
        job.say(
            f"{out}: made from the same inputs; keeping it. Its nouns come from the knowledge vocabulary because the "
            f"LLM replied nothing usable ({reason}); the same seed samples the same reply: edit "
            "the file, or use --force to make it again"
        )
    else:
        job.say(f"{out}: made from the same inputs; keeping it (use --force to make it again)")
    return "cached"


def _stage1_errors() -> tuple[type[BaseException], ...]:
    from iapas.core.images import ImageReadError
    from iapas.models import ModelOutputError
    from iapas.models.loading import ModelLoadError
    from iapas.product.profile import ProfileError
    from iapas.prompts.knowledge import KnowledgeError
    from iapas.prompts.llm import LLMError
    from iapas.prompts.stage1 import Stage1Error
    from iapas.prompts.tagging import TaggerError

    return (
        ModelLoadError, ModelOutputError, TaggerError, LLMError, KnowledgeError, Stage1Error, ImageReadError, ProfileError,
        OSError, ValueError,
    )


def make_one(
    category: str, chosen: list[Path], out: Path, opts: Stage1Options, job: ProfileJob, models: Stage1Models,
    extra: dict[str, Any] | None = None,
) -> str:
    """Make (or keep) one category's profile; returns 'written', 'cached' or 'conflict'."""
    from iapas.prompts.llm import LLMError
    from iapas.prompts.stage1 import build_with_models, load_stage1_models

    errors = _stage1_errors()
    try:
        digest = models.input_hash(category, chosen)
    except errors as exc:
        raise ProfileJobError(str(exc)) from None
    decision = keep_existing(out, digest, job, opts.size_threshold)
    if decision != "write":
        return decision
    try:
        load_stage1_models(models, opts)  # each behind its spinner, before the progress bars start
        with job.progress(category) as on_progress:
            profile = build_with_models(category, chosen, models, opts, input_digest=digest, progress=on_progress)
        if extra:
            profile.stage1.update(extra)
        profile.save(out)
    except LLMError as exc:  # only with --llm-fallback never
        raise ProfileJobError(str(exc), 1) from None
    except errors as exc:
        raise ProfileJobError(str(exc)) from None
    record = profile.stage1
    size = f"{profile.object_size:.3f}" if profile.object_size is not None else "unknown"
    dropped = record.get("caption", {}).get("dropped_nouns")
    if dropped:
        job.say(f"caption too long for the detector: dropped {', '.join(dropped)}")
    job.say(f"wrote {out}: object '{profile.object_tag}' (size {size}), caption '{profile.caption}'" + fallback_note(record))
    return "written"


def fallback_note(stage1: Any) -> str:
    """'; ...' saying in words that the knowledge fallback replaced the LLM and why, for the end
    of a summary line; '' when the LLM (or the user) gave the nouns."""
    from iapas.prompts.stage1 import fallback_reason

    reason = fallback_reason(stage1)
    if reason is None:
        return ""
    return f"; LLM fallback: the anomaly nouns come from the knowledge vocabulary, not the LLM, because {reason}"


def reference_caption(profile: Any, nouns: list[str]) -> Any:
    """A hand-made profile with the reference code's caption: the typed nouns cleaned and
    joined as it joins an LLM reply (:mod:`iapas.prompts.reference_text`)."""
    from iapas.prompts.reference_text import reference_caption as caption_of, reference_clean_reply

    phrases = reference_clean_reply(", ".join(nouns))
    caption = caption_of(phrases, profile.object_tag, profile.include_object_tag)
    kept = [p.strip() for p in phrases if p.strip() and p.strip() not in ("abnormal", "defect")]
    return replace(profile, caption=caption, anomaly_nouns=kept)


def dataset_profiles(name: str, root: Path | None, categories: list[str], out: Path, opts: Stage1Options, job: ProfileJob) -> dict[str, str]:
    """The profile of every category of dataset ``name`` at ``root`` (or of ``categories``) as
    ``out/CATEGORY.yaml``, from the dataset's own normal references; each category's status."""
    ds, wanted = _dataset_categories(name, root, categories, out)
    models = Stage1Models(opts, loading=job.loading)
    statuses: dict[str, str] = {}
    for cat in wanted:
        try:
            category = ds.load(cat, n_references=job.references, seed=opts.seed)
        except (DatasetError, ValueError, OSError) as exc:
            raise ProfileJobError(str(exc)) from None
        if not category.references:
            raise ProfileJobError(f"{name} category {cat}: no normal reference images")
        for note in category.notes:
            logger.info("%s: %s", cat, note)
        extra = {"dataset": {"name": name, "root": str(root), "category": cat, "notes": list(category.notes)}}
        statuses[cat] = make_one(cat, list(category.references), out / f"{cat}.yaml", opts, job, models, extra)
    job.say(_dataset_line(name, out, statuses))
    return statuses


def _dataset_categories(name: str, root: Path | None, categories: list[str], out: Path) -> tuple[Any, list[str]]:
    """The dataset's loader and the categories to make, after checking --root, the names and --out."""
    if root is None:
        raise ProfileJobError("--dataset needs --root DIR, the dataset's folder")
    from iapas.data import get_dataset

    try:
        ds = get_dataset(name, root)
        available = ds.categories()
    except (DatasetError, ValueError, OSError) as exc:
        raise ProfileJobError(str(exc)) from None
    wanted = [c.strip() for item in categories for c in item.split(",") if c.strip()] or list(available)
    unknown = [c for c in wanted if c not in available]
    if unknown:
        raise ProfileJobError(
            f"{name} at {root} has no categor{'y' if len(unknown) == 1 else 'ies'} {', '.join(unknown)}; it has {', '.join(available)}"
        )
    if out.suffix.lower() in (".yaml", ".yml", ".json"):
        raise ProfileJobError(f"with --dataset, --out is a folder for <category>.yaml files, not a file ({out})")
    return ds, wanted


def _dataset_line(name: str, out: Path, statuses: dict[str, str]) -> str:
    """'NAME: N profile(s) written, M kept, in OUT' and which written ones fell back to the knowledge vocabulary."""
    from iapas.product.profile import Profile, ProfileError
    from iapas.prompts.stage1 import fallback_reason

    conflicts = [c for c, s in statuses.items() if s == "conflict"]
    written = [c for c, s in statuses.items() if s == "written"]
    fell_back: dict[str, str] = {}
    for cat in written:
        try:
            reason = fallback_reason(Profile.load(out / f"{cat}.yaml").stage1)
        except ProfileError:
            continue
        if reason is not None:
            fell_back[cat] = reason
    note = ""
    if fell_back:
        note = (
            f"; LLM fallback: the anomaly nouns of {', '.join(fell_back)} come from the knowledge vocabulary, not the "
            f"LLM, because {next(iter(fell_back.values()))}"
        )
    return f"{name}: {len(written)} profile(s) written, {len(statuses) - len(written) - len(conflicts)} kept, in {out}{note}"
