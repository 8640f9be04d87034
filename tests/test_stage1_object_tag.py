"""Stage 1: phrase -> tag mapping and the object-tag vote on hand-made detections."""

from __future__ import annotations

import numpy as np
import pytest

from iapas.prompts.object_tag import match_phrase, object_sizes, vote_object_tag
from iapas.types import Detections


def dets(*rows: tuple[list[float], float, str]) -> Detections:
    if not rows:
        return Detections.empty()
    return Detections(np.array([r[0] for r in rows]), np.array([r[1] for r in rows]), tuple(r[2] for r in rows))


@pytest.mark.parametrize(
    ("phrase", "tags", "expected"),
    [
        ("bottle cap", ["glass bottle", "bottle cap"], "bottle cap"),  # exact
        ("Bottle", ["glass bottle", "bottle cap"], "glass bottle"),  # contained: first tag in caption order
        ("metal nut", ["metal", "nut", "screw"], "metal"),  # spans two tags: equal overlap, earlier tag
        ("cork board material", ["composite material", "cork board"], "cork board"),  # best overlap 2/3 vs 1/4
        ("compoite material cor boar", ["composite material", "cork board"], "composite material"),  # real decoded debris
        ("##ttle", ["screw", "bottle"], "bottle"),  # a word piece inside a tag
        ("compositeateria coroar", ["cork board", "composite material"], "composite material"),  # spelling
        ("xyz", ["bottle"], None),
        ("", ["bottle"], None),
        ("  . ", ["bottle"], None),
    ],
)
def test_match_phrase(phrase: str, tags: list[str], expected: str | None):
    assert match_phrase(phrase, tags) == expected


TAGS = ["glass bottle", "bottle cap", "liquid"]


def test_vote_picks_the_highest_top_score_and_the_median_object_size():
    sizes = [(100, 200), (200, 200), (100, 100), (50, 50), (400, 100)]  # (H, W)
    detections = [
        # A: top box 'bottle' -> 'glass bottle', area (100/200)*(50/100) = 0.25
        dets(([0, 0, 100, 50], 0.6, "bottle"), ([0, 0, 10, 10], 0.2, "liquid")),
        # B: top box 'bottle cap' 0.7; its glass bottle box (120/200)*(120/200) = 0.36
        dets(([0, 0, 20, 20], 0.7, "bottle cap"), ([0, 0, 120, 120], 0.5, "glass bottle")),
        # C: the winner, 'glass bottle' 0.95, area (50/100)*(40/100) = 0.2
        dets(([10, 10, 60, 50], 0.95, "glass bottle")),
        # D: no boxes at all
        dets(),
        # E: only a box without phrase (cannot vote) and a 'liquid' box: no glass bottle here
        dets(([0, 0, 100, 100], 0.99, ""), ([0, 0, 50, 50], 0.3, "liquid")),
    ]
    vote = vote_object_tag(detections, sizes, TAGS, ["a.png", "b.png", "c.png", "d.png", "e.png"])
    assert (vote.object_tag, vote.phrase, vote.image) == ("glass bottle", "glass bottle", "c.png")
    assert vote.score == pytest.approx(0.95)
    assert vote.sizes == pytest.approx([0.25, 0.36, 0.2])
    assert vote.object_size == pytest.approx(0.25)  # median of 0.2, 0.25, 0.36
    assert [(v.image, v.tag) for v in vote.per_image] == [
        ("a.png", "glass bottle"), ("b.png", "bottle cap"), ("c.png", "glass bottle"), ("e.png", "liquid")
    ]
    assert [v.size for v in vote.per_image] == pytest.approx([0.25, 0.01, 0.2, 0.0625])


def test_vote_ties_go_to_the_earlier_image_and_even_counts_average():
    sizes = [(100, 100), (100, 100)]
    detections = [
        dets(([0, 0, 50, 20], 0.8, "liquid")),  # 0.1
        dets(([0, 0, 50, 60], 0.8, "liquid"), ([0, 0, 100, 100], 0.1, "glass bottle")),  # 0.3
    ]
    vote = vote_object_tag(detections, sizes, TAGS)
    assert (vote.object_tag, vote.image) == ("liquid", "0")
    assert vote.object_size == pytest.approx(0.2)  # (0.1 + 0.3) / 2


def test_vote_without_any_box():
    vote = vote_object_tag([dets(), dets()], [(10, 10), (10, 10)], TAGS)
    assert (vote.object_tag, vote.object_size, vote.per_image) == (None, None, [])


def test_unmapped_phrase_votes_as_itself():
    vote = vote_object_tag([dets(([0, 0, 5, 5], 0.5, "widget"))], [(10, 10)], TAGS)
    assert (vote.object_tag, vote.object_size) == ("widget", pytest.approx(0.25))


def test_object_sizes_skip_images_without_the_tag_and_zero_area_boxes():
    detections = [dets(([0, 0, 0, 10], 0.9, "bottle")), dets(([0, 0, 10, 10], 0.4, "bottle"), ([0, 0, 20, 10], 0.6, "glass"))]
    assert object_sizes(detections, [(10, 10), (10, 20)], "glass bottle", TAGS) == [None, pytest.approx(1.0)]


def test_vote_checks_lengths():
    with pytest.raises(ValueError, match="1 detections but 2 image sizes"):
        vote_object_tag([dets()], [(1, 1), (1, 1)], TAGS)
