"""Stage 1: taggers, tag aggregation, the vocabulary files and the knowledge vocabulary."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from iapas.prompts.knowledge import Knowledge, KnowledgeError
from iapas.prompts.tagging import (
    ClipTagger,
    ManualTagger,
    RamTagger,
    Tagger,
    TaggerError,
    aggregate_tags,
    drop_stop_tags,
    load_state_dict_safely,
    load_stoplist,
    load_vocabulary,
)


def test_aggregate_ranks_by_image_count_then_score_then_first_seen():
    per_image = [
        [("bottle", 0.5), ("glass", 0.3), ("liquid", 0.2)],
        [("glass", 0.6), ("bottle", 0.1), ("cap", 0.3)],
        [("cap", 0.9), ("Bottle", 0.05)],
    ]
    # bottle in 3 images; glass (0.9) and cap (1.2) in 2; liquid in 1
    assert aggregate_tags(per_image) == ["bottle", "cap", "glass", "liquid"]
    assert aggregate_tags(per_image, max_tags=2) == ["bottle", "cap"]
    # equal counts and scores: first appearance decides
    assert aggregate_tags([[("b", 1.0), ("a", 1.0)]]) == ["b", "a"]


def test_stoplist_drops_non_object_tags():
    kept, dropped = drop_stop_tags(["Close-up", "leather", "brown", "leather", "white background", "fabric"], load_stoplist())
    assert (kept, dropped) == (["leather", "fabric"], ["close-up", "brown", "white background"])


def test_builtin_vocabulary_is_large_clean_and_disjoint_from_the_stoplist():
    vocab = load_vocabulary()
    stop = load_stoplist()
    assert len(vocab) >= 250 and len(set(vocab)) == len(vocab)
    assert all(t == t.lower().strip() and t for t in vocab)
    assert not set(vocab) & stop
    for category_word in ("bottle", "capsule", "metal nut", "leather", "carpet", "screw", "magnetic tile", "commutator"):
        assert category_word in vocab


def test_manual_tagger():
    tagger = ManualTagger(["Leather", " brown", "leather", ""])
    assert isinstance(tagger, Tagger)
    assert tagger.tag([np.zeros((8, 8, 3), np.uint8)] * 2) == [[("leather", 1.0), ("brown", 1.0)]] * 2
    with pytest.raises(TaggerError, match="--tags"):
        ManualTagger([" ", ""])


def test_clip_tagger_on_the_tiny_model(tiny_models: dict[str, Path]):
    vocab = ["bottle", "metal nut", "leather", "screw", "carpet", "wood", "tile"]
    tagger = ClipTagger.from_pretrained(str(tiny_models["clip"]), device="cpu", vocabulary=vocab, top_k=3)
    assert isinstance(tagger, Tagger) and tagger.name == "clip"
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (40 + 10 * i, 60, 3), dtype=np.uint8) for i in range(3)]
    tags = tagger.tag(images)
    assert len(tags) == 3 and all(len(t) == 3 for t in tags)
    for row in tags:
        names, scores = zip(*row)
        assert set(names) <= set(vocab) and len(set(names)) == 3
        assert list(scores) == sorted(scores, reverse=True) and 0 < sum(scores) <= 1 + 1e-6
    scores = tagger.scores(images)
    assert scores.shape == (3, len(vocab)) and np.allclose(scores.sum(axis=1), 1, atol=1e-5)
    assert tagger.tag(images) == tags  # deterministic
    assert tagger.tag([]) == []
    with pytest.raises(ValueError, match="top_k"):
        ClipTagger(tagger.model, tagger.processor, device="cpu", dtype=None, model_id="x", vocabulary=vocab, top_k=0)


def test_clip_tagger_missing_folder_is_a_clear_error(tmp_path: Path):
    from iapas.models.loading import ModelLoadError

    with pytest.raises(ModelLoadError, match="CLIP tagger: model folder ./nope does not exist"):
        ClipTagger.from_pretrained("./nope", device="cpu")


def test_ram_needs_a_checkpoint_and_the_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    with pytest.raises(TaggerError, match="needs a checkpoint: pass --tagger-model"):
        RamTagger.from_checkpoint(None)
    with pytest.raises(TaggerError, match="not found"):
        RamTagger.from_checkpoint(tmp_path / "ram_plus_swin_large_14m.pth")
    ckpt = tmp_path / "ram_plus_swin_large_14m.pth"
    ckpt.write_bytes(b"not really")
    monkeypatch.setitem(sys.modules, "ram", None)  # make 'import ram' fail even where it is installed
    monkeypatch.setitem(sys.modules, "ram.models", None)
    with pytest.raises(TaggerError, match=r"recognize-anything.*not installed.*pip install git\+https://github.com/xinyu1205/recognize-anything"):
        RamTagger.from_checkpoint(ckpt)


class NotATensor:  # a pickled object that weights_only loading must refuse
    def __reduce__(self):
        return (print, ("this must never run",))


def test_checkpoints_load_weights_only(tmp_path: Path):
    import torch

    good = tmp_path / "good.pth"
    torch.save({"model": {"w": torch.ones(2)}, "epoch": 3}, good)
    state = load_state_dict_safely(good)
    assert list(state) == ["w"] and torch.equal(state["w"], torch.ones(2))
    evil = tmp_path / "evil.pth"
    torch.save({"model": {"w": torch.ones(1)}, "extra": NotATensor()}, evil)
    with pytest.raises(TaggerError, match="weights-only"):
        load_state_dict_safely(evil)
    from safetensors.torch import save_file

    st = tmp_path / "w.safetensors"
    save_file({"a": torch.zeros(3)}, str(st))
    assert list(load_state_dict_safely(st)) == ["a"]


# --- knowledge vocabulary --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("object_tag", "family", "matched"),
    [
        ("bottle", "glass", "bottle"),
        ("metal nut", "metal", "metal nut"),  # the whole phrase first
        ("plastic bottle", "plastic", "plastic bottle"),
        ("aluminium widget", "metal", "aluminium"),  # then word by word from the left
        ("screws", "metal", "screw"),  # plural
        ("carpet", "fabric", "carpet"),
        ("magnetic tile", "ceramic", "magnetic tile"),
        ("hazelnut", "food", "hazelnut"),
        ("pill", "pharmaceutical", "pill"),
        ("widget", "default", None),
    ],
)
def test_knowledge_families(object_tag: str, family: str, matched: str | None):
    answer = Knowledge.load().answer(object_tag)
    assert (answer.family, answer.matched) == (family, matched)
    assert len(answer.nouns) >= 5


def test_knowledge_base_forms_only_produce_known_nouns():
    k = Knowledge.load()
    cases = {"scratched": "scratch", "chipped": "chip", "frayed": "fray", "bruised": "bruise", "scratches": "scratch",
             "holes": "hole", "loose threads": "loose thread", "contaminated": "contaminated", "bus": "bus", "deep scratches": "deep scratches"}
    assert {w: k.base_form(w) for w in cases} == cases


def test_custom_knowledge_file_and_its_errors(tmp_path: Path):
    path = tmp_path / "k.yaml"
    path.write_text("default: {nouns: [flaw]}\nfamilies:\n  gadget: {objects: [widget], nouns: [Wobble, wobble, glitch]}\n")
    k = Knowledge.load(path)
    assert k.answer("Widget").nouns == ("wobble", "glitch")
    assert k.answer("thing").nouns == ("flaw",)
    path.write_text("default: {nouns: [flaw]}\nfamilies:\n  a: {objects: [x], nouns: [n]}\n  b: {objects: [x], nouns: [m]}\n")
    with pytest.raises(KnowledgeError, match="object 'x' is in families 'a' and 'b'"):
        Knowledge.load(path)
    path.write_text("families: {}\n")
    with pytest.raises(KnowledgeError, match=r"k.yaml: 'default.nouns' must be"):
        Knowledge.load(path)
    with pytest.raises(KnowledgeError, match="cannot read"):
        Knowledge.load(tmp_path / "missing.yaml")


def test_ram_tagger_reads_the_packages_tag_strings():
    import torch

    from iapas.prompts.tagging import ram_tag_lines

    class FakeRam:  # what ram_plus(...).generate_tag returns: English and Chinese ' | ' strings per image
        def __init__(self) -> None:
            self.seen = None

        def generate_tag(self, image):
            self.seen = image
            n = image.shape[0]
            return ["Bottle | close-up | glass"] * n, ["瓶子"] * n

    fake = FakeRam()
    tagger = RamTagger(fake, device="cpu", model_id="ram.pth", image_size=32)
    images = [np.zeros((20, 30, 3), np.uint8), np.full((50, 10, 3), 255, np.uint8)]
    assert tagger.tag(images) == [[("bottle", 1.0), ("close-up", 1.0), ("glass", 1.0)]] * 2
    assert fake.seen.shape == (2, 3, 32, 32) and fake.seen.dtype == torch.float32
    # ImageNet normalisation: black -> -mean/std, white -> (1-mean)/std
    assert float(fake.seen[0, 0, 0, 0]) == pytest.approx(-0.485 / 0.229, abs=1e-5)
    assert float(fake.seen[1, 2, 0, 0]) == pytest.approx((1 - 0.406) / 0.225, abs=1e-5)
    assert ram_tag_lines(["a | b"], 1) == [["a", "b"]]
    with pytest.raises(TaggerError, match="unexpected form"):
        ram_tag_lines([("bottle", 0.9), ("glass", 0.1)], 1)
