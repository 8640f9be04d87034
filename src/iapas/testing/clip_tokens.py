"""A character-level CLIP tokenizer for the tiny models (no download): letters, digits, punctuation, whole words."""

from __future__ import annotations

import string
from collections.abc import Sequence
from typing import Any


def clip_vocab_and_merges(
    words: tuple[str, ...] = (), vocab_size: int | None = None
) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """A CLIP byte-pair vocabulary: letters, digits and punctuation (plain and word-final
    ``</w>``), each of ``words`` as a whole token through a chain of merges, unused tokens up to
    ``vocab_size`` when given, and start/end tokens last (the end token has the highest id: CLIP
    pools the text at it)."""
    chars = string.ascii_lowercase + string.digits + "-'.,"
    vocab: dict[str, int] = {}
    for c in [*chars, *(c + "</w>" for c in chars)]:
        vocab.setdefault(c, len(vocab))
    merges: list[tuple[str, str]] = []
    for word in words:
        parts = [*word[:-1], word[-1] + "</w>"]
        left = parts[0]
        for right in parts[1:]:
            if (left, right) not in merges:
                merges.append((left, right))
            left += right
            vocab.setdefault(left, len(vocab))
    for i in range(len(vocab), (vocab_size or 0) - 2):
        vocab[f"<|unused{i}|>"] = i
    vocab.setdefault("<|startoftext|>", len(vocab))
    vocab.setdefault("<|endoftext|>", len(vocab))
    return vocab, merges


def char_clip_tokenizer(
    vocab_size: int | None = None, model_max_length: int | None = None, words: Sequence[str] = ()
) -> Any:
    """A character-level ``CLIPTokenizer`` (no merges: letters, digits and ``-'.,``, each also
    as a word end), plus whole-word tokens for ``words`` (:func:`clip_vocab_and_merges`).
    ``vocab_size`` pads the vocabulary with unused tokens (CLIP's 49408 for a real-size model).
    bos and eos take the two highest ids, as in CLIP (its text pooling reads the eos position)."""
    from transformers import CLIPTokenizer

    vocab, merges = clip_vocab_and_merges(words, vocab_size)
    extra = {} if model_max_length is None else {"model_max_length": model_max_length}
    return CLIPTokenizer(vocab=vocab, merges=merges, **extra)
