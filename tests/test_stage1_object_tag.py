"""Stage 1: phrase -> tag mapping and the object-tag vote on hand-made detections."""

from __future__ import annotations

import numpy as np
import pytest

from iapas.prompts.object_tag import (
    NMS_IOU,
    detect_references,
    match_phrase,
    measure_object_size,
    top_box_size,
    vote_object_tag,
)
from iapas.core.types import Detections


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


def test_vote_picks_the_highest_top_score():
    sizes = [(100, 200), (200, 200), (100, 100), (50, 50), (400, 100)]  # (H, W)
    detections = [
        # A: top box 'bottle' -> 'glass bottle', area (100/200)*(50/100) = 0.25
        dets(([0, 0, 100, 50], 0.6, "bottle"), ([0, 0, 10, 10], 0.2, "liquid")),
        # B: top box 'bottle cap' 0.7, area 0.01
        dets(([0, 0, 20, 20], 0.7, "bottle cap"), ([0, 0, 120, 120], 0.5, "glass bottle")),
        # C: the winner, 'glass bottle' 0.95, area (50/100)*(40/100) = 0.2
        dets(([10, 10, 60, 50], 0.95, "glass bottle")),
        # D: no boxes at all
        dets(),
        # E: a box without phrase cannot vote: the 'liquid' box does
        dets(([0, 0, 100, 100], 0.99, ""), ([0, 0, 50, 50], 0.3, "liquid")),
    ]
    vote = vote_object_tag(detections, sizes, TAGS, ["a.png", "b.png", "c.png", "d.png", "e.png"])
    assert (vote.object_tag, vote.phrase, vote.image) == ("glass bottle", "glass bottle", "c.png")
    assert vote.score == pytest.approx(0.95)
    assert [(v.image, v.tag) for v in vote.per_image] == [
        ("a.png", "glass bottle"), ("b.png", "bottle cap"), ("c.png", "glass bottle"), ("e.png", "liquid")
    ]
    assert [v.size for v in vote.per_image] == pytest.approx([0.25, 0.01, 0.2, 0.0625])


def test_vote_ties_go_to_the_earlier_image():
    sizes = [(100, 100), (100, 100)]
    detections = [
        dets(([0, 0, 50, 20], 0.8, "liquid")),
        dets(([0, 0, 50, 60], 0.8, "glass bottle"), ([0, 0, 100, 100], 0.1, "bottle cap")),
    ]
    vote = vote_object_tag(detections, sizes, TAGS)
    assert (vote.object_tag, vote.image) == ("liquid", "0")


def test_vote_without_any_box():
    vote = vote_object_tag([dets(), dets()], [(10, 10), (10, 10)], TAGS)
    assert (vote.object_tag, vote.per_image) == (None, [])


def test_unmapped_phrase_votes_as_itself():
    vote = vote_object_tag([dets(([0, 0, 5, 5], 0.5, "widget"))], [(10, 10)], TAGS)
    assert vote.object_tag == "widget" and vote.per_image[0].size == pytest.approx(0.25)


class ListDetector:
    """Returns the given detections for each image in turn, whatever the caption."""

    def __init__(self, per_image: list[Detections]) -> None:
        self.per_image = per_image
        self.calls: list[str] = []

    def detect(self, images, caption, *, box_threshold, text_threshold):
        self.calls.append(caption)
        return [self.per_image[len(self.calls) - 1]]


def test_nms_at_iou_0_5_changes_the_vote():
    """A phrase-less box cannot vote but, as METHOD.md's class-agnostic NMS at IoU 0.5 wants, it
    suppresses the 'liquid' box it overlaps at IoU 0.8; the 'glass bottle' box at IoU 0.4 stays
    and wins. Without NMS (or at another IoU) 'liquid' (0.8) would win."""
    image = np.zeros((100, 100, 3), np.uint8)
    raw = dets(
        ([0, 0, 100, 100], 0.9, ""),  # no phrase (its tokens were under the text threshold)
        ([0, 0, 100, 80], 0.8, "liquid"),  # IoU 0.8 with the first box: suppressed
        ([0, 0, 40, 100], 0.7, "glass bottle"),  # IoU 0.4: kept
    )
    detections = detect_references(ListDetector([raw]), [image], "glass bottle . liquid .")
    assert detections[0].phrases == ("", "glass bottle")
    assert vote_object_tag(detections, [(100, 100)], TAGS).object_tag == "glass bottle"
    assert vote_object_tag([raw], [(100, 100)], TAGS).object_tag == "liquid"  # the same boxes without NMS
    at_0_9 = detect_references(ListDetector([raw]), [image], "glass bottle . liquid .", nms_iou=0.9)
    assert vote_object_tag(at_0_9, [(100, 100)], TAGS).object_tag == "liquid"
    assert NMS_IOU == 0.5


def test_top_box_size_is_stage_2_s_object_size():
    # stage 2 takes the top box of the object tag's detections, whatever its phrase
    d = dets(([0, 0, 10, 10], 0.4, "bottle"), ([0, 0, 20, 10], 0.6, "glass"))
    assert top_box_size(d, 20, 10) == pytest.approx(1.0)
    assert top_box_size(dets(([0, 0, 0, 10], 0.9, "bottle")), 10, 10) is None  # no area
    assert top_box_size(dets(), 10, 10) is None


def test_measure_object_size_runs_the_object_tag_alone_and_takes_the_median():
    images = [np.zeros((100, 200, 3), np.uint8), np.zeros((100, 100, 3), np.uint8), np.zeros((50, 50, 3), np.uint8)]
    detector = ListDetector([
        dets(([0, 0, 100, 50], 0.6, "bottle"), ([0, 0, 10, 10], 0.2, "bottle")),  # 0.25
        dets(([0, 0, 60, 50], 0.3, "bottle")),  # 0.3
        dets(),  # not found
    ])
    measured = measure_object_size(detector, images, "glass bottle")
    assert detector.calls == ["glass bottle"] * 3  # as stage 2 passes the profile's object tag
    assert measured.per_image == [pytest.approx(0.25), pytest.approx(0.3), None]
    assert measured.sizes == pytest.approx([0.25, 0.3]) and measured.object_size == pytest.approx(0.275)


def test_vote_checks_lengths():
    with pytest.raises(ValueError, match="1 detections but 2 image sizes"):
        vote_object_tag([dets()], [(1, 1), (1, 1)], TAGS)
