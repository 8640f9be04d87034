"""Stage 1 end to end on the interfaces: fake tagger, detector and LLM with hand-made outputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from iapas.models.base import Detector, tokenizer_text_budget
from iapas.product.profile import Profile
from iapas.prompts.llm import LLMError, build_messages
from iapas.prompts.stage1 import Stage1Error, build_profile, input_hash, llm_error_fallback, select_references
from iapas.core.types import Detections

SIZES = [(100, 200), (200, 200), (100, 100)]  # (H, W) of the three reference images


def index_of(rgb: np.ndarray) -> int:
    return int(rgb[0, 0, 0]) // 40  # each reference image is filled with 40 * its index


class FakeTagger:
    name = "fake"
    model_id = "fake-tagger"
    TAGS = [
        [("bottle", 0.5), ("close-up", 0.4), ("glass", 0.1)],
        [("glass", 0.6), ("bottle", 0.3)],
        [("bottle", 0.2), ("white", 0.9)],
    ]

    def tag(self, images):
        return [self.TAGS[index_of(im)] for im in images]


def d(*rows):
    return Detections(np.array([r[0] for r in rows], np.float32), np.array([r[1] for r in rows], np.float32), tuple(r[2] for r in rows))


class FakeDetector(Detector):
    name = "fake-detector"
    # with the tag caption 'bottle . glass .' (the vote); the sizes of the 'bottle' boxes here
    # (0.25, 0.36, 0.2: median 0.25) are NOT the object size
    DETS = [
        d(([0, 0, 100, 50], 0.7, "bottle"), ([0, 0, 99, 49], 0.65, "bottle")),  # the second box is NMS'd away
        d(([0, 0, 20, 20], 0.6, "glass"), ([0, 0, 120, 120], 0.5, "bottle")),
        d(([10, 10, 60, 50], 0.8, "bottle")),  # the winner
    ]
    # with the object tag alone ('bottle'), as stage 2 runs it: the object size is the median
    # of the top boxes' sizes, 0.8 and 0.25 (none on the third image) -> 0.525
    OBJECT_DETS = [
        d(([0, 0, 160, 100], 0.9, "bottle"), ([0, 0, 10, 10], 0.3, "bottle")),  # (160/200)*(100/100) = 0.8
        d(([0, 0, 100, 100], 0.4, "bottle")),  # (100/200)*(100/200) = 0.25
        d(),
    ]

    def __init__(self) -> None:
        self.calls: list[tuple[str, float, float]] = []

    def detect(self, images, caption, *, box_threshold, text_threshold):
        self.calls.append((caption, box_threshold, text_threshold))
        table = self.OBJECT_DETS if caption == "bottle" else self.DETS
        return [table[index_of(im)] for im in images]


class WordTokenizer:
    """A stand-in for Grounding DINO's tokenizer: a token per word and per '.', plus [CLS]/[SEP]."""

    def __call__(self, text):
        return {"input_ids": [0] + [1] * len(text.replace(".", " . ").split()) + [2]}


class WindowDetector(FakeDetector):
    """A fake Grounding DINO adapter with a 12-token text window."""

    def caption_budget(self):
        return tokenizer_text_budget(WordTokenizer(), 12)


class FakeLLM:
    name = "fake"
    model_id = "fake-model"

    def __init__(self, reply):
        self.reply = reply

    def complete(self, messages, *, seed):
        if isinstance(self.reply, Exception):
            raise self.reply
        return self.reply


@pytest.fixture
def refs(tmp_path: Path) -> list[Path]:
    paths = []
    for i, (h, w) in enumerate(SIZES):
        p = tmp_path / f"ref{i}.png"
        Image.fromarray(np.full((h, w, 3), 40 * i, np.uint8)).save(p)
        paths.append(p)
    return paths


REPLY = "Here are the nouns:\n1. Scratch\n2. crack\n3. contamination"


