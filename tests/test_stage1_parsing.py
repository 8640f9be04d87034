"""Stage 1: LLM replies in many formats -> the exact detector caption (METHOD.md step 5)."""

from __future__ import annotations

import pytest

from iapas.core.caption import build_caption, estimate_token_count, fit_caption
from iapas.prompts.knowledge import Knowledge
from iapas.prompts.llm import LLMError, build_messages
from iapas.prompts.parsing import parse_word_list
from iapas.prompts.stage1 import generate_nouns

KNOWLEDGE = Knowledge.load()


class ReplyLLM:
    """An LLM that answers with a fixed text (or raises) and remembers what it was asked."""

    name = "fake"
    model_id = "fake-model"

    def __init__(self, reply: str | Exception) -> None:
        self.reply = reply
        self.calls: list[tuple[list[dict[str, str]], int]] = []

    def complete(self, messages, *, seed: int) -> str:
        self.calls.append((list(messages), seed))
        if isinstance(self.reply, Exception):
            raise self.reply
        return self.reply


def caption_from(reply: str, object_tag: str) -> str:
    result = generate_nouns(object_tag, ReplyLLM(reply), seed=0, knowledge=KNOWLEDGE)
    assert not result.fallback_used, result.fallback_reason
    return build_caption(result.nouns, object_tag)


@pytest.mark.parametrize(
    ("reply", "object_tag", "caption"),
    [
        # the format the system message asks for
        ("fray, stain, scratch, hole, burn", "leather", "fray . stain . scratch . hole . burn . abnormal . defect . leather ."),
        # preamble, numbered list, bold, explanations after ':' and ' - ', plural, 'defect' given by the LLM, sign-off
        (
            "Here are some anomalous parts of a bottle:\n\n1. Crack\n2. **Chip** - a missing flake\n"
            "3. Scratches: thin lines\n4. Defect\n\nI hope this helps!",
            "bottle",
            "crack . chip . scratch . abnormal . defect . bottle .",
        ),
        # bullets, quotes, case, duplicates and filler words
        ('- "Scratch"\n- dent\n- word\n- none\n* Dent\n• part', "metal nut", "scratch . dent . abnormal . defect . metal nut ."),
        # a sentence with the list after a colon, Oxford comma, 'etc.'
        (
            "Sure! Anomalies that can appear on a screw include: rust, thread damage, and bent tip, etc.",
            "screw",
            "rust . thread damage . bent tip . abnormal . defect . screw .",
        ),
        # a reasoning model's <think> block and a JSON list in a code fence
        ('<think>Leather... scratches? maybe.</think>\n```json\n["hole", "cut", "fold"]\n```', "leather", "hole . cut . fold . abnormal . defect . leather ."),
        # -ed forms of known anomaly nouns become the noun; unknown words stay as given
        ("scratched, cracked, chipped, discolored", "bottle", "scratch . crack . chip . discolored . abnormal . defect . bottle ."),
        # semicolons, slashes, parenthesised remarks, the object tag itself repeated
        ("Anomalies: pore (small void); crack / blowhole; magnetic tile", "magnetic tile", "pore . crack . blowhole . abnormal . defect . magnetic tile ."),
        # a numbered list on one line
        ("1. crack 2. chip 3. scratch", "bottle", "crack . chip . scratch . abnormal . defect . bottle ."),
        ("Anomalies: (1) crack (2) chip (3) scratch", "bottle", "crack . chip . scratch . abnormal . defect . bottle ."),
        # a lone chat word before the list's first comma goes, the list stays
        ("Sure, crack, chip, scratch", "bottle", "crack . chip . scratch . abnormal . defect . bottle ."),
        ("Okay, sure, crack, chip", "bottle", "crack . chip . abnormal . defect . bottle ."),
        # a one-per-line list whose last item ends with a period
        ("scratch\ncrack\nforeign matter.", "bottle", "scratch . crack . foreign matter . abnormal . defect . bottle ."),
        ("- scratch\n- foreign matter.", "bottle", "scratch . foreign matter . abnormal . defect . bottle ."),
        # list trailers
        ("crack, chip, scratch, and so on", "bottle", "crack . chip . scratch . abnormal . defect . bottle ."),
        ("crack, chip, scratch etc.", "bottle", "crack . chip . scratch . abnormal . defect . bottle ."),
        # the object tag or its plural is not an anomaly noun
        ("bottles, crack, chip, bottle", "bottle", "crack . chip . abnormal . defect . bottle ."),
        ("metal nuts, thread damage", "metal nut", "thread damage . abnormal . defect . metal nut ."),
    ],
)
def test_llm_reply_formats_give_the_exact_caption(reply: str, object_tag: str, caption: str):
    assert caption_from(reply, object_tag) == caption


def test_parse_drops_prose_lines_and_keeps_list_lines():
    reply = (
        "The common anomalies of leather, which may appear in many forms, include surface marks that are visible\n"
        "stain, fold, glue\n"
        "Note: these are the most frequent ones."
    )
    # line 1 is prose (most comma pieces are long), line 3 is chat; 'these are the most frequent ones' is 6 words
    assert parse_word_list(reply) == ["stain", "fold", "glue"]


