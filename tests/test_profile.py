"""Profile files: round trip, hand edits, and clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from iapas.product.profile import Profile, ProfileError
from iapas.core.caption import build_caption, caption_phrases, clean_nouns


def test_caption_format_and_order():
    assert build_caption(["Scratch", "crack", "scratch", "none", "hole"], "bottle") == (
        "scratch . crack . hole . abnormal . defect . bottle ."
    )
    assert build_caption(["defect", "dent"], "can", include_object_tag=False) == "defect . dent . abnormal ."
    assert clean_nouns(["word", "of", "part", " Rust ", "rust-spot"]) == ["rust", "rust spot"]
    assert caption_phrases("scratch . crack .") == ["scratch", "crack"]


@pytest.mark.parametrize("suffix", [".yaml", ".json"])
def test_round_trip(tmp_path: Path, suffix: str):
    profile = Profile.from_prompts(
        "bottle", "Bottle", ["scratch", "crack"], size_threshold=0.7, stage1={"source": "manual", "tags": ["glass"]}
    )
    profile.object_size = 0.42
    profile.models = {"detector": "IDEA-Research/grounding-dino-tiny"}
    path = profile.save(tmp_path / f"p{suffix}")
    loaded = Profile.load(path)
    assert loaded == profile
    assert loaded.caption == "scratch . crack . abnormal . defect . bottle ."
    assert loaded.object_tag == "bottle"
    assert loaded.anomaly_nouns == ["scratch", "crack"]
    assert not list(tmp_path.glob(".*tmp*")), "no temporary files left behind"


def test_hand_edited_caption_is_used_as_written(tmp_path: Path):
    path = Profile.from_prompts("tile", "tile", ["crack"]).save(tmp_path / "tile.yaml")
    text = path.read_text().replace("caption: crack . abnormal . defect . tile .", "caption: chip . glue strip .")
    path.write_text(text)
    assert Profile.load(path).caption == "chip . glue strip ."


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("category: [unclosed", "not valid YAML"),
        ("- a\n- b\n", "expected a mapping"),
        ("category: x\nobject_tag: y\n", "missing field(s) caption"),
        ("category: x\nobject_tag: y\ncaption: ''\n", "'caption' is empty"),
        ("category: x\nobject_tag: y\ncaption: ' . . '\n", "'caption' is empty"),
        ("category: x\nobject_tag: y\ncaption: a .\nsize_threshold: big\n", "'size_threshold' must be a number"),
        ("category: x\nobject_tag: y\ncaption: a .\nobject_size: 3\n", "'object_size' must be in (0, 1]"),
        ("category: x\nobject_tag: y\ncaption: a .\ncolour: red\n", "unknown field(s) colour"),
        ("category: x\nobject_tag: y\ncaption: a .\nformat: 2\niapas_version: '9.0'\n",
         "'format' is 2, written by a newer iapas (this one reads format 1): upgrade iapas (9.0 wrote it)"),
    ],
)
def test_malformed_profiles_name_the_file(tmp_path: Path, content: str, message: str):
    path = tmp_path / "bad.yaml"
    path.write_text(content)
    with pytest.raises(ProfileError) as info:
        Profile.load(path)
    assert str(path) in str(info.value)
    assert message in str(info.value)


def test_missing_profile(tmp_path: Path):
    with pytest.raises(ProfileError, match="profile file not found"):
        Profile.load(tmp_path / "nope.yaml")
