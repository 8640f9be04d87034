"""The steps of :func:`iapas.prompts.stage1.build_profile` after the references are read: the tags
and the object tag (step 2-3), the object size, the caption (step 5) and the models a profile
names. Each writes what it did into the stage-1 record it is given (:class:`Steps`)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from iapas.core.caption import ALWAYS_ADDED, fit_caption, fit_tag_caption
from iapas.prompts.errors import Stage1Error
from iapas.prompts.object_tag import ObjectVote, detect_references, measure_object_size, vote_object_tag
from iapas.prompts.reference_text import fit_reference_caption, reference_reply_phrases, reference_tags_and_object
from iapas.prompts.tagging import ScoredTags, Tagger, aggregate_tags, drop_stop_tags, normalize_tag

logger = logging.getLogger(__name__)

NO_BOX = "top tag (the detector found no box on any reference image)"


@dataclass
class Steps:
    """What the steps share: the detector and the references read, the text window, the
    thresholds, the progress callback, and the record and timings being written."""

    detector: Any
    images: list[np.ndarray]
    names: list[str]
    count_tokens: Callable[[str], int]
    max_tokens: int
    counter: str
    box_threshold: float
    text_threshold: float
    nms_iou: float
    progress: Callable[[str, int, int], None] | None
    record: dict[str, Any]
    timings: dict[str, float] = field(default_factory=dict)

    def tick(self, stage: str) -> Callable[[int], None]:
        progress, total = self.progress, len(self.images)
        return lambda i: progress(stage, i + 1, total) if progress is not None else None

    def detection(self) -> dict[str, Any]:
        return dict(box_threshold=self.box_threshold, text_threshold=self.text_threshold, nms_iou=self.nms_iou)


def object_tag(
    steps: Steps, tagger: Tagger | None, given: str | None, reference: bool, stoplist: frozenset[str], max_tags: int | None
) -> tuple[str, dict[str, Any], list[str]]:
    """Steps 2 and 3: the object tag (given, or the detector vote over the aggregated tags, or the
    reference code's raw detector phrase), its record, and the aggregated tags."""
    if given is not None:
        return given, {"source": "given", "tag": given}, []
    assert tagger is not None and steps.detector is not None
    t = time.perf_counter()
    per_image: list[ScoredTags] = []
    for i, rgb in enumerate(steps.images):
        per_image.append(tagger.tag([rgb])[0])
        steps.tick("tagging")(i)
    steps.timings["tagging_s"] = time.perf_counter() - t
    steps.record["tagger"] = {"backend": tagger.name, "model": tagger.model_id, **_tagger_settings(tagger)}
    if reference:
        chosen, object_record = _reference_object(steps, per_image)
        return chosen, object_record, []
    return _voted_object(steps, per_image, stoplist, max_tags)


def _reference_object(steps: Steps, per_image: list[ScoredTags]) -> tuple[str, dict[str, Any]]:
    """The reference code's object tag: the detector's phrase on the per-image tag captions."""
    t = time.perf_counter()
    steps.record["tags"], object_record, found = reference_tags_and_object(
        steps.detector, steps.images, per_image, steps.names, count_tokens=steps.count_tokens,
        max_tokens=steps.max_tokens, on_image=steps.tick("detecting"), **steps.detection(),
    )
    steps.timings["detection_s"] = time.perf_counter() - t
    first = next((normalize_tag(t) for tags in per_image for t, _ in tags if normalize_tag(t)), None)
    if found is None and first is None:
        raise Stage1Error("no detector phrase or tag on the reference images; give the object tag with --object")
    chosen = found or str(first)
    if found is None:
        object_record.update(source=NO_BOX, tag=chosen)
    return chosen, object_record


def _voted_object(
    steps: Steps, per_image: list[ScoredTags], stoplist: frozenset[str], max_tags: int | None
) -> tuple[str, dict[str, Any], list[str]]:
    """iapas's object tag: the tags aggregated (non-object words dropped), then the detector vote."""
    ranked, stopped = drop_stop_tags(aggregate_tags(per_image), stoplist)
    ranked = ranked[:max_tags] if max_tags is not None else ranked
    tag_caption, tags_cut = fit_tag_caption(ranked, steps.count_tokens, steps.max_tokens)
    aggregated = [t for t in ranked if t not in tags_cut]
    steps.record["tags"] = {
        "per_image": [
            {"image": name, "tags": [normalize_tag(t) for t, _ in tags], "scores": [round(float(s), 5) for _, s in tags]}
            for name, tags in zip(steps.names, per_image)
        ],
        "aggregated": aggregated,
        "dropped_non_object": stopped,
        "dropped_for_length": tags_cut,
        "caption": tag_caption,
    }
    if not aggregated:
        raise Stage1Error(
            "the tagger found no object tag on the reference images (all tags were empty or non-object "
            f"words: {', '.join(stopped) or 'none'}); give the object tag with --object or tags with --tags"
        )
    t = time.perf_counter()
    detections = detect_references(steps.detector, steps.images, tag_caption, on_image=steps.tick("detecting"), **steps.detection())
    steps.timings["detection_s"] = time.perf_counter() - t
    image_sizes = [(int(im.shape[0]), int(im.shape[1])) for im in steps.images]
    vote = vote_object_tag(detections, image_sizes, aggregated, steps.names)
    if vote.object_tag is None:
        chosen, source = aggregated[0], NO_BOX
        logger.warning("no detection on the reference images; using the top tag %r as the object tag", chosen)
    else:
        chosen, source = vote.object_tag, "detector vote"
    return chosen, {"source": source, "tag": chosen, **_vote_fields(vote)}, aggregated


def object_size(steps: Steps, chosen: str, object_record: dict[str, Any]) -> float | None:
    """The median reference object size, measured as stage 2 does (None without a detector or images)."""
    if steps.detector is None or not steps.images:
        return None
    t = time.perf_counter()
    measured = measure_object_size(steps.detector, steps.images, chosen, on_image=steps.tick("measuring"), **steps.detection())
    steps.timings["object_size_s"] = time.perf_counter() - t
    object_record.update({
        "object_size": measured.object_size,
        "sizes": measured.sizes,
        "size_per_image": [{"image": n, "size": s} for n, s in zip(steps.names, measured.per_image)],
        "size_method": f"detector with the object tag alone ({measured.caption!r}), top box, median (as stage 2)",
    })
    return measured.object_size


def caption(
    steps: Steps, noun_result: Any, chosen: str, include_object_tag: bool, object_join: str, text_processing: str,
) -> tuple[str, list[str]]:
    """Step 5: the caption within the detector's text window, and the nouns kept in it."""
    reference = text_processing == "reference"
    count_tokens, max_tokens = steps.count_tokens, steps.max_tokens
    try:
        if reference:
            words = noun_result.parsed if noun_result.backend == "manual" else noun_result.nouns
            phrases = reference_reply_phrases(noun_result.raw_text, words, noun_result.fallback_used)
            text, kept_phrases, dropped = fit_reference_caption(phrases, chosen, include_object_tag, count_tokens, max_tokens)
            kept = [p.strip() for p in kept_phrases if p.strip() and p.strip() not in ALWAYS_ADDED]
        else:
            text, dropped = fit_caption(
                noun_result.nouns, chosen, include_object_tag, count_tokens=count_tokens, max_tokens=max_tokens,
                object_join=object_join,
            )
            kept = [w for w in noun_result.nouns if w not in dropped]
    except ValueError as exc:
        raise Stage1Error(str(exc)) from None
    if dropped:
        logger.warning("caption over %d text tokens: dropped %d tail noun(s): %s", max_tokens, len(dropped), ", ".join(dropped))
    steps.record["caption"] = {
        "text": text, "nouns": kept, "dropped_nouns": dropped, "token_count": count_tokens(text),
        "max_tokens": max_tokens, "token_counter": steps.counter,
        "include_object_tag": include_object_tag, "object_join": "comma" if reference else object_join,
        "text_processing": text_processing,
    }
    return text, kept


def models_used(tagger: Tagger | None, detector: Any, noun_result: Any, models: dict[str, Any] | None) -> dict[str, Any]:
    """The models a profile names: the tagger (when it tagged), the detector, the LLM (or the
    knowledge vocabulary, or its fallback), then ``models`` given by the caller."""
    out: dict[str, Any] = {}
    if tagger is not None:
        out["tagger"] = tagger.model_id or tagger.name
    if detector is not None:
        out["detector"] = detector.name
    if noun_result.backend == "knowledge":
        out["llm"] = "knowledge"
    elif noun_result.fallback_used:  # the reason is in stage1.fallback_reason
        out["llm"] = f"knowledge (fallback from {noun_result.model})"
    elif noun_result.backend != "manual":
        out["llm"] = noun_result.model
    out.update(models or {})
    return out


def _tagger_settings(tagger: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for attr in ("top_k", "template"):
        if hasattr(tagger, attr):
            out[attr] = getattr(tagger, attr)
    if hasattr(tagger, "vocabulary"):
        out["vocabulary_size"] = len(tagger.vocabulary)
    return out


def _vote_fields(vote: ObjectVote) -> dict[str, Any]:
    data = vote.to_dict()
    data.pop("object_tag", None)
    return data
