"""The decision rule: conformal threshold, ties, the too-few refusal, the min-area score, F1."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from iapas.product.decision import (
    Decision,
    DecisionError,
    conformal_rank,
    conformal_threshold,
    decision_mask,
    f1_threshold,
    false_alarm_rate,
    images_needed,
    min_area_score,
    normalized_score,
)
from iapas.product.profile import Profile, ProfileError


def test_conformal_rank_and_threshold_by_hand():
    # n = 20, rate 0.1: k = ceil(21 * 0.9) = ceil(18.9) = 19 -> the 19th smallest
    scores = [0.05 * i for i in range(20)]  # 0.00 ... 0.95, shuffled below
    rng = np.random.default_rng(0)
    assert conformal_rank(20, 0.1) == 19
    assert conformal_threshold(rng.permutation(scores), 0.1) == pytest.approx(0.90)
    # n = 99, rate 0.01: k = ceil(100 * 0.99) = 99 exactly (no float round-up to 100)
    assert conformal_rank(99, 0.01) == 99
    assert conformal_threshold(np.arange(99), 0.01) == 98.0
    # n = 9, rate 0.1: k = ceil(10 * 0.9) = 9 -> the maximum
    assert conformal_threshold([3, 1, 2, 9, 4, 5, 6, 7, 8], 0.1) == 9.0


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_conformal_threshold_refuses_a_non_finite_score(bad):
    # 9 scores, rate 0.1: k = 9, the maximum; an infinite maximum would be a threshold no part passes
    with pytest.raises(DecisionError, match=r"^the calibration scores contain NaN or infinity: the models gave a non-finite map$"):
        conformal_threshold([3, 1, 2, bad, 4, 5, 6, 7, 8], 0.1)


def test_conformal_ties_many_exact_zeros():
    # 15 zeros and 5 distinct scores, rate 0.25: k = ceil(21 * 0.75) = ceil(15.75) = 16 -> 0.2
    scores = [0.0] * 15 + [0.2, 0.3, 0.5, 0.7, 0.9]
    assert conformal_threshold(scores, 0.25) == 0.2
    assert false_alarm_rate(scores, 0.2) == pytest.approx(4 / 20)
    # rate 0.3: k = ceil(21 * 0.7) = ceil(14.7) = 15 -> still a zero: every score > 0 is NG
    assert conformal_threshold(scores, 0.3) == 0.0
    assert false_alarm_rate(scores, 0.0) == pytest.approx(5 / 20)
    # all tied: the threshold is the common value and nothing on the calibration set is NG
    assert conformal_threshold([0.0] * 30, 0.05) == 0.0
    assert false_alarm_rate([0.0] * 30, 0.0) == 0.0


@pytest.mark.parametrize(("rate", "needed"), [(0.01, 99), (0.05, 19), (0.1, 9), (0.2, 4), (0.03, 33)])
def test_too_few_images_refused_with_the_number_needed(rate: float, needed: int):
    assert images_needed(rate) == needed
    conformal_threshold(np.zeros(needed), rate)  # exactly enough works
    with pytest.raises(DecisionError, match=f"{needed - 1} normal image.*at least {needed}"):
        conformal_threshold(np.zeros(needed - 1), rate)


def test_false_alarm_rate_within_binomial_error_over_seeded_draws():
    # exchangeable (i.i.d.) scores with many ties: P(new normal > threshold) <= rate
    rate, n, draws, tests = 0.1, 49, 400, 200
    rng = np.random.default_rng(1234)
    alarms = 0
    for _ in range(draws):
        scores = np.round(rng.exponential(0.2, n + tests) * (rng.random(n + tests) < 0.6), 2)  # 40% exact zeros
        threshold = conformal_threshold(scores[:n], rate)
        alarms += int((scores[n:] > threshold).sum())
    observed = alarms / (draws * tests)
    # the mean over draws is <= rate; 3 standard errors of a binomial of draws*tests at `rate`
    # (an upper bound: draws share a threshold, but 400 draws keep that variance small)
    assert observed <= rate + 3 * np.sqrt(rate * (1 - rate) / draws)
    assert observed > rate - 0.05  # and not vacuous: conformal is tight, ~ (n + 1 - k)/(n + 1) = 0.1


def test_min_area_score_by_hand():
    amap = np.zeros((6, 8), np.float32)
    amap[0:2, 0:2] = 0.9  # 4 pixels at 0.9
    amap[3:6, 3:7] = 0.4  # 12 pixels at 0.4 ...
    amap[4, 4] = 0.6  # ... one of them at 0.6
    assert min_area_score(amap, 0) == pytest.approx(0.9)  # the maximum
    assert min_area_score(amap, 1) == pytest.approx(0.9)
    assert min_area_score(amap, 4) == pytest.approx(0.9)  # the 2x2 square
    assert min_area_score(amap, 5) == pytest.approx(0.4)  # only the 12-pixel region has 5 px
    assert min_area_score(amap, 12) == pytest.approx(0.4)
    assert min_area_score(amap, 13) == 0.0  # {map >= 0} is the whole image (48 px)
    assert min_area_score(amap, 49) == 0.0  # more than the image
    # NG <=> the decision mask is not empty, at every threshold
    for area in (0, 4, 5, 12, 13):
        score = min_area_score(amap, area)
        for threshold in (0.0, 0.3, 0.4, 0.5, 0.6, 0.89, 0.9, 1.0):
            assert decision_mask(amap, threshold, area).any() == (score > threshold), (area, threshold)
    assert decision_mask(amap, 0.3, 5).sum() == 12
    assert decision_mask(amap, 0.3, 0).sum() == 16


def test_min_area_uses_8_connectivity_and_the_stored_map():
    amap = np.zeros((4, 4), np.float32)
    amap[0, 0] = amap[1, 1] = amap[2, 2] = 0.5  # a diagonal: one 8-connected region of 3
    assert min_area_score(amap, 3) == 0.5
    # area >= 2: the stored map (0.43217 is stored as 0.4322, 7.0 saturates at 6.5535)
    assert min_area_score(np.full((2, 2), 0.43217, np.float32), 2) == 0.4322
    assert min_area_score(np.full((2, 2), 7.0, np.float32), 2) == 6.5535
    # area 0 or 1: the exact maximum of the float map
    assert min_area_score(np.full((2, 2), 0.43217, np.float32)) == float(np.float32(0.43217))
    assert min_area_score(np.full((2, 2), 7.0, np.float32), 1) == 7.0


def test_min_area_score_matches_brute_force_on_random_maps():
    from scipy import ndimage

    rng = np.random.default_rng(7)
    for _ in range(30):
        amap = np.round(rng.random((12, 15)) * rng.integers(1, 6), 1).astype(np.float32) / 5
        area = int(rng.integers(0, 40))
        units = np.round(amap.astype(np.float64) * 10000).astype(int)
        best = 0
        for v in np.unique(units):  # brute force: every level
            labels, count = ndimage.label(units >= v, structure=np.ones((3, 3)))
            if count and np.bincount(labels.ravel())[1:].max() >= max(area, 1):
                best = max(best, int(v))
        best /= 10000
        assert min_area_score(amap, area) == pytest.approx(best), area


def test_f1_threshold_anomalib_convention():
    normal = [0.0, 0.1, 0.2, 0.6]
    anomalous = [0.5, 0.7, 0.8]
    # anomalib: t = 0.5 (NG: >= 0.5) gives TP 3, FP 1, F1 = 6/7, the best; here NG is > 0.2
    threshold, f1 = f1_threshold(normal, anomalous)
    assert threshold == 0.2
    assert f1 == pytest.approx(6 / 7)
    # every image NG is best: just below the lowest score
    threshold, f1 = f1_threshold([], [0.3, 0.4])
    assert threshold < 0.3 and f1 == 1.0
    with pytest.raises(DecisionError, match="defective"):
        f1_threshold([0.1], [])


def test_normalized_score_anomalib_formula():
    assert normalized_score(0.3, 0.3, 0.0, 0.6) == 0.5
    assert normalized_score(0.45, 0.3, 0.0, 0.6) == pytest.approx(0.75)
    assert normalized_score(2.0, 0.3, 0.0, 0.6) == 1.0
    assert normalized_score(0.0, 0.3, 0.0, 0.2) == 0.0
    assert normalized_score(0.2, 0.0, 0.0, 0.0) == pytest.approx(0.7)  # zero range: span 1


def test_decide_one_map():
    decision = Decision(threshold=0.3, min_defect_area=3, score_min=0.0, score_max=0.6)
    amap = np.zeros((5, 5), np.float32)
    amap[0, 0:2] = 0.8  # 2 pixels: too small
    verdict = decision.decide(amap)
    assert (verdict.verdict, verdict.score, verdict.mask.any()) == ("OK", 0.0, False)
    amap[1, 0] = 0.5  # now 3 connected pixels above 0.3, their lowest 0.5
    verdict = decision.decide(amap)
    assert (verdict.verdict, verdict.score, int(verdict.mask.sum())) == ("NG", 0.5, 3)
    assert verdict.normalized_score == pytest.approx(0.5 + 0.2 / 0.6)
    assert verdict.to_record()["decision"] == "NG"


def test_judge_mask_level_and_output_mask_are_the_one_verdict_of_a_result():
    from iapas.core.types import Detections, SegmentationResult
    from iapas.product.decision import NO_DECISION_MASK_LEVEL, judge, mask_level, ng_count, output_mask, verdict_at

    amap = np.zeros((4, 4), np.float32)
    amap[1:3, 1:3], amap[0, 0] = 0.3, 0.2
    result = SegmentationResult(amap, Detections.empty(), Detections.empty(), np.zeros((0, 4, 4), bool), None, None, 1.0, "default")
    decision = Decision(threshold=0.25, score_max=1.0)
    assert judge(result, None) is None and mask_level(None) == NO_DECISION_MASK_LEVEL == 0.3
    verdict = judge(result, decision)
    assert verdict.to_record() == decision.decide(amap).to_record() and verdict.verdict == verdict_at(0.3, 0.25) == "NG"
    profile = Profile.from_prompts("a", "a", ["x"])
    assert profile.judge(result) is None
    profile.decision = decision
    assert profile.judge(result).to_record() == verdict.to_record() and mask_level(decision) == 0.25
    assert int((output_mask(amap, verdict, 0.25) > 0).sum()) == 4  # the decision mask: map > 0.25
    assert int((output_mask(amap, None, NO_DECISION_MASK_LEVEL) > 0).sum()) == 4  # no decision: map >= 0.3
    assert int((output_mask(amap, None, 0.2) > 0).sum()) == 5
    assert ng_count([0.1, 0.25, 0.3, 0.9], 0.25) == sum(verdict_at(s, 0.25) == "NG" for s in (0.1, 0.25, 0.3, 0.9)) == 2


@pytest.mark.parametrize("suffix", [".yaml", ".json"])
def test_profile_decision_section_round_trip(tmp_path: Path, suffix: str):
    profile = Profile.from_prompts("tile", "tile", ["crack"])
    profile.decision = Decision(
        threshold=0.4322, min_defect_area=25, rule="conformal", target_rate=0.01, n_calibration=120,
        observed_false_alarm_rate=0.0083, score_min=0.0, score_max=0.61, signature={"caption": profile.caption},
        date="2026-12-01T00:00:00Z",
    )
    loaded = Profile.load(profile.save(tmp_path / f"p{suffix}"))
    assert loaded == profile and isinstance(loaded.decision, Decision)
    assert Profile.load(Profile.from_prompts("a", "a", ["x"]).save(tmp_path / f"q{suffix}")).decision is None


def test_malformed_decision_section_names_the_file(tmp_path: Path):
    path = tmp_path / "bad.yaml"
    path.write_text("category: x\nobject_tag: y\ncaption: a .\ndecision:\n  threshold: 0.2\n  rule: magic\n")
    with pytest.raises(ProfileError, match=f"{path}: decision: 'rule' must be one of"):
        Profile.load(path)
    path.write_text("category: x\nobject_tag: y\ncaption: a .\ndecision:\n  min_defect_area: 3\n")
    with pytest.raises(ProfileError, match=r"missing field\(s\) threshold"):
        Profile.load(path)
