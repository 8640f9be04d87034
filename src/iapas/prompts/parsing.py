"""Reading a word list out of whatever an LLM replies.

The system message asks for one lowercase comma-separated line, but chat models add
preambles ("Here are ..."), number or bullet the words, bold them, quote them, explain them
after a colon, or think aloud first. :func:`parse_word_list` keeps the words and drops the
rest, line by line, with these rules:

1. ``<think>...</think>`` blocks and Markdown decoration (code fences, ``**``, ``__``,
   backticks, headings, block quotes) are removed.
2. A line numbered inline (``1. crack 2. chip 3. scratch``: two or more numbers) is split into
   one line per number. Each line loses its bullet or number (``-``, ``*``, ``•``, ``1.``,
   ``2)``, ``(3)``).
3. In a bulleted/numbered line with a short head before a colon or a spaced dash
   (``1. Scratch: a thin line``, ``- Dent - a hollow``), the head is the word. Otherwise the
   line is split into sentences (after '.', '!' or '?' and a space) and in each a colon starts
   the list (``Here are the nouns: scratch, dent``); a sentence ending with a colon is a
   preamble.
4. The rest is split at commas, semicolons, slashes and bars, and in a list of several pieces
   also at ' and '/' or ' (``dents and holes``). A piece loses quotes, brackets,
   parenthesised remarks, a leading 'and'/'or'/article, a trailing 'etc.' and final punctuation;
   list trailers ('etc.', 'and so on', 'and more') are dropped. A piece is kept when it is
   1-3 words of letters (hyphens and apostrophes allowed) of at most 30 characters each,
   none of them a verb such as 'are' or 'include' (then it is a clause).
5. Leading pieces that are a lone chat word ('Sure, crack, chip') are dropped; a sentence whose
   first piece is several words starting with a chat word ('sure', 'here', 'sorry', 'note',
   ...) is dropped, and so is one of several pieces of which fewer than half are kept (prose),
   or a one-piece sentence of several words ending in '.', '!' or '?' (unless it is an item
   of a bulleted or one-per-line list: '- foreign matter.').

The result is lowercase, in reply order, with duplicates removed; it may be empty, which the
caller treats as a failed reply. Fillers ('word', 'none', ...) are dropped later by
:func:`iapas.core.caption.clean_nouns` together with the other caption rules.
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
        "please", "let", "hope", "sorry", "unfortunately", "apologies", "however", "that", "that's", "this",
        "these", "those", "good",
    }
)

# Pieces that end a list without naming anything ('etc.', 'and so on'), after cleaning.
LIST_TRAILERS: frozenset[str] = frozenset(
    {"etc", "et cetera", "so on", "so forth", "more", "many more", "others", "many others", "among others", "like",
     "similar", "the rest"}
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
_INLINE_NUMBER = re.compile(r"(?:^|(?<=\s))\(?\d{1,3}[.)]\s+(?=[^\W\d_])")
_ETC = re.compile(r"(?:,?\s+(?:etc|et cetera))+$")


def _clean_piece(piece: str) -> str:
    """One list piece -> lowercase words, or '' when nothing is left."""
    p = _PAREN.sub(" ", piece.lower())
    p = p.strip().strip("\"'“”‘’«»[]{}<>*_`").strip()
    p = re.sub(r"^(?:(?:and|or|also|the|a|an)\s+)+", "", p)
    p = re.sub(r"[.!?:…]+$", "", p).strip().strip("\"'“”‘’").strip()
    p = " ".join(_ETC.sub("", p).split())
    return "" if p in LIST_TRAILERS else p


def _valid(item: str) -> bool:
    if not item or not _ITEM.fullmatch(item):
        return False
    words = item.split()
    return (
        len(words) <= MAX_WORDS_PER_ITEM
        and all(len(w) <= MAX_WORD_CHARS for w in words)
        and not any(w in VERBS for w in words)
    )


def _split_inline_numbers(line: str) -> list[str]:
    """'1. crack 2. chip' -> ['1. crack ', '2. chip'] (a line with two or more numbers); else [line]."""
    starts = [m.start() for m in _INLINE_NUMBER.finditer(line)]
    if len(starts) < 2:
        return [line]
    bounds = ([0] if starts[0] > 0 else []) + starts + [len(line)]
    return [line[a:b] for a, b in zip(bounds, bounds[1:])]


def _line_items(line: str, in_list: bool = False) -> list[str]:
    """The items of one line; ``in_list``: the line above was one item of a one-per-line list."""
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
        items.extend(_sentence_items(sentence, list_item=bulleted or in_list))
    return items


def _sentence_items(text: str, list_item: bool = False) -> list[str]:
    if ":" in text:
        text = text.rpartition(":")[2]
        if not text.strip():
            return []  # "Here are the nouns:" introduces the list on the next lines
    raw = _SPLIT.split(text)
    if len(raw) > 1:  # in a list, "dents and holes" is two items
        raw = [q for p in raw for q in _AND.split(p)]
    pieces = [_clean_piece(p) for p in raw]
    pieces = [p for p in pieces if p]  # "scratch, dent," has an empty tail
    while pieces and pieces[0] in CHAT_WORDS:
        pieces = pieces[1:]  # "Sure, crack, chip": the chat word goes, the list stays
    if not pieces:
        return []
    first_word = re.match(r"[a-z']*", pieces[0]).group(0)  # type: ignore[union-attr]
    if first_word in CHAT_WORDS:
        return []  # "Sorry I can't", "Here you go"
    kept = [p for p in pieces if _valid(p)]
    if len(pieces) > 1:
        return kept if len(kept) * 2 >= len(pieces) else []
    if not kept:
        return []
    if len(kept[0].split()) > 1 and re.search(r"[.!?]\s*$", text) and not list_item:
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
    in_list = False  # the line above gave one item: a one-per-line list
    for raw_line in text.splitlines():
        for line in _split_inline_numbers(raw_line):
            if not line.strip():
                continue
            items = _line_items(line, in_list)
            in_list = len(items) == 1
            for item in items:
                if item not in out:
                    out.append(item)
    return out
