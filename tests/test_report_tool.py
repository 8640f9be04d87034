"""The report as a working tool: threshold figures, the table of every image, and a real browser."""

from __future__ import annotations

import os
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from iapas.evaluation import EvalSettings, evaluate_dataset
from iapas.evaluation.decisions import ThresholdEvidence
from iapas.evaluation.report import write_report
from iapas.evaluation.report_tool import histogram_figure, image_rows, roc_pr, verdict
from tests.browser import require_chromium

sys.path.insert(0, str(Path(__file__).parent))
from test_evaluation import fake_pipeline, make_mvtec, write_profiles  # noqa: E402

# The fake pipeline's raw image scores: crack/i (200 + 10 i) / 255, good/i (125 + 10 i + c) / 255
# with c = 0 for alpha and 1 for beta. At alpha's threshold 0.55 good/002 (0.569) and good/003
# (0.608) are false alarms; at beta's 0.83 crack/000 (0.784) and crack/001 (0.824) are misses.
THRESHOLDS = {"alpha": 0.55, "beta": 0.83}
EXPECTED_FIRST = [("alpha", "good/003", "fa"), ("alpha", "good/002", "fa"), ("beta", "crack/000", "miss"), ("beta", "crack/001", "miss")]
ROW = re.compile(r'<tr(?: class="(fa|miss)")?><td data-v="([^"]*)">[^<]*</td><td data-v="([^"]*)"><details><summary>')


def test_verdict_is_ng_strictly_above_the_threshold():
    assert verdict(0.5, 0.5) == "OK" and verdict(0.5000001, 0.5) == "NG" and verdict(0.9, None) == "-"


def test_image_rows_put_false_alarms_then_misses_first():
    records = [
        {"key": "n1", "label": 0, "map_max": 0.7, "status": "ok"},
        {"key": "a1", "label": 1, "map_max": 0.3, "status": "ok"},
        {"key": "n2", "label": 0, "map_max": 0.9, "status": "ok"},
        {"key": "a2", "label": 1, "map_max": 0.95, "status": "ok"},
        {"key": "a3", "label": 1, "map_max": 0.1, "status": "ok"},
        {"key": "n3", "label": 0, "map_max": 0.2, "status": "ok"},
        {"key": "x", "label": 1, "status": "failed"},
    ]
    rows = image_rows("c", records, 0.5)
    assert [(r.record["key"], r.verdict, r.kind) for r in rows] == [
        ("n2", "NG", "false alarm"), ("n1", "NG", "false alarm"),  # highest score first
        ("a3", "OK", "miss"), ("a1", "OK", "miss"),  # lowest score first
        ("a2", "NG", ""), ("n3", "OK", ""),
    ]
    assert [r.kind for r in image_rows("c", records, None)] == [""] * 6  # no threshold: no verdicts


def test_roc_pr_by_hand_with_a_tie():
    curves = roc_pr([0.9, 0.8, 0.8, 0.1], [1, 0, 1, 0])
    np.testing.assert_allclose(curves["fpr"], [0, 0, 0.5, 1])
    np.testing.assert_allclose(curves["tpr"], [0, 0.5, 1, 1])
    np.testing.assert_allclose(curves["recall"], [0.5, 1, 1])
    np.testing.assert_allclose(curves["precision"], [1, 2 / 3, 0.5])
    assert roc_pr([0.1, 0.2], [0, 0]) is None


def test_histogram_draws_the_threshold():
    rows = image_rows("c", [{"key": "n", "label": 0, "map_max": 0.2, "status": "ok"}, {"key": "a", "label": 1, "map_max": 0.8, "status": "ok"}], 0.5)
    with_line, without = histogram_figure("c", rows, 0.5), histogram_figure("c", rows, None)
    assert with_line.shape == without.shape and not np.array_equal(with_line, without)


@pytest.fixture()
def report(tmp_path: Path):
    root = make_mvtec(tmp_path / "data", n_good=4, n_bad=4)
    out = tmp_path / "run"
    write_profiles(out / "profiles", ["alpha", "beta"])
    result = evaluate_dataset("mvtec", root, out, fake_pipeline(), EvalSettings(protocol="full"), report=False)
    for c in result.categories:  # a calibrated threshold set by hand (the calibration itself is tested elsewhere)
        c.decision = ThresholdEvidence(target_rate=0.1, n_calibration=20, threshold=THRESHOLDS[c.name], fp=2 if c.name == "alpha" else 0, fn=2 if c.name == "beta" else 0)
    return result, out


