"""Reading a word list out of whatever an LLM replies.

The system message asks for one lowercase comma-separated line, but chat models add
preambles ("Here are ..."), number or bullet the words, bold them, quote them, explain them
after a colon, or think aloud first. :func:`parse_word_list` keeps the words and drops the
rest, line by line, with these rules:

1. ``<think>...</think>`` blocks and Markdown decoration (code fences, ``**``, ``__``,
   backticks, headings, block quotes) are removed.
2. Each line loses its bullet or number (``-``, ``*``, ``•``, ``1.``, ``2)``, ``(3)``).
3. In a bulleted/numbered line with a short head before a colon or a spaced dash
   (``1. Scratch: a thin line``, ``- Dent - a hollow``), the head is the word. Otherwise a colon
   starts the list (``Here are the nouns: scratch, dent``); a line ending with a colon is a
   preamble.
4. The rest is split at commas, semicolons, slashes and bars, and in a list of several pieces
   also at ' and '/' or ' (``dents and holes``). A piece loses quotes, brackets,
   parenthesised remarks, a leading 'and'/'or' and final punctuation, and is kept when it is
   1-3 words of letters (hyphens and apostrophes allowed) of at most 30 characters each.
5. A line of several pieces of which fewer than half are kept is prose and dropped whole; so
   is a one-piece line that starts with a chat word ('sure', 'here', 'note', ...) or is a
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
        "hello", "hi", "yes", "no", "thanks", "thank", "i", "i'm", "these", "this", "that", "the",
        "below", "following", "list", "nouns", "please", "let", "hope", "as", "in", "for",
    }
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


def _clean_piece(piece: str) -> str:
    """One list piece -> lowercase words, or '' when nothing is left."""
    p = _PAREN.sub(" ", piece.lower())
    p = p.strip().strip("\"'“”‘’«»[]{}<>*_`").strip()
    p = re.sub(r"^(?:and|or|also)\s+", "", p)
    p = re.sub(r"[.!?:…]+$", "", p).strip().strip("\"'“”‘’").strip()
    return " ".join(p.split())


def _valid(item: str) -> bool:
    if not item or not _ITEM.fullmatch(item):
        return False
    words = item.split()
    return len(words) <= MAX_WORDS_PER_ITEM and all(len(w) <= MAX_WORD_CHARS for w in words)


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
    if ":" in line:
        line = line.rpartition(":")[2]
        if not line.strip():
            return []  # "Here are the nouns:" introduces the list on the next lines
    raw = _SPLIT.split(line)
    if len(raw) > 1:  # in a list, "dents and holes" is two items
        raw = [q for p in raw for q in _AND.split(p)]
    pieces = [_clean_piece(p) for p in raw]
    pieces = [p for p in pieces if p]  # "scratch, dent," has an empty tail
    if not pieces:
        return []
    kept = [p for p in pieces if _valid(p)]
    if len(pieces) > 1:
        return kept if len(kept) * 2 >= len(pieces) else []
    first = pieces[0].split()[0] if pieces[0].split() else ""
    if not kept or first in CHAT_WORDS:
        return []
    if len(kept[0].split()) > 1 and re.search(r"[.!?]\s*$", line):
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