def test_build_profile_records_every_step(refs: list[Path], tmp_path: Path):
    detector = FakeDetector()
    progress: list[tuple[str, int, int]] = []
    profile = build_profile(
        "bottle", refs, tagger=FakeTagger(), detector=detector, llm=FakeLLM(REPLY), seed=5,
        input_digest="sha256:abc", progress=lambda *a: progress.append(a),
    )
    assert profile.category == "bottle" and profile.object_tag == "bottle"
    assert profile.caption == "scratch . crack . contamination . abnormal . defect . bottle ."
    assert profile.anomaly_nouns == ["scratch", "crack", "contamination"]
    # measured as stage 2 does: the object tag alone, top box; not from the tag caption's boxes
    assert profile.object_size == pytest.approx(0.525)
    assert profile.models == {"tagger": "fake-tagger", "detector": "fake-detector", "llm": "fake-model"}
    assert detector.calls == [("bottle . glass .", 0.1, 0.1)] * 3 + [("bottle", 0.1, 0.1)] * 3
    s1 = profile.stage1
    assert (s1["seed"], s1["input_hash"], s1["reference_names"]) == (5, "sha256:abc", ["ref0.png", "ref1.png", "ref2.png"])
    assert s1["tags"]["aggregated"] == ["bottle", "glass"]
    assert s1["tags"]["dropped_non_object"] == ["white", "close-up"]
    assert s1["tags"]["caption"] == "bottle . glass ."
    assert s1["tags"]["per_image"][1] == {"image": "ref1.png", "tags": ["glass", "bottle"], "scores": [0.6, 0.3]}
    obj = s1["object"]
    assert (obj["source"], obj["tag"], obj["phrase"], obj["image"]) == ("detector vote", "bottle", "bottle", "ref2.png")
    assert obj["score"] == pytest.approx(0.8) and obj["sizes"] == pytest.approx([0.8, 0.25])
    assert [(e["image"], e["size"]) for e in obj["size_per_image"]] == [
        ("ref0.png", pytest.approx(0.8)), ("ref1.png", pytest.approx(0.25)), ("ref2.png", None)
    ]
    assert obj["object_size"] == profile.object_size and "as stage 2" in obj["size_method"]
    llm = s1["llm"]
    assert (llm["backend"], llm["model"], llm["raw_text"]) == ("fake", "fake-model", REPLY)
    assert llm["messages"] == build_messages("bottle")
    assert llm["parsed"] == ["scratch", "crack", "contamination"] and llm["fallback_used"] is False
    assert (s1["fallback_used"], s1["fallback_reason"]) == (False, None)
    assert s1["caption"]["dropped_nouns"] == [] and s1["caption"]["token_counter"] == "estimate"
    assert s1["caption"]["max_tokens"] == 256
    assert [p[0] for p in progress] == ["reading"] * 3 + ["tagging"] * 3 + ["detecting"] * 3 + ["measuring"] * 3
    assert progress[-1] == ("measuring", 3, 3)
    path = profile.save(tmp_path / "bottle.yaml")
    assert Profile.load(path) == profile


def test_caption_is_trimmed_to_the_detector_text_window(refs: list[Path]):
    profile = build_profile("bottle", refs, tagger=FakeTagger(), detector=WindowDetector(), llm=FakeLLM(REPLY))
    assert profile.caption == "scratch . crack . abnormal . defect . bottle ."  # 10 tokens + [CLS] [SEP]
    cap = profile.stage1["caption"]
    assert (cap["dropped_nouns"], cap["nouns"], cap["token_count"], cap["max_tokens"]) == (["contamination"], ["scratch", "crack"], 12, 12)
    assert cap["token_counter"] == "detector tokenizer"
    assert profile.anomaly_nouns == ["scratch", "crack"]