def test_report_has_threshold_figures_and_the_table_with_false_alarms_and_misses_first(report):
    result, out = report
    from iapas.evaluation.report import render_report

    text = render_report(result, gallery=0, thumb=32, full_images=5)
    for name in ("alpha", "beta"):
        assert f'<img class="histogram" src="data:image/png;base64,' in text and f'alt="score histogram of {name}"' in text
        assert f'alt="image ROC and PR of {name}"' in text
    assert "threshold 0.55 from 20 calibration images for a target false-alarm rate of 10%: 2 false alarm(s), 0 miss(es)" in text
    rows = ROW.findall(text)
    assert len(rows) == 16  # 2 categories x (4 normal + 4 defective)
    assert [(cat, key, cls) for cls, cat, key in rows[:4]] == EXPECTED_FIRST
    assert all(cls == "" for cls, _, _ in rows[4:])
    assert text.count('<td class="NG" data-v="NG">NG</td>') == 4 + 2 + 2  # alpha: all cracks + 2 goods; beta: 2 cracks
    # the cap: 5 rows with pictures (the 4 flagged ones come first), the other 11 without, said on the page
    assert text.count("pictures not embedded") == 11
    assert "Only the first 5 rows and every false alarm and miss carry their pictures (5 of 16 images)" in text
    # offline: every src and href is inline
    links = re.findall(r'(?:src|href)="([^"]*)"', text)
    assert links and all(link.startswith("data:image/png;base64,") for link in links)
    assert "http://" not in text and "https://" not in text


def test_report_of_a_calibrated_evaluation_agrees_with_its_counts(tmp_path: Path):
    """The calibrated run of test_eval_decisions (threshold: brightness 165; TP 3, FP 1, TN 4,
    FN 1): its report lists the one false alarm, then the one miss, and 3 + 1 images NG."""
    from test_eval_decisions import make_tree

    root = make_tree(tmp_path / "data")
    out = tmp_path / "out"
    write_profiles(out / "profiles", ["alpha"])
    settings = EvalSettings(protocol="full", n_references=2, calibration_images=20, false_alarm_rate=0.2)
    evaluate_dataset("mvtec", root, out, fake_pipeline(), settings)
    text = (out / "report.html").read_text()
    assert "from 9 calibration images for a target false-alarm rate of 20%: 1 false alarm(s), 1 miss(es)" in text
    rows = ROW.findall(text)
    assert len(rows) == 9 and [cls for cls, _, _ in rows] == ["fa", "miss"] + [""] * 7
    assert rows[:2] == [("fa", "alpha", "good/004"), ("miss", "alpha", "crack/000")]  # brightness 190 (good/004), 150
    assert text.count('<td class="NG" data-v="NG">NG</td>') == 3 + 1


def test_report_in_headless_chromium_loads_the_figures_and_sorts(report, tmp_path: Path):
    sync_playwright, chromium = require_chromium()
    result, out = report
    path = write_report(result, gallery=1, thumb=48)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, headless=True, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            requests: list[str] = []
            page.on("request", lambda r: requests.append(r.url))
            page.goto(path.as_uri())
            assert page.eval_on_selector("img.histogram", "i => i.complete && i.naturalWidth") > 0
            assert page.eval_on_selector("img.curves", "i => i.complete && i.naturalWidth") > 0
            keys = "Array.from(document.querySelectorAll('table.images tbody tr')).map(r => r.cells[1].dataset.v)"
            scores = "Array.from(document.querySelectorAll('table.images tbody tr')).map(r => parseFloat(r.cells[3].dataset.v))"
            assert page.evaluate(keys)[:2] == ["good/003", "good/002"]  # false alarms first, as written
            page.click("table.images th:nth-child(4)")  # score: ascending
            ascending = page.evaluate(scores)
            assert ascending == sorted(ascending) and len(ascending) == 16
            page.click("table.images th:nth-child(4)")  # again: descending
            assert page.evaluate(scores) == sorted(ascending, reverse=True)
            page.click("table.images tbody tr:first-child summary")  # open the top row's pictures
            assert page.eval_on_selector("table.images tbody tr:first-child details img", "i => i.naturalWidth") > 0
            page.locator("h2", has_text="Image scores").scroll_into_view_if_needed()
            page.screenshot(path=str(tmp_path / "report.png"), full_page=True)
            assert all(u.startswith(("file:", "data:")) for u in requests)  # nothing fetched from anywhere
        finally:
            browser.close()
    assert (tmp_path / "report.png").stat().st_size > 10_000
    if os.environ.get("IAPAS_SCREENSHOT_DIR"):  # to look at it
        shutil.copy(tmp_path / "report.png", Path(os.environ["IAPAS_SCREENSHOT_DIR"]) / "report.png")
