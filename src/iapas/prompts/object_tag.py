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

The reference object size (:func:`measure_object_size`) is measured as stage 2 measures it on a
test image: after the vote, the detector runs with the object tag alone ('bottle') on each
reference image, and the top box's area as a fraction of the image ((w/W)*(h/H),
:func:`top_box_size`) is that image's size; the median over the images where a box was found.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from difflib import SequenceMatcher
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from iapas.core.ops import apply_nms, clip_boxes, normalized_areas, top_box
from iapas.core.types import Detections

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
    per_image: list[ImageVote] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _image_top(dets: Detections) -> int | None:
    if len(dets) == 0:
        return None
    return int(np.argmax(dets.scores))  # first of equal maxima


def top_box_size(dets: Detections, width: int, height: int) -> float | None:
    """The normalised area ``(w/W)*(h/H)`` of the highest-scoring box, exactly as stage 2 takes
    the object's size (:func:`iapas.core.ops.top_box`); None without a box or when it has no area."""
    found = top_box(dets, width, height)
    return None if found is None else found[1]


def median_size(sizes: Sequence[float | None]) -> float | None:
    found = [s for s in sizes if s is not None]
    return float(np.median(found)) if found else None


@dataclass
class ObjectSize:
    """The reference object size: per image (None where no box), and their median."""

    caption: str  # the object tag alone, as stage 2 passes it to the detector
    per_image: list[float | None]
    object_size: float | None  # median over the images with a box; None when there is none

    @property
    def sizes(self) -> list[float]:
        """The sizes of the images where the object was found."""
        return [s for s in self.per_image if s is not None]


def measure_object_size(
    detector: Any,
    images: Sequence[np.ndarray],
    object_tag: str,
    *,
    box_threshold: float = BOX_THRESHOLD,
    text_threshold: float = TEXT_THRESHOLD,
    nms_iou: float = NMS_IOU,
    on_image: Any = None,
) -> ObjectSize:
    """The median object size over ``images``, measured as stage 2 measures it on a test image:
    the detector with the object tag alone, the top box's normalised area
    (:func:`top_box_size`), the median over the images where a box was found. The caption is
    ``object_tag`` as it is, as stage 2 passes it (the detector adds the final '.')."""
    caption = object_tag
    detections = detect_references(
        detector, images, caption, box_threshold=box_threshold, text_threshold=text_threshold, nms_iou=nms_iou,
        on_image=on_image,
    )
    per_image = [top_box_size(d, int(im.shape[1]), int(im.shape[0])) for d, im in zip(detections, images)]
    return ObjectSize(caption, per_image, median_size(per_image))


def vote_object_tag(
    detections: Sequence[Detections],
    image_sizes: Sequence[tuple[int, int]],
    tags: Sequence[str],
    image_names: Sequence[str] | None = None,
) -> ObjectVote:
    """The object tag from detections of the tag caption (one :class:`Detections` per image).

    Give it NMS'd detections, as :func:`detect_references` makes them: a box without a phrase
    cannot vote, but it still suppresses the boxes it overlaps. Each image votes with its
    highest-scoring box that has a phrase (ties: the first); the phrase maps to a tag by
    :func:`match_phrase`. The highest vote wins (ties: the earlier image). ``image_sizes``
    (``(height, width)``) give each vote's box size, for the record; the object size itself is
    :func:`measure_object_size`'s.
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
        return ObjectVote(None, None, None, None, [])
    winner = max(range(len(votes)), key=lambda i: (votes[i].score, -i))
    win = votes[winner]
    return ObjectVote(object_tag=win.tag, phrase=win.phrase, score=win.score, image=win.image, per_image=votes)


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
    """Run ``detector`` with ``caption`` on each image (one at a time), clamp the boxes to the
    image, then class-agnostic NMS at ``nms_iou``.

    Stage 1 clamps (unlike stage 2, which keeps the reference code's unclipped boxes up to the
    SAM prompts): its object sizes are in-image areas in (0, 1], as a profile stores them.

    ``on_image(i)`` is called after each image (for progress bars).
    """
    out: list[Detections] = []
    for i, rgb in enumerate(images):
        dets = detector.detect([rgb], caption, box_threshold=box_threshold, text_threshold=text_threshold)[0]
        dets = Detections(clip_boxes(dets.boxes, int(rgb.shape[1]), int(rgb.shape[0])), dets.scores, dets.phrases)
        out.append(apply_nms(dets, nms_iou))
        if on_image is not None:
            on_image(i)
    return out
