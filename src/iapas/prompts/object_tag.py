"""The object tag (METHOD.md stage 1 step 3) and the reference object size.

The detector runs with the tag caption on every reference image (box and text thresholds 0.1,
class-agnostic NMS at IoU 0.5). Each image's highest-scoring box votes with its phrase; the
phrase with the highest score over all images wins (top-1).

Grounding DINO's phrases are the caption tokens above the text threshold, decoded, so they can
be part of a tag ('bottle' from 'glass bottle'), span two tags ('metal nut' from
'metal . nut'), or carry word-piece debris. :func:`match_phrase` maps a phrase back to a tag:

1. a tag equal to the phrase;
2. else the first tag (caption order) whose words contain the phrase's words as a run
   ('bottle' -> 'glass bottle');
3. else the tag sharing the most words with the phrase, by Jaccard overlap of word sets, ties
   to the earlier tag ('metal nut' -> 'metal nut' if a tag, else 'metal' before 'nut');
4. else the tag spelled most like the phrase (``difflib`` ratio of the letters, at least 0.5;
   ties to the earlier tag): word-piece debris such as 'ttle' -> 'bottle' or
   'compositeateria coroar' -> 'composite material';
5. else no tag: the cleaned phrase itself is used.

The reference object size is measured as stage 2 measures it on a test image: on each
reference image, the highest-scoring box whose phrase maps to the object tag, as a fraction of
the image area ((w/W)*(h/H)); the median over the images where the object tag was found.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from difflib import SequenceMatcher
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from iapas.ops import apply_nms, normalized_areas
from iapas.types import Detections

BOX_THRESHOLD = 0.1
TEXT_THRESHOLD = 0.1
NMS_IOU = 0.5
MIN_SPELLING_RATIO = 0.5  # rule 4 of match_phrase


def _words(text: str) -> list[str]:
    text = text.lower().replace("##", "")
    return re.findall(r"[a-z0-9]+", text)


def clean_phrase(phrase: str) -> str:
    """A decoded detector phrase as plain lowercase words ('##' debris and punctuation gone)."""
    return " ".join(_words(phrase))


def match_phrase(phrase: str, tags: Sequence[str]) -> str | None:
    """The tag of ``tags`` a detector phrase refers to, or None (rules in the module doc)."""
    words = _words(phrase)
    if not words:
        return None
    tag_words = [_words(t) for t in tags]
    for tag, tw in zip(tags, tag_words):
        if tw == words:
            return tag
    n = len(words)
    for tag, tw in zip(tags, tag_words):
        if any(tw[i : i + n] == words for i in range(len(tw) - n + 1)):
            return tag
    best, best_score = None, 0.0
    phrase_set = set(words)
    for tag, tw in zip(tags, tag_words):
        union = phrase_set | set(tw)
        score = len(phrase_set & set(tw)) / len(union) if union else 0.0
        if score > best_score:
            best, best_score = tag, score
    if best is not None:
        return best
    joined = " ".join(words)
    best, best_ratio = None, MIN_SPELLING_RATIO
    for tag, tw in zip(tags, tag_words):
        ratio = SequenceMatcher(None, joined, " ".join(tw), autojunk=False).ratio()
        if ratio >= best_ratio and (best is None or ratio > best_ratio):
            best, best_ratio = tag, ratio
    return best


@dataclass
class ImageVote:
    """One reference image's top box: its phrase, the tag it maps to and its score."""

    image: str
    phrase: str
    tag: str
    score: float
    box: list[float]
    size: float  # normalised area of that top box


@dataclass
class ObjectVote:
    """The result of the object-tag vote over the reference images."""

    object_tag: str | None  # None when no image had a box
    phrase: str | None  # the winning detector phrase
    score: float | None
    image: str | None  # the image the winning box is on
    object_size: float | None  # median normalised area of the object tag's boxes
    sizes: list[float] = field(default_factory=list)  # per image where the object tag was found
    per_image: list[ImageVote] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _image_top(dets: Detections) -> int | None:
    if len(dets) == 0:
        return None
    return int(np.argmax(dets.scores))  # first of equal maxima


