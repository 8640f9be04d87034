"""Reading a word list out of whatever an LLM replies.

The system message asks for one lowercase comma-separated line, but chat models add
preambles ("Here are ..."), number or bullet the words, bold them, quote them, explain them
after a colon, or think aloud first. :func:`parse_word_list` keeps the words and drops the
rest, line by line, with these rules:

1. ``<think>...</think>`` blocks and Markdown decoration (code fences, ``**``, ``__``,
   backticks, headings, block quotes) are removed.
2. Each line loses its bullet or number (``-``, ``*``, ``•``, ``1.``, ``2)``, ``(3)``).
3. In a bulleted/numbered line with a short head before a colon or a spaced dash
   (``1. Scratch: a thin line``, ``- Dent - a hollow``), the head is the word. Otherwise the
   line is split into sentences (after '.', '!' or '?' and a space) and in each a colon starts
   the list (``Here are the nouns: scratch, dent``); a sentence ending with a colon is a
   preamble.
4. The rest is split at commas, semicolons, slashes and bars, and in a list of several pieces
   also at ' and '/' or ' (``dents and holes``). A piece loses quotes, brackets,
   parenthesised remarks, a leading 'and'/'or'/article and final punctuation, and is kept when it is
   1-3 words of letters (hyphens and apostrophes allowed) of at most 30 characters each,
   none of them a verb such as 'are' or 'include' (then it is a clause).
5. A sentence that starts with a chat word ('sure', 'here', 'sorry', 'note', ...) is dropped,
   and so is one of several pieces of which fewer than half are kept (prose), or a one-piece
   sentence of several words ending in '.', '!' or '?'.

The result is lowercase, in reply order, with duplicates removed; it may be empty, which the
caller treats as a failed reply. Fillers ('word', 'none', ...) are dropped later by
:func:`iapas.prompts.caption.clean_nouns` together with the other caption rules.
"""

from __future__ import annotations

import re

MAX_WORDS_PER_ITEM = 3
MAX_WORD_CHARS = 30

# First words of chat lines that are not part of the list.
CHAT_WORDS: frozenset[str] = frozenset(
    {
        "sure", "okay", "ok", "certainly", "here", "here's", "note", "answer", "response", "output",
        "hello", "hi", "yes", "no", "thanks", "thank", "i", "i'm", "below", "following", "list", "nouns",
        "please", "let", "hope", "sorry", "unfortunately", "apologies", "however",
    }
)

# Words that make a piece a clause, not a name ("anomalies are scratches").
VERBS: frozenset[str] = frozenset(
    {"is", "are", "was", "were", "be", "been", "can", "could", "may", "might", "will", "would", "should",
     "include", "includes", "including", "have", "has", "appear", "appears", "occur", "occurs"}
)

_THINK = re.compile(r"<think>.*?(</think>|$)", re.DOTALL | re.IGNORECASE)
_FENCE = re.compile(r"^\s*```.*$", re.MULTILINE)
_BULLET = re.compile(r"^\s*(?:[-*•+·–—]\s+|\(?\d{1,3}[.)]\s*|\(?[a-z][)]\s+)", re.IGNORECASE)
_DECORATION = re.compile(r"\*\*|__|`|~~")
_PAREN = re.compile(r"\([^)]*\)|\[[^\]]*\]")
_ITEM = re.compile(r"[a-z](?:[a-z'\- ]*[a-z])?")
_SPLIT = re.compile(r"[,;/|]")
_EXPLAIN = re.compile(r":|\s[-–—]\s")
_AND = re.compile(r"\s+(?:and|or)\s+")
_SENTENCE = re.compile(r"(?<=[.!?])\s+")


def _clean_piece(piece: str) -> str:
    """One list piece -> lowercase words, or '' when nothing is left."""
    p = _PAREN.sub(" ", piece.lower())
    p = p.strip().strip("\"'“”‘’«»[]{}<>*_`").strip()
    p = re.sub(r"^(?:(?:and|or|also|the|a|an)\s+)+", "", p)
    p = re.sub(r"[.!?:…]+$", "", p).strip().strip("\"'“”‘’").strip()
    return " ".join(p.split())


def _valid(item: str) -> bool:
    if not item or not _ITEM.fullmatch(item):
        return False
    words = item.split()
    return (
        len(words) <= MAX_WORDS_PER_ITEM
        and all(len(w) <= MAX_WORD_CHARS for w in words)
        and not any(w in VERBS for w in words)
    )


def _line_items(line: str) -> list[str]:
    bulleted = bool(_BULLET.match(line))
    line = _BULLET.sub("", line, count=1).strip()
    line = line.lstrip("#>").strip()
    if not line:
        return []
    if bulleted:  # "1. Scratch: a thin line" / "- Dent - a hollow": the head is the word
        head = _EXPLAIN.split(line, maxsplit=1)
        head_item = _clean_piece(head[0])
        if len(head) == 2 and _valid(head_item) and not _SPLIT.search(head[0]):
            return [head_item]
    items: list[str] = []
    for sentence in _SENTENCE.split(line):  # "Sure! scratch, dent" / "Scratch. Crack."
        items.extend(_sentence_items(sentence))
    return items


def _sentence_items(text: str) -> list[str]:
    if ":" in text:
        text = text.rpartition(":")[2]
        if not text.strip():
            return []  # "Here are the nouns:" introduces the list on the next lines
    raw = _SPLIT.split(text)
    if len(raw) > 1:  # in a list, "dents and holes" is two items
        raw = [q for p in raw for q in _AND.split(p)]
    pieces = [_clean_piece(p) for p in raw]
    pieces = [p for p in pieces if p]  # "scratch, dent," has an empty tail
    if not pieces:
        return []
    first_word = re.match(r"[a-z']*", pieces[0]).group(0)  # type: ignore[union-attr]
    if first_word in CHAT_WORDS:
        return []  # "Sure, ...", "Sorry, I can't", "Here you go"
    kept = [p for p in pieces if _valid(p)]
    if len(pieces) > 1:
        return kept if len(kept) * 2 >= len(pieces) else []
    if not kept:
        return []
    if len(kept[0].split()) > 1 and re.search(r"[.!?]\s*$", text):
        return []  # a short sentence, not a word
    return kept


def parse_word_list(text: str | None) -> list[str]:
    """The words of an LLM reply, lowercase, in order, without duplicates (see module doc)."""
    if not text or not text.strip():
        return []
    text = _THINK.sub(" ", text)
    text = _FENCE.sub("", text)
    text = _DECORATION.sub("", text)
    out: list[str] = []
    for line in text.splitlines():
        for item in _line_items(line):
            if item not in out:
                out.append(item)
    return out