@pytest.mark.parametrize("reply", [LLMError("HTTP 500: boom"), "", "Sorry, I can't."])
def test_failed_llm_gives_a_profile_marked_with_the_fallback(refs: list[Path], reply):
    profile = build_profile("bottle", refs, tagger=FakeTagger(), detector=FakeDetector(), llm=FakeLLM(reply))
    s1 = profile.stage1
    assert s1["fallback_used"] is True and s1["fallback_reason"] and s1["llm"]["knowledge_family"] == "glass"
    assert profile.models["llm"] == "knowledge (fallback from fake-model)"  # not the LLM that failed
    assert (llm_error_fallback(s1) is not None) == isinstance(reply, Exception)  # worth making again only then
    assert profile.caption == "crack . chip . scratch . bubble . stain . contamination . fracture . inclusion . break . spot . abnormal . defect . bottle ."


def test_knowledge_backend_and_given_object(refs: list[Path]):
    detector = FakeDetector()
    profile = build_profile("bottle", refs, detector=detector, object_tag="Bottle", llm=None)
    assert profile.object_tag == "bottle" and profile.models == {"detector": "fake-detector", "llm": "knowledge"}
    assert detector.calls == [("bottle", 0.1, 0.1)] * 3  # no tag vote: the object only, for its size
    assert profile.object_size == pytest.approx(0.525)  # the same measurement as after a vote
    assert profile.stage1["object"]["source"] == "given" and "tags" not in profile.stage1
    assert profile.stage1["llm"]["backend"] == "knowledge" and profile.stage1["fallback_used"] is False


def test_manual_nouns_and_no_object_in_caption(refs: list[Path]):
    profile = build_profile(
        "bottle", refs, tagger=FakeTagger(), detector=FakeDetector(), nouns=["dent", "Bottle"], include_object_tag=False
    )
    assert profile.caption == "dent . abnormal . defect ."
    assert profile.stage1["llm"]["backend"] == "manual" and "llm" not in profile.models


def test_no_detection_falls_back_to_the_top_tag(refs: list[Path]):
    class Blind(FakeDetector):
        def detect(self, images, caption, **kw):
            return [Detections.empty() for _ in images]

    profile = build_profile("bottle", refs, tagger=FakeTagger(), detector=Blind(), llm=None)
    assert (profile.object_tag, profile.object_size) == ("bottle", None)
    assert profile.stage1["object"]["source"].startswith("top tag")


def test_stage1_errors_are_clear(refs: list[Path]):
    with pytest.raises(Stage1Error, match="needs a tagger and a detector"):
        build_profile("bottle", refs, detector=FakeDetector())
    with pytest.raises(Stage1Error, match="category name is empty"):
        build_profile(" ", refs, object_tag="bottle")

    class StopTags(FakeTagger):
        def tag(self, images):
            return [[("close-up", 1.0), ("white", 0.5)] for _ in images]

    with pytest.raises(Stage1Error, match="no object tag.*close-up, white"):
        build_profile("bottle", refs, tagger=StopTags(), detector=FakeDetector())


def test_select_references_is_seeded_order_free_and_nested(tmp_path: Path):
    paths = [tmp_path / f"{i:03d}.png" for i in range(30)]
    ten = select_references(paths, 10, seed=0)
    assert ten == select_references(list(reversed(paths)), 10, seed=0) and ten == sorted(ten)
    assert len(set(ten)) == 10
    assert set(select_references(paths, 1, seed=0)) <= set(ten)  # 1 reference is among the 10
    assert select_references(paths, 10, seed=1) != ten
    assert select_references(paths[:4], 10) == paths[:4]
    with pytest.raises(Stage1Error, match=">= 1"):
        select_references(paths, 0)
    with pytest.raises(Stage1Error, match="no reference images"):
        select_references([], 3)


def test_input_hash_follows_contents_and_settings(refs: list[Path]):
    base = input_hash("bottle", refs, {"seed": 0})
    assert base.startswith("sha256:") and base == input_hash("bottle", refs, {"seed": 0})
    assert input_hash("bottle", refs, {"seed": 1}) != base
    assert input_hash("capsule", refs, {"seed": 0}) != base
    Image.fromarray(np.full((10, 10, 3), 7, np.uint8)).save(refs[0])
    assert input_hash("bottle", refs, {"seed": 0}) != base
