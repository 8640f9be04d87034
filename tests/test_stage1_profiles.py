"""Stage-1 profiles in an evaluation: wrong-tag ablation tags and what the record says about the LLM."""

from __future__ import annotations

import pytest

from iapas.data.registry import DATASETS
from iapas.evaluation.profiles import FALLBACK_WRONG_TAGS, ProfileRecord, is_wrong_tag, wrong_object_tags
from iapas.product.profile import Profile


def test_wrong_tag_is_never_the_category_or_its_true_tag():
    # 'bottle -> bottle' was seen: the next category's tag equalled the category's name
    assert wrong_object_tags({"bottle": "glass", "cable": "bottle", "capsule": "pill"}) == {
        "bottle": "pill", "cable": "pill", "capsule": "glass"
    }
    # containment either way, case-insensitive, '_' as a space
    assert wrong_object_tags({"metal_nut": "Metal Nut", "hazelnut": "nut", "screw": "screw"}) == {
        "metal_nut": "screw", "hazelnut": "screw", "screw": "metal nut"
    }
    assert wrong_object_tags({"bottle": "bottle", "x": "glass bottle"}) == {"bottle": "banana", "x": "banana"}
    assert not is_wrong_tag("Bottles", "bottle", "glass")
    assert not is_wrong_tag("glass", "bottle", "Glass Bottle")
    assert not is_wrong_tag("", "bottle", "bottle")
    assert is_wrong_tag("teapot", "bottle", "bottle")


def test_wrong_tags_rotate_and_fall_back_to_unrelated_things():
    assert wrong_object_tags({"carpet": "carpet", "grid": "grid", "wood": "wood"}) == {
        "carpet": "grid", "grid": "wood", "wood": "carpet"
    }
    assert wrong_object_tags({"magnetic_tile": "tile"}) == {"magnetic_tile": "banana"}
    assert wrong_object_tags({"banana": "banana"}) == {"banana": "bicycle"}
    with pytest.raises(ValueError, match="no wrong tag"):
        wrong_object_tags({"a": "b"}, fallback=("a", "b"))


def test_fallback_wrong_tags_are_no_benchmark_category():
    categories = {c.lower().replace("_", " ") for cls in DATASETS.values() for c in cls.expected_categories}
    assert {"bottle", "carpet", "screw", "leather", "cable", "wood", "magnetic tile"} <= categories
    for tag in FALLBACK_WRONG_TAGS:
        assert all(tag not in c and c not in tag for c in categories), tag


def test_profile_record_carries_the_llm_fallback():
    profile = Profile.from_prompts("bottle", "bottle", ["crack"])
    profile.models = {"llm": "knowledge (fallback from meta-llama/Meta-Llama-3-8B-Instruct)"}
    profile.stage1 = {"fallback_used": True, "fallback_reason": "LLM error: could not load meta-llama/..."}
    record = ProfileRecord.of(profile, None, "stage1").to_dict()
    assert record["llm_fallback"] == "LLM error: could not load meta-llama/..."
    assert record["models"]["llm"].startswith("knowledge (fallback from")
    profile.stage1 = {"fallback_used": False, "fallback_reason": None}
    assert ProfileRecord.of(profile, None, "file").llm_fallback is None
    assert ProfileRecord.of(None, None, "none").llm_fallback is None
