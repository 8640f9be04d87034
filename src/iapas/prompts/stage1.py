"""Stage 1 of IAP-AS: from a few normal reference images to a category profile.

:func:`build_profile` runs METHOD.md stage 1 on the interfaces only (:class:`Tagger`,
:class:`~iapas.models.base.Detector`, :class:`LLM`):

1. reference images (:func:`select_references`: N files drawn with a fixed seed);
2. tags per image, aggregated, non-object tags dropped, joined into a tag caption;
3. the object tag by the detector vote, and the median reference object size (measured as
   stage 2 measures it: the detector with the object tag alone, the top box);
4. anomaly nouns from the LLM (or the offline knowledge vocabulary; also the fallback when the
   LLM fails or replies nothing usable);
5. the caption 'w1 . w2 . ... . abnormal . defect . <object tag> .', trimmed to the detector's
   text window by dropping tail nouns;
6. a :class:`~iapas.product.profile.Profile` whose ``stage1`` mapping records all of it.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from iapas.core.version import __version__
from iapas.core.images import read_image
from iapas.product.profile import Profile
from iapas.core.caption import ALWAYS_ADDED, DEFAULT_OBJECT_JOIN, clean_nouns, estimated_text_budget
from iapas.prompts.knowledge import Knowledge
from iapas.prompts.llm import DEFAULT_PROMPT_STYLE, LLM, LLMError, Message, build_messages
from iapas.prompts.object_tag import BOX_THRESHOLD, NMS_IOU, TEXT_THRESHOLD
from iapas.prompts.errors import Stage1Error  # noqa: F401 - callers import it from here
from iapas.prompts.parsing import parse_word_list
from iapas.prompts.profile_key import input_hash  # noqa: F401 - callers import it from here
from iapas.prompts.reference_text import DEFAULT_TEXT_PROCESSING, check_text_processing
from iapas.prompts.tagging import Tagger, load_stoplist, normalize_tag
from iapas.prompts import stage1_steps as steps_
from iapas.core.ops import DEFAULT_SIZE_THRESHOLD

logger = logging.getLogger(__name__)

DEFAULT_REFERENCES = 10
# progress(stage, done, total): stage is 'reading', 'tagging', 'detecting' (the tag vote) or
# 'measuring' (the object size).
ProgressCallback = Callable[[str, int, int], None]


# --- step 1: reference images ----------------------------------------------------------------


def select_references(paths: Sequence[str | Path], n: int = DEFAULT_REFERENCES, seed: int = 0) -> list[Path]:
    """``n`` of ``paths`` drawn with ``seed`` (all of them when there are at most ``n``), sorted.

    The paths are sorted (as POSIX strings) and shuffled with ``random.Random(seed)``; the first
    ``n`` are taken. So the draw ignores listing order, and the references for N=1 are among
    those for N=10 (the paper's 10-vs-1 ablation); the rule is the same as
    ``iapas.data``'s dataset loaders use.
    """
    if n < 1:
        raise Stage1Error(f"the number of reference images must be >= 1, got {n}")
    ordered = sorted({Path(p) for p in paths}, key=lambda p: p.as_posix())
    if not ordered:
        raise Stage1Error("no reference images given")
    order = list(range(len(ordered)))
    random.Random(seed).shuffle(order)
    return sorted((ordered[i] for i in order[:n]), key=lambda p: p.as_posix())


# --- step 4: anomaly nouns ---------------------------------------------------------------------


@dataclass
class NounResult:
    """Where the anomaly nouns came from, and everything needed to audit them."""

    backend: str  # 'transformers', 'openai', 'knowledge' or 'manual'
    model: str | None
    nouns: list[str]  # usable nouns: cleaned, base forms, without 'abnormal'/'defect'/the object tag
    messages: list[Message] | None = None
    raw_text: str | None = None  # the LLM's reply as received
    parsed: list[str] = field(default_factory=list)  # words read from the reply, before cleaning
    fallback_used: bool = False
    fallback_reason: str | None = None
    knowledge_family: str | None = None  # when the knowledge vocabulary answered
    base_url: str | None = None
    prompt_style: str | None = None  # the messages' style (iapas.prompts.llm.PROMPT_STYLES), when an LLM was asked

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _plurals(tag: str) -> set[str]:
    """``tag`` and its English plurals ('bottle' -> 'bottles'; 'box' -> 'boxes'; 'battery' -> 'batteries')."""
    forms = {tag, tag + "s", tag + "es"}
    if tag.endswith("y") and len(tag) > 2:
        forms.add(tag[:-1] + "ies")
    return forms


def usable_nouns(words: Sequence[str], object_tag: str, knowledge: Knowledge) -> list[str]:
    """Clean parsed words into anomaly nouns for the caption.

    :func:`clean_nouns` (lowercase, fillers dropped, de-duplicated keeping first order), then
    plural/-ed/-ing forms of known anomaly nouns to the noun (:meth:`Knowledge.base_form`),
    then without 'abnormal', 'defect' and the object tag or its plural ('bottles' for
    'bottle'): the caption adds those itself, and the object is not an anomaly on itself.
    """
    reserved = set(ALWAYS_ADDED)
    for tag in clean_nouns([object_tag]):
        reserved |= _plurals(tag)
    cleaned = clean_nouns(knowledge.base_form(w) for w in clean_nouns(words))
    return [w for w in cleaned if w not in reserved]


def generate_nouns(
    object_tag: str,
    llm: LLM | None,
    *,
    seed: int,
    knowledge: Knowledge,
    other_tags: Sequence[str] = (),
    manual: Sequence[str] | None = None,
    prompt_style: str = DEFAULT_PROMPT_STYLE,
    fallback: bool = True,
) -> NounResult:
    """Anomaly nouns for ``object_tag``: by hand, from ``llm`` (asked with the messages of
    ``prompt_style``), or from ``knowledge``.

    An LLM that raises :class:`LLMError` (or any error), or whose reply gives no usable noun,
    is replaced by the knowledge vocabulary and the result says so (``fallback_used``,
    ``fallback_reason``). Never raises for a failing LLM, unless ``fallback`` is False: then
    such a failure raises :class:`LLMError` with the reason.
    """
    if manual is not None:
        nouns = usable_nouns(list(manual), object_tag, knowledge)
        return NounResult("manual", None, nouns, parsed=list(manual))
    if llm is None:
        answer = knowledge.answer(object_tag, other_tags)
        return NounResult(
            "knowledge", knowledge.source, usable_nouns(list(answer.nouns), object_tag, knowledge), knowledge_family=answer.family
        )
    messages = build_messages(object_tag, prompt_style)
    result = NounResult(
        llm.name, llm.model_id, [], messages=messages, base_url=getattr(llm, "base_url", None), prompt_style=prompt_style
    )
    try:
        result.raw_text = llm.complete(messages, seed=seed)
    except LLMError as exc:
        result.fallback_reason = f"{LLM_ERROR_PREFIX}{exc}"
    except Exception as exc:  # noqa: BLE001 - a broken backend must not lose the profile
        result.fallback_reason = f"{LLM_ERROR_PREFIX}{type(exc).__name__}: {exc}"
    if result.raw_text is not None:
        result.parsed = parse_word_list(result.raw_text)
        result.nouns = usable_nouns(result.parsed, object_tag, knowledge)
        if not result.nouns:
            shown = " ".join(result.raw_text.split())
            shown = shown if len(shown) <= 120 else shown[:117] + "..."
            result.fallback_reason = f"no usable anomaly noun in the LLM reply {shown!r}"
    if not result.nouns and not fallback:
        reason = (result.fallback_reason or "the LLM failed").removeprefix(LLM_ERROR_PREFIX)
        raise LLMError(f"{llm.model_id}: {reason} (--llm-fallback never: no knowledge-vocabulary fallback)")
    if not result.nouns:
        answer = knowledge.answer(object_tag, other_tags)
        result.nouns = usable_nouns(list(answer.nouns), object_tag, knowledge)
        result.fallback_used = True
        result.knowledge_family = answer.family
        logger.warning("%s; using the knowledge vocabulary (%s) instead", result.fallback_reason, answer.family)
    return result


LLM_ERROR_PREFIX = "LLM error: "


def fallback_reason(stage1: Any) -> str | None:
    """Why a profile's nouns came from the knowledge vocabulary instead of the LLM, as its
    ``stage1`` record says; None when they did not."""
    if not isinstance(stage1, dict) or not stage1.get("fallback_used"):
        return None
    return str(stage1.get("fallback_reason") or "the LLM failed")


def llm_error_fallback(stage1: dict[str, Any]) -> str | None:
    """The reason, when a profile's ``stage1`` record says its nouns came from the knowledge
    vocabulary because the LLM failed (an error, a time-out, or it could not be loaded), not
    because it replied nothing usable; else None. Such a profile is worth making again."""
    reason = fallback_reason(stage1)
    return reason if reason is not None and reason.startswith(LLM_ERROR_PREFIX) else None


# --- the driver ------------------------------------------------------------------------------------


def _read_references(paths: Sequence[Path], progress: ProgressCallback | None) -> list[np.ndarray]:
    images = []
    for i, path in enumerate(paths):
        images.append(read_image(path).rgb)
        if progress is not None:
            progress("reading", i + 1, len(paths))
    return images


def _unique_names(paths: Sequence[Path]) -> list[str]:
    """File names, or longer tails of the path where names repeat (a/good/000.png, b/good/000.png)."""
    names = [p.name for p in paths]
    depth = 1
    while len(set(names)) < len(names) and depth < 8:
        depth += 1
        names = ["/".join(p.parts[-depth:]) for p in paths]
    return names


def build_profile(
    category: str,
    references: Sequence[str | Path],
    *,
    tagger: Tagger | None = None,
    detector: Any | None = None,
    llm: LLM | None = None,
    knowledge: Knowledge | None = None,
    seed: int = 0,
    object_tag: str | None = None,
    nouns: Sequence[str] | None = None,
    include_object_tag: bool = True,
    object_join: str = DEFAULT_OBJECT_JOIN,
    prompt_style: str = DEFAULT_PROMPT_STYLE,
    size_threshold: float = DEFAULT_SIZE_THRESHOLD,
    stoplist: frozenset[str] | None = None,
    max_tags: int | None = None,
    box_threshold: float = BOX_THRESHOLD,
    text_threshold: float = TEXT_THRESHOLD,
    nms_iou: float = NMS_IOU,
    input_digest: str | None = None,
    models: dict[str, Any] | None = None,
    progress: ProgressCallback | None = None,
    llm_fallback: bool = True,
    text_processing: str = DEFAULT_TEXT_PROCESSING,
) -> Profile:
    """Stage 1 for one category: reference images -> :class:`~iapas.product.profile.Profile`.

    ``references`` are the image files to use (pick them with :func:`select_references`).
    ``object_tag`` given: no tagging or vote. Either way the detector (if given) measures the
    object size on the references as stage 2 does (:func:`~iapas.prompts.object_tag.measure_object_size`). ``nouns`` given: no LLM (hand-made anomaly nouns). ``llm`` None and
    no ``nouns``: the ``knowledge`` vocabulary answers. ``prompt_style`` names the LLM's messages
    and ``object_join`` how the object tag joins the caption (:func:`~iapas.core.caption.build_caption`). ``detector`` is any
    :class:`~iapas.models.base.Detector`; it says how its captions are counted
    (``caption_budget``: exact for Grounding DINO). ``input_digest`` is stored as ``stage1.input_hash``.
    ``llm_fallback`` False: an LLM failure raises :class:`LLMError` instead of falling back to
    the knowledge vocabulary (:func:`generate_nouns`). ``text_processing`` 'reference' does
    steps 2-5 as the reference code (:mod:`~iapas.prompts.reference_text`; ``object_join`` and
    ``stoplist`` then do not apply).
    """
    reference = check_text_processing(text_processing) == "reference"
    t_start = time.perf_counter()
    category = category.strip()
    if not category:
        raise Stage1Error("the category name is empty")
    knowledge = knowledge or Knowledge.load()
    stoplist = load_stoplist() if stoplist is None else stoplist
    paths = [Path(p) for p in references]
    given_object = normalize_tag(object_tag) if object_tag else None
    if given_object is None and (tagger is None or detector is None):
        raise Stage1Error("finding the object tag needs a tagger and a detector; or give the object tag (--object)")
    if given_object is None and not paths:
        raise Stage1Error("finding the object tag needs reference images")
    steps = _start(paths, given_object, detector, seed, input_digest, progress, box_threshold, text_threshold, nms_iou)
    chosen, object_record, aggregated = steps_.object_tag(steps, tagger, given_object, reference, stoplist, max_tags)
    object_size = steps_.object_size(steps, chosen, object_record)
    steps.record["object"] = object_record

    # step 4: anomaly nouns
    t = time.perf_counter()
    noun_result = generate_nouns(
        chosen, llm, seed=seed, knowledge=knowledge, other_tags=aggregated,
        manual=list(nouns) if nouns is not None else None, prompt_style=prompt_style, fallback=llm_fallback,
    )
    steps.timings["nouns_s"] = time.perf_counter() - t
    steps.record.update(llm=noun_result.to_dict(), fallback_used=noun_result.fallback_used, fallback_reason=noun_result.fallback_reason)
    caption, kept = steps_.caption(steps, noun_result, chosen, include_object_tag, object_join, text_processing)
    steps.timings["total_s"] = time.perf_counter() - t_start
    steps.record["timings"] = {k: round(v, 3) for k, v in steps.timings.items()}
    profile = Profile(
        category=category, object_tag=chosen, caption=caption, anomaly_nouns=kept, include_object_tag=include_object_tag,
        size_threshold=size_threshold, object_size=object_size,
        models=steps_.models_used(tagger if given_object is None else None, detector, noun_result, models), stage1=steps.record,
    )
    profile.validate(f"profile of {category!r}")
    return profile


def _start(
    paths: list[Path], given_object: str | None, detector: Any, seed: int, input_digest: str | None,
    progress: ProgressCallback | None, box_threshold: float, text_threshold: float, nms_iou: float,
) -> steps_.Steps:
    """The stage-1 record begun and the references read (when a step needs them: without a
    given object tag, or with a detector to measure the object size)."""
    names = _unique_names(paths)
    record: dict[str, Any] = {
        "source": "stage1", "seed": seed, "input_hash": input_digest, "iapas_version": __version__,
        "references": [str(p) for p in paths], "reference_names": names,
    }
    count_tokens, max_tokens, counter = detector.caption_budget() if detector is not None else estimated_text_budget()
    steps = steps_.Steps(
        detector, [], names, count_tokens, max_tokens, counter, box_threshold, text_threshold, nms_iou, progress, record
    )
    if paths and (given_object is None or detector is not None):
        t = time.perf_counter()
        steps.images = _read_references(paths, progress)
        steps.timings["read_s"] = time.perf_counter() - t
    return steps


def load_stage1_models(models: Any, options: Any) -> tuple[Any, Any, Any, Any]:
    """The LLM, knowledge vocabulary, detector and tagger (None with an object tag given) of
    ``models``, loaded in this order: an LLM that cannot be loaded is known before any other
    stage-1 work. Loaded models are kept: a second call returns them at once."""
    llm = models.llm()
    knowledge = models.knowledge()
    detector = models.detector()
    return llm, knowledge, detector, None if options.object_tag else models.tagger()


def build_with_models(
    category: str, references: list[Path], models: Any, options: Any, *, input_digest: str,
    progress: ProgressCallback | None = None,
) -> Profile:
    """:func:`build_profile` with the models of ``models`` (a :class:`~iapas.prompts.resources.Stage1Models`)
    and the settings of ``options`` (its Stage1Options): what ``iapas profile`` and an evaluation's
    missing profile both run (models loaded by :func:`load_stage1_models`)."""
    o = options
    llm, knowledge, detector, tagger = load_stage1_models(models, o)
    return build_profile(
        category, references, tagger=tagger, detector=detector, llm=llm, knowledge=knowledge, seed=o.seed,
        object_tag=o.object_tag, nouns=o.nouns, include_object_tag=o.include_object_tag, object_join=o.object_join,
        text_processing=o.text_processing, prompt_style=o.prompt_style, size_threshold=o.size_threshold,
        input_digest=input_digest, progress=progress, llm_fallback=o.llm_fallback != "never",
    )
