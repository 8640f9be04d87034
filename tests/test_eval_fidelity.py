"""The evaluation's fidelity to the paper's reference code (issue 9 items 4, 5, 6, 9 and the
prompt-transfer ablation) and two evaluation fixes (issue 8 items 3 and 14).

Reference behaviour checked against sybeam27/IAP-ZSAS: ``calculate_max_f1`` scans
``np.linspace(0, 1, 100)`` with ``pred >= thres``; image scores are
``np_scores.reshape(N, -1).max(axis=1)`` of the normalised 400x400 stack; maps are resized with
``cv2.INTER_CUBIC``, masks with ``cv2.INTER_NEAREST``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from iapas.evaluation import EvalSettings, Stage1Options, evaluate_dataset
from iapas.evaluation.cvresize import cubic_taps, nearest_index, resize_map_cubic, resize_mask_nearest
from iapas.metrics import category_metrics, paper_thresholds
from tests.conftest import shared_data
from tests.test_evaluation import OBJECT, fake_pipeline, make_mtd, make_mvtec, write_profiles

# --- F1-max: exact and the reference's 100 thresholds (item 9) ------------------------------------


def test_paper_thresholds_are_the_reference_grid():
    np.testing.assert_array_equal(paper_thresholds(), np.linspace(0, 1, 100))


def test_exact_and_100_threshold_f1_max_differ_by_hand():
    """Pixels 1.0 (normal), 0.995 (defect), 0.992 (normal), 0 (normal), already in [0, 1]. Exact: at
    t = 0.995, TP 1, FP 1: F1 = 2 / (1 + 1 + 1) = 2/3. The grid's last thresholds are 98/99 = 0.9899
    (TP 1, FP 2: 2 / (1 + 2 + 1) = 1/2) and 1 (TP 0): the reference's F1-max is 1/2."""
    maps = np.array([[[1.0, 0.995], [0.992, 0.0]]], np.float32)
    masks = np.array([[[0, 1], [0, 0]]], bool)
    m = category_metrics(maps, masks)
    assert m.pixel_f1_max == pytest.approx(2 / 3) and m.pixel_f1_max_100 == pytest.approx(1 / 2)
    # image level, the same arithmetic on four image scores
    scores = np.array([1.0, 0.995, 0.992, 0.0])
    img = category_metrics(np.zeros((4, 2, 2), np.float32), np.zeros((4, 2, 2), bool), image_scores=scores,
                           image_labels=np.array([0, 1, 0, 0]), normalize_image_scores=False)
    assert img.image_f1_max == pytest.approx(2 / 3) and img.image_f1_max_100 == pytest.approx(1 / 2)
    # given (raw) image scores are min-max normalised before the grid by default: x 2 changes nothing
    twice = category_metrics(np.zeros((4, 2, 2), np.float32), np.zeros((4, 2, 2), bool), image_scores=2 * scores,
                             image_labels=np.array([0, 1, 0, 0]))
    assert twice.image_f1_max_100 == pytest.approx(1 / 2)


