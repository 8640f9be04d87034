"""Stage 1's text processing as the reference code does it (``--text-processing reference``).

iapas's own text processing (the default, ``'iapas'``) tags all reference images, aggregates the
tags into one caption without non-object tags (``tag_stoplist.txt``), maps the winning detector
phrase back to a tag, parses the LLM's reply into base-form nouns and joins them as
``'w1 . w2 . abnormal . defect . <tag> .'``. The reference code (sybeam27/IAP-ZSAS,
``utils/function.py``: ``process_single_image``, ``process_object_output``, ``clean_string``,
``process_anomaly_tags_2``) does each step its own way; ``'reference'`` restores all of them:

1. each reference image is detected with ITS OWN tags as caption, RAM's ``'a | b'`` line
   rewritten as the reference does (:func:`reference_tag_caption`: ``' |'`` -> ``'.'``,
   ``'close-up'`` and ``'number. '`` removed; no stoplist);
2. per image the top box after NMS (boxes not clamped), and over the images the phrase with the
   highest score is the object tag, the detector's phrase as decoded (no mapping to a tag);
3. the LLM's reply is cleaned by :func:`reference_clean_reply` (the reference's ``clean_string``:
   no parsing, no base forms, the object tag not removed);
4. the caption is the reference's string (:func:`reference_caption`):
   ``'. w1. w2. abnormal. defect, <tag>.'`` with its leading empty phrase.

iapas's robustness stays: an LLM that fails, or whose reply iapas's parser finds no usable noun
in, is replaced by the knowledge vocabulary (its nouns joined as a reply), and a tag caption
too long for the detector's text window loses tail tags. Bugs of the reference code are not
reproduced: its ``set`` of phrases (an order that changes from run to run) is first-seen order
here, and a reference image without any box is skipped (the reference's ``torch.max`` of no
score raises).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from iapas.core.ops import apply_nms, normalized_areas
from iapas.core.types import Detections

TEXT_PROCESSINGS: tuple[str, ...] = ("iapas", "reference")
DEFAULT_TEXT_PROCESSING = "iapas"
ALWAYS_ADDED_TEXT = "abnormal, defect"  # what clean_string appends to every reply


def check_text_processing(value: str) -> str:
    """``value`` if it is one of :data:`TEXT_PROCESSINGS`, else ValueError naming them."""
    if value not in TEXT_PROCESSINGS:
        raise ValueError(f"unknown text processing {value!r}; choose one of {', '.join(TEXT_PROCESSINGS)}")
    return value


def reference_tag_caption(tags: Sequence[str]) -> str:
    """One image's tag caption as the reference builds it from RAM's ``'a | b | c'`` line:
    ``strip(' ')``, ``'  '`` -> ``' '``, ``' |'`` -> ``'.'``, ``'close-up'`` and ``'number. '``
    removed (so 'close-up' leaves an empty phrase). The detector lowercases it and ends it with '.'."""
    line = " | ".join(tags)
    return line.strip(" ").replace("  ", " ").replace(" |", ".").replace("close-up", "").replace("number. ", "")


def reference_clean_reply(text: str | None) -> list[str]:
    """The reference's ``clean_string`` on an LLM reply, as a list of phrases in first-seen
    order (the reference's ``set`` order is arbitrary): ``'word'``/``'none'`` (and capitalised)
    removed anywhere, ``of``/``part`` as words, 'abnormal, defect' appended, repeated words within
    a phrase dropped, '.' removed. Phrases may be empty ('' between two commas), as there."""
    s = (text or "").strip(".,")
    s = s.replace("''", "").replace('""', "")
    s = s.replace("word", "").replace("Word", "")
    s = s.replace("none", "").replace("None", "")
    s = re.sub(r"\bof\b", "", s)
    s = re.sub(r"\bpart\b", "", s)
    s = s + "," + ALWAYS_ADDED_TEXT
    cleaned = ", ".join(" ".join(dict.fromkeys(part.split())) for part in s.split(","))
    if cleaned.startswith(","):
        cleaned = cleaned[1:].strip()
    unique = list(dict.fromkeys(cleaned.split(", ")))
    joined = ", ".join(unique).replace(".", "").strip(".,")
    return joined.split(", ")


def reference_caption(phrases: Sequence[str], object_tag: str | None, include_object_tag: bool = True) -> str:
    """The caption the reference passes to Grounding DINO: ``process_anomaly_tags_2``'s
    ``' . ' + 'w1. w2' + ', ' + tag + '.'``, lowercased and stripped by its detector call:
    ``'. w1. w2. abnormal. defect, bottle.'`` (the leading '.' is an empty first phrase)."""
    text = ". ".join(phrases).replace(",", ".")
    text = " . " + text + (f", {object_tag}" if include_object_tag and object_tag else "") + "."
    return text.lower().strip()


def fit_reference_caption(
    phrases: Sequence[str], object_tag: str | None, include_object_tag: bool,
    count_tokens: Callable[[str], int], max_tokens: int,
) -> tuple[str, list[str], list[str]]:
    """:func:`reference_caption`, dropping tail phrases (never 'abnormal', 'defect' or empty
    ones) until it fits the detector's text window: ``(caption, kept, dropped)``."""
    keep, dropped = list(phrases), []
    while count_tokens(caption := reference_caption(keep, object_tag, include_object_tag)) > max_tokens:
        droppable = [i for i, p in enumerate(keep) if p.strip() and p.strip() not in ("abnormal", "defect")]
        if not droppable:
            raise ValueError(f"caption {caption!r} needs {count_tokens(caption)} text tokens; the detector takes {max_tokens}")
        dropped.append(keep.pop(droppable[-1]))
    return caption, keep, dropped[::-1]


@dataclass
class ReferenceVote:
    """The reference's object tag: each image's top phrase and score, the best phrase overall."""

    object_tag: str | None
    score: float | None
    image: str | None
    per_image: list[dict[str, Any]]


def reference_object_vote(
    detector: Any, images: Sequence[np.ndarray], captions: Sequence[str], names: Sequence[str], *,
    box_threshold: float, text_threshold: float, nms_iou: float, on_image: Callable[[int], None] | None = None,
) -> ReferenceVote:
    """``process_object_output`` on each image with its own caption (boxes not clamped, NMS,
    the top-scoring box), then the phrase with the highest score over the images (pandas'
    ``groupby('Phrase').max().nlargest(1)``: ties to the alphabetically first phrase). An image
    without a box (the reference crashes there) or whose top phrase is empty gives no vote."""
    per_image: list[dict[str, Any]] = []
    for i, (rgb, caption, name) in enumerate(zip(images, captions, names)):
        dets: Detections = detector.detect([rgb], caption, box_threshold=box_threshold, text_threshold=text_threshold)[0]
        dets = apply_nms(dets, nms_iou)
        if on_image is not None:
            on_image(i)
        if len(dets) == 0:
            continue
        top = int(np.argmax(dets.scores))
        phrase = dets.phrases[top].strip() if dets.phrases else ""
        h, w = int(rgb.shape[0]), int(rgb.shape[1])
        per_image.append({
            "image": name, "caption": caption, "phrase": phrase, "score": float(dets.scores[top]),
            "box": [round(float(v), 2) for v in dets.boxes[top]],
            "size": float(normalized_areas(dets.boxes[top][None], w, h)[0]),
        })
    best: dict[str, tuple[float, str]] = {}
    for vote in per_image:
        if vote["phrase"] and (vote["phrase"] not in best or vote["score"] > best[vote["phrase"]][0]):
            best[vote["phrase"]] = (vote["score"], vote["image"])
    if not best:
        return ReferenceVote(None, None, None, per_image)
    tag = min(best, key=lambda p: (-best[p][0], p))
    return ReferenceVote(tag, best[tag][0], best[tag][1], per_image)


def fit_reference_tag_caption(tags: Sequence[str], count_tokens: Callable[[str], int], max_tokens: int) -> str:
    """:func:`reference_tag_caption`, dropping tail tags until it fits the detector's text window
    (the original Grounding DINO would cut its tokens at the window instead)."""
    keep = list(tags)
    while len(keep) > 1 and count_tokens(reference_tag_caption(keep)) > max_tokens:
        keep.pop()
    return reference_tag_caption(keep)


def reference_tags_and_object(
    detector: Any, images: Sequence[np.ndarray], per_image: Sequence[Sequence[tuple[str, float]]],
    names: Sequence[str], *, count_tokens: Callable[[str], int], max_tokens: int,
    box_threshold: float, text_threshold: float, nms_iou: float, on_image: Callable[[int], None] | None = None,
) -> tuple[dict[str, Any], dict[str, Any], str | None]:
    """Steps 1-2 of the module doc: ``(tags record, object record, object tag or None)``."""
    captions = [fit_reference_tag_caption([t for t, _ in tags], count_tokens, max_tokens) for tags in per_image]
    vote = reference_object_vote(
        detector, images, captions, names, box_threshold=box_threshold, text_threshold=text_threshold,
        nms_iou=nms_iou, on_image=on_image,
    )
    tags_record = {
        "per_image": [{"image": n, "tags": [t for t, _ in tags], "caption": c} for n, tags, c in zip(names, per_image, captions)],
        "text_processing": "reference",
    }
    object_record = {
        "source": "detector vote (reference: per-image tag captions, the raw phrase)",
        "tag": vote.object_tag, "score": vote.score, "image": vote.image, "per_image": vote.per_image,
    }
    return tags_record, object_record, vote.object_tag


def reference_reply_phrases(raw_text: str | None, nouns: Sequence[str], fallback_used: bool) -> list[str]:
    """The phrases :func:`reference_clean_reply` makes of the LLM's reply; of the nouns typed by
    hand or from the knowledge vocabulary (no reply, or the LLM failed) joined as a reply."""
    if raw_text is not None and not fallback_used:
        return reference_clean_reply(raw_text)
    return reference_clean_reply(", ".join(nouns))