def object_sizes(
    detections: Sequence[Detections],
    image_sizes: Sequence[tuple[int, int]],
    object_tag: str,
    tags: Sequence[str],
) -> list[float | None]:
    """Per image, the normalised area of the best box whose phrase maps to ``object_tag``.

    ``image_sizes`` are ``(height, width)``. None where the object tag has no box (or only
    boxes of zero area).
    """
    out: list[float | None] = []
    for dets, (h, w) in zip(detections, image_sizes):
        mapped = np.array([(match_phrase(p, tags) or clean_phrase(p)) == object_tag for p in dets.phrases], dtype=bool)
        areas = normalized_areas(dets.boxes, w, h) if len(dets) else np.zeros(0)
        ok = mapped & (areas > 0)
        if not ok.any():
            out.append(None)
            continue
        idx = np.flatnonzero(ok)
        best = idx[int(np.argmax(dets.scores[idx]))]
        out.append(float(min(areas[best], 1.0)))
    return out


def median_size(sizes: Sequence[float | None]) -> float | None:
    found = [s for s in sizes if s is not None]
    return float(np.median(found)) if found else None


def vote_object_tag(
    detections: Sequence[Detections],
    image_sizes: Sequence[tuple[int, int]],
    tags: Sequence[str],
    image_names: Sequence[str] | None = None,
) -> ObjectVote:
    """The object tag from detections of the tag caption (one :class:`Detections` per image).

    Pure: give it NMS'd detections (the top box of an image is the same with or without NMS).
    Each image votes with its highest-scoring box (ties: the first); its phrase maps to a tag
    by :func:`match_phrase`; boxes with an empty phrase cannot vote. The highest vote wins
    (ties: the earlier image). The object size is :func:`median_size` of :func:`object_sizes`.
    """
    if len(detections) != len(image_sizes):
        raise ValueError(f"{len(detections)} detections but {len(image_sizes)} image sizes")
    names = list(image_names) if image_names is not None else [str(i) for i in range(len(detections))]
    votes: list[ImageVote] = []
    for name, dets, (h, w) in zip(names, detections, image_sizes):
        valid = dets.select([i for i, p in enumerate(dets.phrases) if clean_phrase(p)])
        top = _image_top(valid)
        if top is None:
            continue
        phrase = clean_phrase(valid.phrases[top])
        box = valid.boxes[top]
        votes.append(
            ImageVote(
                image=name,
                phrase=phrase,
                tag=match_phrase(phrase, tags) or phrase,
                score=float(valid.scores[top]),
                box=[round(float(v), 2) for v in box],
                size=float(normalized_areas(box[None], w, h)[0]),
            )
        )
    if not votes:
        return ObjectVote(None, None, None, None, None, [], [])
    winner = max(range(len(votes)), key=lambda i: (votes[i].score, -i))
    win = votes[winner]
    sizes = object_sizes(detections, image_sizes, win.tag, tags)
    found = [s for s in sizes if s is not None]
    return ObjectVote(
        object_tag=win.tag,
        phrase=win.phrase,
        score=win.score,
        image=win.image,
        object_size=median_size(sizes),
        sizes=found,
        per_image=votes,
    )


def detect_references(
    detector: Any,
    images: Sequence[np.ndarray],
    caption: str,
    *,
    box_threshold: float = BOX_THRESHOLD,
    text_threshold: float = TEXT_THRESHOLD,
    nms_iou: float = NMS_IOU,
    on_image: Any = None,
) -> list[Detections]:
    """Run ``detector`` with ``caption`` on each image (one at a time), then NMS.

    ``on_image(i)`` is called after each image (for progress bars).
    """
    out: list[Detections] = []
    for i, rgb in enumerate(images):
        dets = detector.detect([rgb], caption, box_threshold=box_threshold, text_threshold=text_threshold)[0]
        out.append(apply_nms(dets, nms_iou))
        if on_image is not None:
            on_image(i)
    return out