def test_metrics_tables_show_both_f1_columns_labelled(tmp_path: Path):
    root = make_mvtec(tmp_path / "data", ("alpha",))
    out = tmp_path / "out"
    write_profiles(out / "profiles", ["alpha"])
    result = evaluate_dataset("mvtec", root, out, fake_pipeline(), EvalSettings(protocol="full"), report=False)
    md = (out / "metrics.md").read_text()
    assert "| pixel F1-max | pixel F1-max (paper's 100 thr.) |" in md
    assert "image F1-max (paper's 100 thr.)" in md and "np.linspace(0, 1, 100)" in md
    header = (out / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {"pixel_f1_max", "pixel_f1_max_100", "image_f1_max", "image_f1_max_100"} <= set(header)
    assert result.categories[0].metrics.pixel_f1_max_100 <= result.categories[0].metrics.pixel_f1_max


# --- image score (item 4) ---------------------------------------------------------------------------


def test_image_score_and_resize_follow_the_protocol():
    paper, full = EvalSettings(), EvalSettings(protocol="full")
    assert (paper.image_score_method, paper.resize_method) == ("paper", "opencv")
    assert (full.image_score_method, full.resize_method) == ("raw", "pil")
    assert EvalSettings(image_score="raw").image_score_method == "raw"
    assert EvalSettings(protocol="full", image_score="paper").image_score_method == "paper"
    assert paper.signature()["resize"] == "opencv" and "image_score" not in paper.signature()  # metric-time
    assert EvalSettings(test_pool_references=10).signature() == paper.signature()  # same as the references drawn
    assert EvalSettings(n_references=1, test_pool_references=10).signature()["test_pool_references"] == 10
    with pytest.raises(ValueError, match="test_pool_references"):
        EvalSettings(n_references=10, test_pool_references=1)
    with pytest.raises(ValueError, match="image_score"):
        EvalSettings(image_score="max")


def test_paper_image_score_is_the_maximum_of_the_normalised_stack(tmp_path: Path):
    root = make_mvtec(tmp_path / "data", ("alpha",))
    out = tmp_path / "out"
    write_profiles(out / "profiles", ["alpha"])
    raw = evaluate_dataset("mvtec", root, out, fake_pipeline(), EvalSettings(protocol="full"), report=False)
    paper = evaluate_dataset("mvtec", root, out, fake_pipeline(), EvalSettings(protocol="full", image_score="paper"), report=False)
    assert paper.categories[0].n_new == 0  # a metric-time switch: nothing segmented again
    from iapas.evaluation.core import evaluated_map, load_map_file, predictions_path
    from iapas.engine.runner import ResultsLog

    records = ResultsLog(predictions_path(out, "alpha")).read()
    ordered = [records[k] for k in paper.categories[0].keys]
    stack = np.stack([evaluated_map(load_map_file(out / r["map"])[0], r, True) for r in ordered])
    lo, hi = float(stack.min()), float(stack.max())
    scores = ((stack.astype(np.float64) - lo) / (hi - lo)).reshape(len(ordered), -1).max(axis=1)
    labels = np.array([r["label"] for r in ordered])
    from sklearn.metrics import average_precision_score

    assert paper.categories[0].metrics.image_ap == pytest.approx(average_precision_score(labels, scores), abs=1e-6)
    assert raw.categories[0].metrics.image_ap == pytest.approx(
        average_precision_score(labels, [r["map_max"] for r in ordered]), abs=1e-12
    )
    assert "maximum of the normalised stack" in json.loads((out / "metrics.json").read_text())["protocol_description"]


# --- OpenCV's resizing without OpenCV (item 5) ----------------------------------------------------


def test_nearest_is_opencvs_top_left_rule_by_hand():
    # 5 -> 2: scale 2.5, source floor(0 * 2.5) = 0 and floor(1 * 2.5) = 2 (the centre rule would give 1 and 3)
    np.testing.assert_array_equal(nearest_index(5, 2), [0, 2])
    np.testing.assert_array_equal(nearest_index(2, 4), [0, 0, 1, 1])
    mask = np.array([[1, 0, 0, 0, 1]], bool)
    np.testing.assert_array_equal(resize_mask_nearest(mask, 2), [[True, False], [True, False]])


def test_cubic_taps_by_hand():
    # 2 -> 4: positions (d + .5) / 2 - .5 = -.25, .25, .75, 1.25; t = .75, .25, .75, .25 (A = -0.75)
    index, weights = cubic_taps(2, 4)
    np.testing.assert_array_equal(index[0], [0, 0, 0, 1])  # -2, -1, 0, 1 clamped to the image
    a, t = -0.75, 0.25
    w1 = ((a + 2) * t - (a + 3)) * t * t + 1
    assert weights[1, 1] == pytest.approx(w1, abs=1e-7) and weights.sum(axis=1) == pytest.approx(1.0, abs=1e-6)
    assert np.all(resize_map_cubic(np.full((7, 9), 0.3, np.float32), 400) == pytest.approx(0.3, abs=1e-6))


cv2 = pytest.importorskip("cv2")


def _cv_cubic(m: np.ndarray, size: int) -> np.ndarray:
    return cv2.resize(m.astype(np.float32), (size, size), interpolation=cv2.INTER_CUBIC)


def _cv_nearest(g: np.ndarray, size: int) -> np.ndarray:
    return cv2.resize(g.astype(np.uint8) * 255, (size, size), interpolation=cv2.INTER_NEAREST) > 127


@pytest.mark.parametrize("shape", [(1024, 1024), (1250, 500), (256, 256), (399, 401), (17, 23), (400, 400), (900, 700), (3, 5)])
def test_resize_matches_opencv_on_generated_maps_and_masks(shape: tuple[int, int]):
    rng = np.random.default_rng(sum(shape))
    amap = rng.random(shape).astype(np.float32)
    amap[rng.random(shape) < 0.5] = 0  # sparse, as anomaly maps are
    np.testing.assert_allclose(resize_map_cubic(amap, 400), _cv_cubic(amap, 400), atol=1e-4, rtol=0)
    mask = rng.random(shape) < 0.3
    np.testing.assert_array_equal(resize_mask_nearest(mask, 400), _cv_nearest(mask, 400))


def test_resize_matches_opencv_on_real_mvtec_masks_and_maps():
    root = shared_data("MVTecAD")
    paths = sorted(root.glob("*/ground_truth/*/*_mask.png"))[:12]
    if not paths:
        pytest.skip(f"no masks under {root}")
    for path in paths:
        gt = np.asarray(Image.open(path).convert("L")) > 127
        np.testing.assert_array_equal(resize_mask_nearest(gt, 400), _cv_nearest(gt, 400), err_msg=str(path))
        # maps like stage 2's: a box score times the mask, and a smooth ramp across the image
        h, w = gt.shape
        ramp = np.outer(np.linspace(0, 1, h), np.linspace(1, 0, w)).astype(np.float32)
        for amap in (gt.astype(np.float32) * np.float32(0.37), ramp * gt + 0.1 * ramp):
            amap = amap.astype(np.float32)
            np.testing.assert_allclose(resize_map_cubic(amap, 400), _cv_cubic(amap, 400), atol=1e-4, rtol=0, err_msg=str(path))


def test_paper_protocol_stores_opencv_resized_maps(tmp_path: Path):
    root = make_mvtec(tmp_path / "data", ("alpha",), size=(410, 430))
    out = tmp_path / "out"
    write_profiles(out / "profiles", ["alpha"])
    evaluate_dataset("mvtec", root, out, fake_pipeline(), EvalSettings(), report=False)
    from iapas.evaluation.core import load_map_file

    line = json.loads((out / "predictions" / "alpha.jsonl").read_text().splitlines()[0])
    stored, stored_mask = load_map_file(out / line["map"])
    image = np.asarray(Image.open(line["image"]).convert("RGB"))
    gray = image.max(axis=2)
    ys, xs = np.nonzero(gray > 120)
    native = np.zeros(gray.shape, np.float64)  # the fused map, normalised per image (the box is its maximum: 1)
    native[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1] = 1.0
    assert stored.dtype == np.float64 and line["image_normalized"] is True
    assert np.array_equal(stored, cv2.resize(native, (400, 400), interpolation=cv2.INTER_CUBIC))
    gt = np.asarray(Image.open(line["mask"])) > 128
    np.testing.assert_array_equal(stored_mask, _cv_nearest(gt, 400))
    assert json.loads((out / "run.json").read_text())["signature"]["resize"] == "opencv"


# --- precision default (item 6) ---------------------------------------------------------------------


def test_evaluate_and_bench_default_to_float32_and_say_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from typer.testing import CliRunner

    import iapas.cli.bench as cli_bench
    import iapas.cli.evaluate as cli_evaluate
    from iapas.cli import app

    seen: list[tuple[str, str | None]] = []

    def fake_pipeline_loader(detector, segmenter, device, dtype, *rest):
        raise cli_evaluate.fail(f"stop dtype={dtype}")

    import iapas.workflows.evaluate as workflow

    real_stage1 = workflow.stage1_options

    def spy_stage1(mode, **values):
        seen.append(("stage1", values.get("dtype")))
        return real_stage1(mode, **values)

    # evaluate builds its stage-2 settings first (the early resume check needs them), bench loads at once
    monkeypatch.setattr(cli_evaluate, "_config", fake_pipeline_loader)
    monkeypatch.setattr(cli_bench, "_pipeline", fake_pipeline_loader)
    monkeypatch.setattr(workflow, "stage1_options", spy_stage1)  # both commands' set-up (workflows.evaluate.prepare)
    root = make_mvtec(tmp_path / "data", ("alpha",), n_good=1, n_bad=1)
    common = ["--tagger", "manual", "--tags", "widget", "--llm", "knowledge", "--quiet"]
    evaluate = ["evaluate", "--dataset", "mvtec", "--root", str(root), "--out", str(tmp_path / "e"), *common]
    bench = ["bench", "--root-dir", str(tmp_path), "--out", str(tmp_path / "b"), *common]
    for args in (evaluate, bench):
        result = CliRunner().invoke(app, args)
        assert "stop dtype=float32" in result.output, result.output
        assert seen[-1] == ("stage1", "auto")  # stage 1's LLM keeps auto unless --dtype is given
        given = CliRunner().invoke(app, [*args, "--dtype", "bfloat16"])
        assert "stop dtype=bfloat16" in given.output and seen[-1] == ("stage1", "bfloat16")
        help_text = " ".join(CliRunner().invoke(app, [args[0], "--help"], env={"COLUMNS": "80"}).output.split())
        assert "float32 (the default: the reference code's)" in help_text
    # segment and the Python API keep auto
    from iapas.pipeline.stage2 import PipelineConfig

    assert PipelineConfig().dtype == "auto"


# --- defective images without a mask (issue 8 item 3) ----------------------------------------------


def test_defective_images_without_a_mask_are_left_out_of_the_pixel_metrics(tmp_path: Path):
    root = make_mvtec(tmp_path / "data", ("alpha",))
    (root / "alpha" / "ground_truth" / "crack" / "002_mask.png").unlink()  # crack/002 has no mask now
    out = tmp_path / "out"
    write_profiles(out / "profiles", ["alpha"])
    result = evaluate_dataset("mvtec", root, out, fake_pipeline(), EvalSettings(protocol="full"))
    m = result.categories[0].metrics
    assert m is not None and m.n_pixel_excluded == 1 and m.n_images == 6 and m.n_anomalous_images == 3

    # the same metrics by hand: pixel metrics over the 5 images with ground truth, image metrics over all 6
    from iapas.evaluation.core import evaluated_map, load_map_file
    from iapas.engine.runner import ResultsLog

    records = ResultsLog(out / "predictions" / "alpha.jsonl").read()
    ordered = [records[k] for k in result.categories[0].keys]
    assert [r["key"] for r in ordered if r["mask"] is None and r["label"] == 1] == ["crack/002"]
    stack = np.stack([evaluated_map(load_map_file(out / r["map"])[0], r, True) for r in ordered])
    masks = np.stack([load_map_file(out / r["map"])[1] for r in ordered])
    lo, hi = float(stack.min()), float(stack.max())
    norm = ((stack.astype(np.float64) - lo) / (hi - lo)).astype(np.float32)
    keep = np.array([r["key"] != "crack/002" for r in ordered])
    pixel = category_metrics(norm[keep], masks[keep])
    labels = np.array([r["label"] for r in ordered])
    image = category_metrics(norm, masks, image_scores=np.array([r["map_max"] for r in ordered]), image_labels=labels)
    assert m.pixel_ap == pixel.pixel_ap and m.pixel_aupro == pixel.pixel_aupro and m.n_pixels == 5 * 400 * 400
    assert m.image_ap == image.image_ap and m.image_auroc == image.image_auroc
    # counted in the tables and said in the report
    md = (out / "metrics.md").read_text()
    assert "| no mask |" in md and "1 defective test image(s) have no mask: left out of the pixel metrics" in md
    assert "without_mask" in (out / "metrics.csv").read_text().splitlines()[0]
    assert "left out of the pixel metrics" in (out / "report.html").read_text()


def test_category_metrics_pixel_images_by_hand():
    """Image 1: pixels .9 (defect) and .1; image 2 (anomalous, no mask): .95 and 0. Leaving image 2 out of
    the pixel metrics: AP 1, AUROC 1. Taking its pixels as normal (the old behaviour): .95 outranks the
    defect, AP 1/2, AUROC 2/3. The image metrics see both images either way."""
    maps = np.array([[[0.9, 0.1]], [[0.95, 0.0]]], np.float32)
    masks = np.array([[[1, 0]], [[0, 0]]], bool)
    labels = np.array([1, 1])
    m = category_metrics(maps, masks, image_labels=labels, pixel_images=np.array([True, False]))
    assert (m.n_pixels, m.n_anomalous_pixels, m.n_pixel_excluded, m.n_images, m.n_anomalous_images) == (2, 1, 1, 2, 2)
    assert (m.pixel_ap, m.pixel_auroc, m.pixel_f1_max) == (1.0, 1.0, 1.0)
    old = category_metrics(maps, masks, image_labels=labels)
    assert old.pixel_ap == pytest.approx(1 / 2) and old.pixel_auroc == pytest.approx(2 / 3)
    assert m.image_ap == old.image_ap == 1.0  # no normal image: AP 1 (documented)
    none = category_metrics(maps, masks, image_labels=labels, pixel_images=np.array([False, False]))
    assert np.isnan(none.pixel_ap) and none.n_pixels == 0 and none.image_ap == 1.0


# --- one test set for every bench column (issue 8 item 14) ----------------------------------------


def test_bench_scores_every_reference_count_on_the_same_test_images(tmp_path: Path):
    """MTD has no training split: its references come from the normal test images, so 1 reference
    would leave more normal images to test than 10 (here capped at 3 of the 6) did before."""
    from iapas.evaluation.bench import run_bench

    datasets = tmp_path / "datasets"
    make_mtd(datasets / "MTD", n_free=6, n_defect=3)
    stage1 = Stage1Options(tagger="manual", tags=[OBJECT], llm="knowledge")
    out = tmp_path / "bench"
    bench = run_bench(datasets, out, fake_pipeline(), EvalSettings(protocol="full"), stage1=stage1,
                      ablations=["references"], report=False)
    default, one = bench.results["mtd"]["default"], bench.results["mtd"]["references-1"]
    assert default.categories[0].n_references == 3 and one.categories[0].n_references == 1
    assert default.categories[0].keys == one.categories[0].keys and one.categories[0].n_test == 6  # 3 + 3
    assert bench.test_pool_references == 10
    assert any("left out: the test set is the one left after drawing 10 references" in n for n in one.categories[0].notes)
    md = (out / "bench.md").read_text()
    assert "Every column of a dataset is scored on the same test images" in md
    # without the shared pool, 1 reference would have left 5 normal images in the test set
    alone = evaluate_dataset("mtd", datasets / "MTD", tmp_path / "alone", fake_pipeline(),
                             EvalSettings(protocol="full", n_references=1), stage1=stage1, report=False)
    assert alone.categories[0].n_test == 8


# --- prompt transfer ------------------------------------------------------------------------------


def test_prompt_transfer_matrix_with_the_fake_pipeline(tmp_path: Path):
    from iapas.evaluation.bench import run_bench
    from iapas.product.profile import Profile

    datasets = tmp_path / "datasets"
    make_mvtec(datasets / "MVTecAD", ("alpha", "beta", "gamma"))
    out = tmp_path / "bench"
    write_profiles(out / "mvtec" / "profiles", ["alpha", "beta"])
    # gamma's profile names an object the detector never finds: no object box, so no size filter
    Profile.from_prompts("gamma", "gizmo", ["scratch"]).save(out / "mvtec" / "profiles" / "gamma.yaml")
    bench = run_bench(datasets, out, fake_pipeline(), EvalSettings(protocol="full"), ablations=["prompt-transfer"], report=False)
    matrix = bench.transfer_matrix("mvtec")
    assert matrix is not None and matrix["categories"] == ["alpha", "beta", "gamma"]
    default = {c.name: c.metrics for c in bench.results["mvtec"]["default"].categories}
    for target in matrix["categories"]:
        assert matrix["own"][target]["pixel_ap"] == default[target].pixel_ap
        assert matrix["matrix"][target][target] is None
        for source in matrix["sources"]:
            if source != target:
                run = bench.transfer["mvtec"][source]
                cat = next(c for c in run.categories if c.name == target)
                assert matrix["matrix"][target][source]["pixel_ap"] == cat.metrics.pixel_ap
                copy = out / "mvtec" / "profiles-transfer" / source / f"{target}.yaml"
                assert copy.read_bytes() == (out / "mvtec" / "profiles" / f"{source}.yaml").read_bytes()
    assert Profile.load(out / "mvtec" / "profiles-transfer" / "gamma" / "alpha.yaml").object_tag == "gizmo"
    cells = [v["pixel_ap"] for row in matrix["matrix"].values() for v in row.values() if v is not None]
    assert len(cells) == 6
    row = next(r for r in bench.rows() if r["name"] == "mvtec")
    assert row["prompt-transfer"]["pixel_ap"] == pytest.approx(sum(cells) / 6)
    md = (out / "bench.md").read_text()
    assert "## Prompt transfer: MVTec AD" in md and "| segmented \\ profile of | own profile | alpha | beta | gamma |" in md
    assert "| alpha | " + f"{100 * default['alpha'].pixel_ap:.2f} / {100 * default['alpha'].pixel_f1_max:.2f} | own |" in md
    assert json.loads((out / "bench.json").read_text())["prompt_transfer"]["mvtec"]["sources"] == ["alpha", "beta", "gamma"]
    html = (out / "bench.html").read_text()
    assert html.count("<table>") == 2 and "Prompt transfer: MVTec AD" in html


def test_cli_bench_prompt_transfer_with_tiny_models(tmp_path: Path, tiny_models: dict[str, Path]):
    from typer.testing import CliRunner

    from iapas.cli import app

    datasets = tmp_path / "datasets"
    make_mvtec(datasets / "MVTecAD", ("carpet", "bottle"), n_good=1, n_bad=1)
    out = tmp_path / "bench"
    args = [
        "bench", "--root-dir", str(datasets), "--out", str(out), "--ablation", "prompt-transfer", "--protocol", "full",
        "--detector", str(tiny_models["grounding-dino"]), "--segmenter", str(tiny_models["sam"]), "--device", "cpu",
        "--tagger", "manual", "--tags", "widget", "--llm", "knowledge", "--no-report", "--quiet",
    ]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    data = json.loads((out / "bench.json").read_text())
    matrix = data["prompt_transfer"]["mvtec"]
    assert matrix["categories"] == ["carpet", "bottle"] and set(matrix["matrix"]["carpet"]) == {"carpet", "bottle"}
    assert matrix["matrix"]["carpet"]["bottle"] is not None and matrix["matrix"]["bottle"]["carpet"] is not None
    assert (out / "mvtec" / "prompt-transfer" / "from-carpet" / "metrics.json").is_file()
    assert "## Prompt transfer: MVTec AD" in (out / "bench.md").read_text()
