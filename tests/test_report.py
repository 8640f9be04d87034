"""The HTML report: self-contained, with the table, curves and the gallery of best and worst images."""

from __future__ import annotations

import base64
import io
import re
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from iapas.evaluation import EvalSettings, evaluate_dataset
from iapas.evaluation.report import (
    _boxes_text,
    gallery_panels,
    pr_figure,
    render_report,
    select_gallery,
    write_report,
)

sys.path.insert(0, str(Path(__file__).parent))
from test_evaluation import fake_pipeline, make_mvtec, write_profiles  # noqa: E402

DATA_URI = re.compile(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"')


def rec(key: str, label: int, score: float) -> dict:
    return {"key": key, "label": label, "score": score, "status": "ok"}


def test_select_gallery_picks_detections_false_alarms_and_misses():
    records = [
        rec("a1", 1, 0.9), rec("a2", 1, 0.1), rec("a3", 1, 0.5), rec("a4", 1, 0.5),
        rec("n1", 0, 0.7), rec("n2", 0, 0.0), {"key": "bad", "label": 1, "status": "failed"},
    ]
    chosen = select_gallery(records, 2)
    assert [r["key"] for r in chosen["detections"]] == ["a1", "a3"]  # ties keep test order
    assert [r["key"] for r in chosen["false alarms"]] == ["n1", "n2"]
    assert [r["key"] for r in chosen["misses"]] == ["a2", "a3"]


def test_gallery_ranks_by_the_raw_image_score_and_shows_the_per_image_normalised_map(tmp_path: Path):
    from iapas.evaluation.core import save_map_file

    # 'score' (the resized map's max) is rigged in reverse: the ranking must follow map_max
    records = [
        {**rec("a1", 1, 0.9), "map_min": 0.0, "map_max": 0.2},
        {**rec("a2", 1, 0.1), "map_min": 0.0, "map_max": 0.8},
        {**rec("n1", 0, 0.9), "map_min": 0.0, "map_max": 0.1},
        {**rec("n2", 0, 0.1), "map_min": 0.0, "map_max": 0.6},
    ]
    chosen = select_gallery(records, 1)
    assert [r["key"] for r in chosen["detections"]] == ["a2"]
    assert [r["key"] for r in chosen["false alarms"]] == ["n2"]
    assert [r["key"] for r in chosen["misses"]] == ["a1"]
    # the overlay of a map of 0.2 normalised per image equals that of the same region at 1.0
    region = np.zeros((40, 40), np.float32)
    region[10:20, 10:30] = 1.0
    save_map_file(tmp_path / "weak.npz", 0.2 * region, region > 0)
    save_map_file(tmp_path / "unit.npz", region, region > 0)
    weak = {"key": "w", "map": "weak.npz", "width": 40, "height": 40, "map_min": 0.0, "map_max": 0.2}
    unit = {"key": "u", "map": "unit.npz", "width": 40, "height": 40, "map_min": 0.0, "map_max": 1.0}
    normalised = gallery_panels(tmp_path, weak, 1.0, 40, image_norm=True)[2]
    np.testing.assert_array_equal(normalised, gallery_panels(tmp_path, unit, 1.0, 40)[2])
    assert not np.array_equal(normalised, gallery_panels(tmp_path, weak, 1.0, 40)[2])  # raw: fainter


def test_box_list_is_escaped_sorted_and_capped():
    boxes = [{"phrase": f"p{i}", "score": i / 10} for i in range(10)] + [{"phrase": "<b>", "score": 0.95}]
    text = _boxes_text(boxes, limit=3)
    assert text == "&lt;b&gt; 0.95, p9 0.90, p8 0.80 and 8 more"
    assert _boxes_text([]) == "none"


@pytest.fixture()
def evaluated(tmp_path: Path):
    root = make_mvtec(tmp_path / "data", n_good=5, n_bad=5)
    (root / "beta" / "test" / "good" / "004.png").write_bytes(b"garbage")
    out = tmp_path / "run"
    write_profiles(out / "profiles", ["alpha", "beta"])
    result = evaluate_dataset("mvtec", root, out, fake_pipeline(), EvalSettings(protocol="full"), report=False)
    return result, out


def test_report_is_self_contained_and_holds_table_curves_and_gallery(evaluated):
    result, out = evaluated
    path = write_report(result, gallery=2, thumb=64)
    assert path == out / "report.html"
    text = path.read_text()
    # self-contained: no external references, one inline script (the table's sorter)
    assert "http://" not in text and "https://" not in text
    assert 'src="file' not in text and text.count("<script") == 1 and "<script src" not in text and "<link" not in text
    srcs = re.findall(r'src="([^"]*)"', text)
    assert srcs and all(s.startswith("data:image/png;base64,") for s in srcs)
    # header: protocol, mode, models, version; notes about failures and references
    assert "full protocol: the whole test split" in text and "Mode: iapas" in text
    assert "detector blob, segmenter box" in text and "iapas 0.1.0" in text
    assert "beta: 1 test image(s) failed and are left out of the metrics." in text
    assert "garbage" not in text and "004.png" in text  # the failed file is listed by name
    # the metrics table, with the values of the result
    alpha = result.categories[0].metrics
    assert "<th>pixel AP</th><th>pixel F1-max</th>" in text
    assert f'<td>alpha</td><td class="n">{100 * alpha.pixel_ap:.2f}</td><td class="n">{100 * alpha.pixel_f1_max:.2f}</td>' in text
    assert '<tr class="mean"><td>mean</td>' in text
    # one PR curve per category, a histogram and a ROC/PR figure per category, then 3 pictures per
    # gallery item: 2 categories x (2 + 2 + 2) items, then 3 per row of the image table (10 + 9 images)
    images = [base64.b64decode(b) for b in DATA_URI.findall(text)]
    assert len(images) == 2 + 2 * 2 + 2 * 6 * 3 + 19 * 3
    gallery = [Image.open(io.BytesIO(b)) for b in images[6 : 6 + 36]]
    assert all(max(im.size) == 64 for im in gallery)  # 40x48 images fitted into 64 px: 53x64
    assert gallery[0].size == (53, 64)
    assert "alpha: highest-scoring defective images" in text and "alpha: highest-scoring normal images" in text
    assert "alpha: lowest-scoring defective images" in text  # not "false alarms": those are the verdicts' word
    assert "kept: defect" in text
    assert "image score 0.902 (max of the raw map)" in text  # alpha crack/004: 230/255
    assert "Image scores are the maxima of the raw full-resolution maps" in text
    assert "each image&#x27;s map min-max normalised" in text  # the protocol sentence


def test_report_overlay_shows_the_map_and_the_ground_truth_panel_the_mask(evaluated):
    result, out = evaluated
    text = render_report(result, gallery=1, thumb=48)
    images = [np.asarray(Image.open(io.BytesIO(base64.b64decode(b)))) for b in DATA_URI.findall(text)]
    image, gt, overlay = images[6:9]  # after the PR curves, histograms and ROC/PR figures: alpha's best detection: crack/004, brightest defect
    assert "<b>crack/004</b> (anomalous, crack)" in text
    assert gt.ndim == 2 and set(np.unique(gt)) == {0, 255}
    assert image.shape == overlay.shape == (48, 40, 3)
    assert (overlay != image).any(axis=2).sum() > 0  # heat colours and box outlines were drawn
    ys, xs = np.nonzero(gt)
    assert 18 <= ys.mean() <= 28 and 20 <= xs.mean() <= 30  # where crack/004's mask is (rows 18-26, cols 24-30)


def test_pr_figure_renders_a_curve(evaluated):
    result, _ = evaluated
    fig = pr_figure(result.categories[0])
    assert fig is not None and fig.ndim == 3 and fig.shape[2] == 3 and fig.dtype == np.uint8
    assert (fig < 128).any()  # something was drawn on the white canvas


def test_profiles_table_says_where_the_anomaly_nouns_came_from():
    from iapas.evaluation.core import CategoryResult, DatasetResult
    from iapas.evaluation.profiles import ProfileRecord
    from iapas.evaluation.report import _profiles_table

    def category(name: str, models: dict, fallback: str | None) -> CategoryResult:
        record = ProfileRecord(None, "stage1", "tile", "crack . tile .", 0.5, 0.8, models, fallback)
        return CategoryResult(name=name, profile=record)

    result = DatasetResult(
        "mtd", "MTD", "root", Path("."), EvalSettings(),
        [
            category("llm", {"llm": "meta-llama/x"}, None),
            category("fell-back", {"llm": "knowledge (fallback from meta-llama/x)"}, "LLM error: <timeout>"),
            category("asked", {"llm": "knowledge"}, None),
            category("by-hand", {}, None),
        ],
    )
    rows = re.findall(r"<tr><td>([^<]*)</td>.*?</code></td><td>([^<]*)</td>", _profiles_table(result))
    assert rows == [
        ("llm", "LLM meta-llama/x"),
        ("fell-back", "knowledge vocabulary (LLM fallback: LLM error: &lt;timeout&gt;)"),
        ("asked", "knowledge vocabulary"),
        ("by-hand", "-"),
    ]