@pytest.mark.parametrize(
    ("reply", "words"),
    [
        ("Sure! scratch, dent", ["scratch", "dent"]),  # chat and list in one line: split at sentences
        ("Scratch. Crack. Hole.", ["scratch", "crack", "hole"]),
        ("1. The scratch\n2. A dent", ["scratch", "dent"]),  # articles go
        ("The anomalies are scratches, dents and holes.", ["dents", "holes"]),  # a clause is not a word
        ("Sorry, I cannot do that. I hope this helps!", []),
        ("| scratch | dent |", ["scratch", "dent"]),  # a Markdown table row
        ("1. crack 2. chip 3. scratch", ["crack", "chip", "scratch"]),
        ("Here are the nouns: 1. crack 2. foreign matter", ["crack", "foreign matter"]),
        ("Sure, crack, chip, scratch", ["crack", "chip", "scratch"]),
        ("Sorry, no.", []),
        ("scratch\ncrack\nforeign matter.", ["scratch", "crack", "foreign matter"]),
        ("scratch, crack\nGood luck.", ["scratch", "crack"]),  # after a comma list, a short sentence is prose
        ("crack\nchip\nThat's all.", ["crack", "chip"]),
        ("crack, chip, etc.", ["crack", "chip"]),
        ("crack, chip and so on", ["crack", "chip"]),
        ("crack, chip, and more.", ["crack", "chip"]),
        ("size 3.5 mm crack", []),  # a decimal number is not a numbered list
    ],
)
def test_parse_word_list(reply: str, words: list[str]):
    assert parse_word_list(reply) == words


@pytest.mark.parametrize("reply", ["", "   \n", "I cannot help with that.", "of assistant the user : none 1 system user a the leather"])
def test_parse_garbage_gives_nothing_usable(reply: str):
    assert [w for w in parse_word_list(reply) if w not in ("none",)] == []


@pytest.mark.parametrize(
    ("reply", "why"),
    [
        ("", "no usable anomaly noun"),
        ("none", "no usable anomaly noun"),  # only a filler
        ("defect, abnormal, leather", "no usable anomaly noun"),  # only words the caption adds itself
        (LLMError("server said 500"), "LLM error: server said 500"),
        (RuntimeError("CUDA out of memory"), "LLM error: RuntimeError: CUDA out of memory"),
    ],
)
def test_failed_llm_falls_back_to_the_knowledge_vocabulary(reply, why: str):
    llm = ReplyLLM(reply)
    result = generate_nouns("leather", llm, seed=7, knowledge=KNOWLEDGE)
    assert result.fallback_used
    assert why in result.fallback_reason
    assert result.knowledge_family == "leather"
    assert result.nouns == ["scratch", "cut", "hole", "stain", "fold", "wrinkle", "crease", "burn", "fray", "spot", "glue", "puncture"]
    assert result.messages == build_messages("leather")
    assert llm.calls == [(build_messages("leather"), 7)]  # the seed reaches the LLM
    assert build_caption(result.nouns, "leather").endswith("puncture . abnormal . defect . leather .")


def test_inspector_messages_ask_for_a_lowercase_comma_list_of_nouns():
    system, user = build_messages("Metal Nut", "inspector")
    assert system["role"] == "system" and "comma-separated" in system["content"] and "lowercase" in system["content"]
    assert user["role"] == "user" and "metal nut" in user["content"]
    assert "nouns, not adjectives" in user["content"] and "fray, stain, scratch, hole, burn" in user["content"]


def test_manual_nouns_skip_the_llm():
    result = generate_nouns("bottle", None, seed=0, knowledge=KNOWLEDGE, manual=["Scratch", "crack", "bottle", "defect"])
    assert (result.backend, result.nouns, result.fallback_used) == ("manual", ["scratch", "crack"], False)


def test_knowledge_backend_uses_the_other_tags_when_the_object_is_unknown():
    result = generate_nouns("widget", None, seed=0, knowledge=KNOWLEDGE, other_tags=["blue", "leather"])
    assert (result.backend, result.knowledge_family, result.fallback_used) == ("knowledge", "leather", False)
    assert generate_nouns("widget", None, seed=0, knowledge=KNOWLEDGE).knowledge_family == "default"


def word_count_tokens(caption: str) -> int:
    """A stand-in tokenizer: one token per word and per '.', plus [CLS] and [SEP]."""
    return 2 + len(caption.replace(".", " . ").split())


def test_fit_caption_drops_tail_nouns_never_the_fixed_words():
    nouns = ["scratch", "crack", "hole", "stain"]
    # 'scratch . crack . abnormal . defect . bottle .' = 10 tokens + 2
    caption, dropped = fit_caption(nouns, "bottle", count_tokens=word_count_tokens, max_tokens=12)
    assert caption == "scratch . crack . abnormal . defect . bottle ."
    assert dropped == ["hole", "stain"]
    caption, dropped = fit_caption(nouns, "bottle", count_tokens=word_count_tokens, max_tokens=8)
    assert (caption, dropped) == ("abnormal . defect . bottle .", nouns)
    with pytest.raises(ValueError, match="at most 7"):
        fit_caption(nouns, "bottle", count_tokens=word_count_tokens, max_tokens=7)
    assert fit_caption(nouns, "bottle", count_tokens=word_count_tokens, max_tokens=256) == (build_caption(nouns, "bottle"), [])


def test_token_estimate_is_conservative_for_bert_word_pieces():
    # 'scratch' 7 letters -> 3, 'crack' -> 2, 'abnormal' -> 3, 'defect' -> 2, 'bottle' -> 2, five '.', [CLS] [SEP]
    assert estimate_token_count("scratch . crack . abnormal . defect . bottle .") == 19
