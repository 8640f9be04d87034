"""Cleaning anomaly nouns and building the Grounding DINO caption (METHOD.md stage 1 step 5)."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from typing import NamedTuple

# Words an LLM puts in a word list that name nothing on the object.
FILLER_WORDS: frozenset[str] = frozenset(
    {"word", "words", "none", "of", "part", "parts", "a", "an", "the", "and", "or", "etc", "n/a", "na", "other"}
)
ALWAYS_ADDED: tuple[str, ...] = ("abnormal", "defect")
BASE_CAPTION = "defect . abnormal ."  # the baseline as two phrases (iapas's)
# The reference code's baseline caption: one Grounding DINO phrase (its detector call appends the
# final '.'); what mode 'base' uses under the paper protocol.
REFERENCE_BASE_CAPTION = "defect, abnormal."


def fixed_caption(protocol: str) -> str:
    """The fixed caption of mode 'base' and of the fixed-prompt ablation: the reference code's one
    phrase under the paper protocol, iapas's two phrases otherwise."""
    return REFERENCE_BASE_CAPTION if protocol == "paper" else BASE_CAPTION


def clean_nouns(words: Iterable[str]) -> list[str]:
    """Lowercase, trim, drop fillers, empties and punctuation, de-duplicate keeping first order."""
    out: list[str] = []
    for word in words:
        w = re.sub(r"[^a-z0-9 \-]", " ", str(word).lower())
        w = " ".join(w.replace("-", " ").split())
        if not w or w in FILLER_WORDS or w in out:
            continue
        out.append(w)
    return out


def split_word_list(text: str) -> list[str]:
    """Split a comma/semicolon/newline separated word list (a hand-typed ``--prompts``)."""
    return [p for p in re.split(r"[,;\n]", text) if p.strip()]


# How the object tag joins the caption: 'phrase' (iapas's default) as its own phrase,
# 'w1 . defect . bottle .'; 'comma' (the reference code's) to the last word with a comma, so that
# the two are one Grounding DINO phrase, 'w1 . defect, bottle .'.
OBJECT_JOINS: tuple[str, ...] = ("phrase", "comma")
DEFAULT_OBJECT_JOIN = "phrase"


def check_object_join(object_join: str) -> str:
    """``object_join`` if it is one of :data:`OBJECT_JOINS`, else ValueError naming them."""
    if object_join not in OBJECT_JOINS:
        raise ValueError(f"unknown object join {object_join!r}; choose one of {', '.join(OBJECT_JOINS)}")
    return object_join


def caption_words(
    nouns: Iterable[str], object_tag: str | None = None, include_object_tag: bool = True,
    object_join: str = DEFAULT_OBJECT_JOIN,
) -> list[str]:
    """The caption's phrases: cleaned nouns, then 'abnormal', 'defect', then the object tag (its
    own phrase, or with ``object_join='comma'`` in the last phrase: 'defect, bottle')."""
    words = clean_nouns(list(nouns) + list(ALWAYS_ADDED))
    if include_object_tag and object_tag:
        tag = clean_nouns([object_tag])
        if check_object_join(object_join) == "comma" and tag and tag[0] not in words:
            words[-1] = f"{words[-1]}, {tag[0]}"
        else:
            words = clean_nouns(words + [object_tag])
    return words


def join_caption(words: Iterable[str]) -> str:
    """``['scratch', 'crack']`` -> ``'scratch . crack .'`` (Grounding DINO's format)."""
    words = list(words)
    return " . ".join(words) + " ." if words else ""


def build_caption(
    nouns: Iterable[str], object_tag: str | None = None, include_object_tag: bool = True,
    object_join: str = DEFAULT_OBJECT_JOIN,
) -> str:
    return join_caption(caption_words(nouns, object_tag, include_object_tag, object_join))


def caption_phrases(caption: str) -> list[str]:
    """The phrases of a caption: ``'scratch . crack .'`` -> ``['scratch', 'crack']``."""
    return [p.strip() for p in caption.lower().split(".") if p.strip()]


# --- fitting a caption into the detector's text window (added for stage 1) -------------------

# Grounding DINO's text window of the released models, [CLS] and [SEP] included.
GROUNDING_DINO_MAX_TEXT_LEN = 256


def estimate_token_count(caption: str) -> int:
    """A conservative word-piece count of ``caption`` when no tokenizer is at hand.

    Each run of letters/digits counts one token per started 3 characters (BERT splits rare words
    into pieces of about that size; common words are one token, so this over-counts), each
    other non-space character one token, plus [CLS] and [SEP].
    """
    count = 2
    for run in re.findall(r"[a-z0-9]+|[^a-z0-9\s]", caption.lower()):
        count += -(-len(run) // 3) if run[0].isalnum() else 1
    return count


def fit_caption(
    nouns: Iterable[str],
    object_tag: str | None,
    include_object_tag: bool = True,
    *,
    count_tokens: Callable[[str], int] = estimate_token_count,
    max_tokens: int = GROUNDING_DINO_MAX_TEXT_LEN,
    object_join: str = DEFAULT_OBJECT_JOIN,
) -> tuple[str, list[str]]:
    """:func:`build_caption`, dropping TAIL nouns until ``count_tokens(caption) <= max_tokens``.

    'abnormal', 'defect' and the object tag are never dropped. Returns ``(caption, dropped)``
    with the dropped nouns in their original order. Raises ``ValueError`` when even the
    caption without any noun is too long.
    """
    keep = clean_nouns(nouns)
    protected = set(ALWAYS_ADDED)
    if include_object_tag and object_tag:
        protected.update(clean_nouns([object_tag]))
    dropped: list[str] = []
    while True:
        caption = build_caption(keep, object_tag, include_object_tag, object_join)
        if count_tokens(caption) <= max_tokens:
            return caption, dropped[::-1]
        droppable = [i for i, w in enumerate(keep) if w not in protected]
        if not droppable:
            raise ValueError(
                f"caption {caption!r} needs {count_tokens(caption)} text tokens even without anomaly "
                f"nouns; the detector takes at most {max_tokens}"
            )
        dropped.append(keep.pop(droppable[-1]))


class TextBudget(NamedTuple):
    """How a detector's captions are counted: ``count_tokens(caption)`` against ``max_tokens``;
    ``how`` says which count it is ('detector tokenizer' or 'estimate'). A detector answers its
    own (``Detector.caption_budget``)."""

    count_tokens: Callable[[str], int]
    max_tokens: int
    how: str


def estimated_text_budget() -> TextBudget:
    """:func:`estimate_token_count` against the released Grounding DINO models' 256 tokens: the
    budget without a detector, or of a detector without a tokenizer at hand."""
    return TextBudget(estimate_token_count, GROUNDING_DINO_MAX_TEXT_LEN, "estimate")


def fit_tag_caption(tags: Sequence[str], count_tokens: Callable[[str], int], max_tokens: int) -> tuple[str, list[str]]:
    """The tags joined as a caption ('a . b .'), dropping tail tags until it fits."""
    keep = list(tags)
    dropped: list[str] = []
    while keep and count_tokens(join_caption(keep)) > max_tokens:
        dropped.append(keep.pop())
    return join_caption(keep), dropped[::-1]
