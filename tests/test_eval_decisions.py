"""OK/NG evidence in ``iapas evaluate``: a conformal threshold per category from held-out normal
images, and the false-alarm rate, detection rate and confusion counts it gives on the test set."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from iapas.evaluation import EvalSettings, evaluate_dataset
from iapas.evaluation.decisions import threshold_evidence
from tests.conftest import shared_data
from tests.test_evaluation import _save, fake_pipeline, make_mtd, read_jsonl, write_profiles

H, W = 40, 48


def _spot(brightness: int) -> np.ndarray:
    """A flat image with a 4x4 spot: the fake detector scores it brightness / 255 (0 below 121)."""
    im = np.full((H, W, 3), 60, np.uint8)
    im[10:14, 10:14] = brightness
    return im


def score(brightness: int) -> float:
    """The raw image score the fake pipeline gives a spot (its float32 box score; 0 for no box)."""
    return float(np.float32(brightness / 255.0)) if brightness > 120 else 0.0


TRAIN = [130 + 5 * i for i in range(11)]  # train/good/000..010
NORMAL = [60, 140, 160, 162, 190]  # test/good/000..004 (60: no spot, score 0)
DEFECT = [150, 180, 200, 230]  # test/crack/000..003


def make_tree(root: Path) -> Path:
    base = root / "alpha"
    for i, b in enumerate(TRAIN):
        _save(base / "train" / "good" / f"{i:03d}.png", _spot(b))
    for i, b in enumerate(NORMAL):
        _save(base / "test" / "good" / f"{i:03d}.png", _spot(b))
    for i, b in enumerate(DEFECT):
        _save(base / "test" / "crack" / f"{i:03d}.png", _spot(b))
        mask = np.zeros((H, W), np.uint8)
        mask[10:14, 10:14] = 255
        _save(base / "ground_truth" / "crack" / f"{i:03d}_mask.png", mask)
    return root


def test_threshold_evidence_by_hand():
    # n = 4 scores, rate 0.25: k = ceil(5 * 0.75) = 4, the largest; ties count as one score each
    ev = threshold_evidence([0.0, 0.0, 0.3, 0.3], [0.0, 0.3, 0.31, 0.5], [0.3, 0.9], 0.25)
    assert ev.threshold == 0.3
    assert (ev.tp, ev.fp, ev.tn, ev.fn) == (1, 2, 2, 1)  # 0.3 is not above 0.3
    assert ev.false_alarm_rate == 0.5 and ev.detection_rate == 0.5
    # no normal test images: no false-alarm rate (not 0), the counts still add up
    ev = threshold_evidence([0.0, 0.0, 0.3, 0.3], [], [0.9], 0.25)
    assert ev.false_alarm_rate is None and (ev.fp, ev.tn, ev.tp) == (0, 0, 1)
    # too few for the rate: the reason, not a crash
    ev = threshold_evidence([0.1] * 3, [0.0], [0.9], 0.01)
    assert ev.threshold is None and ev.tp is None and "needs at least 99" in ev.reason


def test_evaluate_calibrates_on_train_normals_that_are_not_references(tmp_path: Path):
    """11 train normals, 2 of them references: the other 9 are the calibration set.

    Seed 0 draws train 008 and 009 (brightness 170 and 175) as references, so the calibration
    scores are those of 130, 135, 140, 145, 150, 155, 160, 165, 180. Rate 0.2, n = 9:
    k = ceil(10 * 0.8) = 8, the 8th smallest: brightness 165. Normal test images above it: 190
    (1 of 5: false-alarm rate 0.2); defective above it: 180, 200, 230 (3 of 4: detection 0.75).
    """
    root = make_tree(tmp_path / "data")
    out = tmp_path / "out"
    write_profiles(out / "profiles", ["alpha"])
    settings = EvalSettings(protocol="full", n_references=2, calibration_images=20, false_alarm_rate=0.2)
    result = evaluate_dataset("mvtec", root, out, fake_pipeline(), settings)
    (cat,) = result.categories
    assert not result.failed, cat.error
    calibration = read_jsonl(out / "predictions" / "alpha.calibration.jsonl")
    used = sorted(Path(r["image"]).name for r in calibration)
    assert used == [f"{i:03d}.png" for i in range(11) if i not in (8, 9)]  # the references are not among them
    assert all("/train/good/" in r["image"] for r in calibration)
    assert [r["map_max"] for r in calibration if r["image"].endswith("010.png")] == [score(180)]
    d = cat.decision
    assert d is not None and d.n_calibration == 9 and d.target_rate == 0.2
    assert d.threshold == score(165)
    assert (d.tp, d.fp, d.tn, d.fn) == (3, 1, 4, 1)
    assert d.false_alarm_rate == pytest.approx(0.2) and d.detection_rate == pytest.approx(0.75)
    assert cat.n_done == 9  # the test set is whole: the calibration images came from train
    assert any("9 normal training images that are not references" in n for n in cat.notes)

    data = json.loads((out / "metrics.json").read_text())
    assert data["categories"]["alpha"]["decision"]["fp"] == 1
    rows = {r["category"]: r for r in csv.DictReader((out / "metrics.csv").open())}
    assert rows["alpha"]["threshold"] == f"{score(165):.6f}" and rows["alpha"]["tp"] == "3"
    assert rows["alpha"]["false_alarm_rate"] == "0.200000" and rows["alpha"]["target_false_alarm_rate"] == "0.200000"
    assert rows["mean"]["fn"] == "1" and rows["mean"]["detection_rate"] == "0.750000"
    md = (out / "metrics.md").read_text()
    assert "| alpha | 9 | 0.647059 | 20.00 (20.00) | 75.00 | 3 | 1 | 4 | 1 |" in md

    # resumed: nothing segmented again, the same evidence
    again = evaluate_dataset("mvtec", root, out, fake_pipeline(), settings)
    assert again.categories[0].n_new == 0 and again.categories[0].decision == d


def test_without_train_split_calibration_images_leave_the_test_set_and_too_few_are_reported(tmp_path: Path):
    """MTD has no train split: 8 normals, 2 references, then at most half of the 6 left
    (3; 4 asked) are drawn for calibration and leave the test set, 3 normal test images stay.
    Rate 0.01 needs 99 images: no threshold, the reason instead, and the run does not fail."""
    root = make_mtd(tmp_path / "mtd", n_free=8, n_defect=3)
    out = tmp_path / "out"
    write_profiles(out / "profiles", ["magnetic_tile"])
    settings = EvalSettings(protocol="full", n_references=2, calibration_images=4, false_alarm_rate=0.01)
    result = evaluate_dataset("mtd", root, out, fake_pipeline(), settings, categories=["magnetic_tile"])
    (cat,) = result.categories
    assert not result.failed
    calibration = {r["image"] for r in read_jsonl(out / "predictions" / "magnetic_tile.calibration.jsonl")}
    tested = {r["image"] for r in read_jsonl(out / "predictions" / "magnetic_tile.jsonl")}
    assert len(calibration) == 3 and not calibration & tested
    assert cat.n_done == 3 + 3 and cat.metrics.n_anomalous_images == 3
    assert cat.decision.threshold is None and "needs at least 99" in cat.decision.reason
    assert any("3 of the 6 normal test images were drawn" in n and "3 normal test images remain" in n for n in cat.notes)
    assert "magnetic_tile: no OK/NG threshold: 3 normal image(s) are too few" in (out / "metrics.md").read_text()
    # rate 0.5 needs 1: the same images, the metric-time threshold is their k = ceil(4 * 0.5) = 2nd
    # smallest; every normal image of this tree is flat (score 0), every defect is found
    half = evaluate_dataset("mtd", root, out, fake_pipeline(), EvalSettings(**{**settings.to_dict(), "false_alarm_rate": 0.5}),
                            categories=["magnetic_tile"])
    d = half.categories[0].decision
    assert half.categories[0].n_new == 0
    assert d.threshold == 0.0 and (d.tp, d.fp, d.tn, d.fn) == (3, 0, 3, 0)


def test_cli_evaluate_on_real_mtd_reports_the_false_alarm_rate_next_to_the_target(tmp_path: Path, tiny_models: dict[str, Path]):
    from typer.testing import CliRunner

    from iapas.cli import app

    root = shared_data("MTD")
    out = tmp_path / "run"
    result = CliRunner().invoke(app, [
        "evaluate", "--dataset", "mtd", "--root", str(root), "--out", str(out), "--mode", "base", "--protocol", "full",
        "--limit", "6", "--references", "2", "--false-alarm-rate", "0.25",
        "--calibration-images", "3", "--detector", str(tiny_models["grounding-dino"]), "--segmenter", str(tiny_models["sam"]),
        "--device", "cpu", "--no-report", "--quiet",
    ])
    assert result.exit_code == 0, result.output
    assert "target false alarms 25.00%" in " ".join(result.output.split())  # the title, however it wraps
    d = json.loads((out / "metrics.json").read_text())["categories"]["magnetic_tile"]["decision"]
    assert d["n_calibration"] == 3 and d["target_rate"] == 0.25 and d["threshold"] is not None
    records = read_jsonl(out / "predictions" / "magnetic_tile.jsonl")
    calibration = read_jsonl(out / "predictions" / "magnetic_tile.calibration.jsonl")
    assert all("/MT_Free/" in r["image"] for r in calibration)
    assert not {r["image"] for r in calibration} & {r["image"] for r in records}
    # k = ceil(4 * 0.75) = 3: the largest of the 3 calibration scores
    assert d["threshold"] == max(r["map_max"] for r in calibration)
    normal = [r["map_max"] for r in records if r["label"] == 0]
    defect = [r["map_max"] for r in records if r["label"] == 1]
    assert d["fp"] == sum(s > d["threshold"] for s in normal) and d["fp"] + d["tn"] == len(normal) == 3
    assert d["tp"] == sum(s > d["threshold"] for s in defect) and d["tp"] + d["fn"] == len(defect) == 3
    assert d["false_alarm_rate"] == pytest.approx(d["fp"] / 3)
    md = (out / "metrics.md").read_text()
    assert f"({100 * 0.25:.2f})" in md and "false-alarm rate (target)" in md


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize(("rate", "n"), [(0.01, 99), (0.1, 50)])
def test_observed_false_alarm_rate_stays_at_the_target_over_seeded_draws(rate: float, n: int, ties: bool):
    """Exchangeable normal scores (continuous, or half of them exactly 0 and the rest on a
    0.05 grid, as IAP-AS maps tie): over 2000 seeded draws of n calibration and 200 test images,
    the mean observed false-alarm rate is at most the target within 3 standard errors. Without
    ties the conformal rank is exact: the mean is (n + 1 - k) / (n + 1), not far below it."""
    rng = np.random.default_rng(12345)
    trials, m = 2000, 200
    scores = rng.exponential(size=(trials, n + m))
    if ties:
        scores = np.where(rng.random(scores.shape) < 0.5, 0.0, np.round(scores / 0.05) * 0.05)
    observed = np.array([
        threshold_evidence(row[:n], row[n:], [], rate).false_alarm_rate for row in scores
    ])
    error = 3 * observed.std(ddof=1) / np.sqrt(trials)
    assert observed.mean() <= rate + error
    k = int(np.ceil((n + 1) * (1 - rate)))
    exact = (n + 1 - k) / (n + 1)  # 1/100 and 5/51
    if not ties:
        assert observed.mean() == pytest.approx(exact, abs=error)
