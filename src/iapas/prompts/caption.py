"""Cleaning anomaly nouns and building the Grounding DINO caption (METHOD.md stage 1 step 5)."""

from __future__ import annotations

import re
from collections.abc import Iterable

# Words an LLM puts in a word list that name nothing on the object.
FILLER_WORDS: frozenset[str] = frozenset(
    {"word", "words", "none", "of", "part", "parts", "a", "an", "the", "and", "or", "etc", "n/a", "na", "other"}
)
ALWAYS_ADDED: tuple[str, ...] = ("abnormal", "defect")
BASE_CAPTION = "defect . abnormal ."


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


def caption_words(nouns: Iterable[str], object_tag: str | None = None, include_object_tag: bool = True) -> list[str]:
    """The caption's phrases: cleaned nouns, then 'abnormal', 'defect', then the object tag."""
    words = clean_nouns(list(nouns) + list(ALWAYS_ADDED))
    if include_object_tag and object_tag:
        words = clean_nouns(words + [object_tag])
    return words


def join_caption(words: Iterable[str]) -> str:
    """``['scratch', 'crack']`` -> ``'scratch . crack .'`` (Grounding DINO's format)."""
    words = list(words)
    return " . ".join(words) + " ." if words else ""


def build_caption(nouns: Iterable[str], object_tag: str | None = None, include_object_tag: bool = True) -> str:
    return join_caption(caption_words(nouns, object_tag, include_object_tag))


def caption_phrases(caption: str) -> list[str]:
    """The phrases of a caption: ``'scratch . crack .'`` -> ``['scratch', 'crack']``."""
    return [p.strip() for p in caption.lower().split(".") if p.strip()]
