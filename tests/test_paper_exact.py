"""``--protocol paper`` is the reference code's arithmetic to the last bit (issue 19, part 1).

The oracles are OpenCV (``cv2.resize``) and scikit-learn (``average_precision_score``), and the
reference's chain written out plainly here (its ``normalize``, ``process_specify_resolution``,
``calculate_max_f1``): never iapas's own code. Every comparison is ``==``.
"""

from __future__ import annotations

import numpy as np
import pytest

from iapas.evaluation.cvresize import resize_map_cubic
from iapas.metrics import average_precision, f1_max_at_thresholds
from iapas.models.base import Detector

cv2 = pytest.importorskip("cv2")
sk = pytest.importorskip("sklearn.metrics")

# real map shapes (H, W): MTD's 103..632 x 222..403, MVTec AD's 700/900/1000, KSDD1's 500x1257,
# and corner cases (a single row or column, the evaluation size itself)
SHAPES = [(103, 222), (115, 349), (196, 403), (228, 247), (316, 335), (400, 286), (632, 362), (225, 222),
          (700, 700), (900, 900), (1000, 1000), (1024, 1024), (500, 1257), (1257, 500), (400, 400), (1, 5), (3, 2)]


def plateau_map(shape: tuple[int, int], rng: np.random.Generator, n: int = 4) -> np.ndarray:
    """A fused map as stage 2 makes them: a float64 sum of confidence-weighted rectangles and
    discs (float32 box scores), so the map is plateaus with exact ties."""
    h, w = shape
    out = np.zeros(shape, dtype=np.float64)
    yy, xx = np.mgrid[0:h, 0:w]
    for k in range(n):
        score = float(np.float32(rng.uniform(0.1, 0.6)))
        y0, x0 = int(rng.integers(0, h)), int(rng.integers(0, w))
        y1, x1 = min(h, y0 + 1 + int(rng.integers(0, max(1, h // 3)))), min(w, x0 + 1 + int(rng.integers(0, max(1, w // 3))))
        if k % 2:
            region = (yy - (y0 + y1) / 2) ** 2 / max(1, (y1 - y0)) ** 2 + (xx - (x0 + x1) / 2) ** 2 / max(1, (x1 - x0)) ** 2 < 0.25
        else:
            region = np.zeros(shape, dtype=bool)
            region[y0:y1, x0:x1] = True
        out[region] += score
    return out


@pytest.mark.parametrize("shape", SHAPES)
def test_cubic_resize_of_a_float64_map_is_bit_identical_to_opencv(shape: tuple[int, int]) -> None:
    rng = np.random.default_rng(shape[0] * 7919 + shape[1])
    for amap in (plateau_map(shape, rng), rng.random(shape)):
        ours = resize_map_cubic(amap, 400)
        assert ours.dtype == np.float64
        assert np.array_equal(ours, cv2.resize(amap, (400, 400), interpolation=cv2.INTER_CUBIC))


def test_average_precision_is_sklearns_float_on_ties_and_plateaus() -> None:
    rng = np.random.default_rng(19)
    for trial in range(60):
        n = int(rng.integers(2, 30000))
        scores = np.round(rng.random(n) * rng.choice([2, 9, 500, 1e9])) / 7.0  # few to no ties
        if trial % 3 == 0:
            scores = scores.astype(np.float32)
        labels = rng.random(n) < rng.uniform(0.01, 0.9)
        if not labels.any() or labels.all():
            continue
        assert average_precision(scores, labels) == sk.average_precision_score(labels, scores), trial


def reference_max_f1(gt: np.ndarray, pred: np.ndarray) -> float:
    """The reference's calculate_max_f1 (utils/function.py), as it is written."""
    best_f1 = 0
    for thres in np.linspace(0, 1, 100):
        pred_binary = (pred >= thres).astype(int)
        tp = (gt * pred_binary).sum()
        fp = pred_binary.sum() - tp
        fn = gt.sum() - tp
        precision = tp / (tp + fp) if (tp + fp) > 0 else 0
        recall = tp / (tp + fn) if (tp + fn) > 0 else 0
        f1 = (2 * precision * recall / (precision + recall)) if (precision + recall) > 0 else 0
        if f1 > best_f1:
            best_f1 = f1
    return float(best_f1)


def test_100_threshold_f1_max_is_the_reference_loop_exactly() -> None:
    rng = np.random.default_rng(5)
    for trial in range(40):
        n = int(rng.integers(5, 5000))
        pred = np.round(rng.random(n) * rng.choice([3, 50, 1e6])) / rng.choice([3, 50, 1e6])
        pred = (pred - pred.min()) / (pred.max() - pred.min()) if pred.max() > pred.min() else np.zeros(n)
        gt = (rng.random(n) < rng.uniform(0.05, 0.7)).astype(int)
        if not gt.any():
            continue
        assert f1_max_at_thresholds(pred, gt) == reference_max_f1(gt, pred), trial


# --- the whole chain: iapas evaluate vs the reference's chain on its saved full-resolution maps ----------


def reference_normalize(scores):  # the reference's utils/function.py normalize, as written
    max_value = np.max(scores)
    min_value = np.min(scores)
    if (min_value == 0 and max_value == 0) or (min_value == max_value):
        return np.zeros_like(scores)
    return (scores - min_value) / (max_value - min_value)


def reference_metrics(out, image_norm: bool, category: str = "magnetic_tile") -> dict[str, float]:
    """The reference's test_zsas.py evaluation, written plainly, from ``full_maps/`` and the mask files."""
    import json

    lines = [json.loads(line) for line in (out / "predictions" / f"{category}.jsonl").read_text().splitlines()]
    lines = [rec for rec in lines if rec["status"] == "ok"]
    test_scores, gt_mask_list, gt_list = [], [], []
    for rec in lines:
        score = np.load(out / rec["full_map"])["map"]
        assert score.dtype == np.float64
        if rec["mask"] is None:
            gt_image = np.zeros(score.shape, dtype=np.uint8)
        else:
            gt_image = cv2.imread(rec["mask"], cv2.IMREAD_GRAYSCALE)
        _, gt_binary = cv2.threshold(gt_image, thresh=128, maxval=255, type=cv2.THRESH_BINARY)
        test_scores.append(reference_normalize(score) if image_norm else score)
        gt_mask_list.append((gt_binary == 255).astype(np.uint8))
        gt_list.append(rec["label"])
    # process_specify_resolution
    test_scores = [cv2.resize(s, (400, 400), interpolation=cv2.INTER_CUBIC) for s in test_scores]
    gt_mask_list = [cv2.resize(g, (400, 400), interpolation=cv2.INTER_NEAREST) for g in gt_mask_list]
    np_scores = np.array(reference_normalize(test_scores))
    img_scores = np_scores.reshape(np_scores.shape[0], -1).max(axis=1)
    gt_list = np.asarray(gt_list, dtype=int)
    gt_masks = np.asarray(gt_mask_list, dtype=int)
    return {
        "image_ap": sk.average_precision_score(gt_list, img_scores),
        "image_f1_max_100": reference_max_f1(gt_list, img_scores),
        "pixel_ap": sk.average_precision_score(gt_masks.flatten(), np_scores.flatten()),
        "pixel_f1_max_100": reference_max_f1(gt_masks.flatten(), np_scores.flatten()),
    }


class PlateauDetector(Detector):
    """0 to 4 boxes per image with float32 scores, drawn from the image's bytes (deterministic)."""

    name = "plateau"

    def detect(self, images, caption, *, box_threshold, text_threshold):
        import zlib

        from iapas.core.types import Detections

        out = []
        for im in images:
            rng = np.random.default_rng(zlib.crc32(np.ascontiguousarray(im).tobytes()))
            h, w = im.shape[:2]
            n = int(rng.integers(0, 5))
            x0, y0 = rng.uniform(0, w * 0.8, n), rng.uniform(0, h * 0.8, n)
            boxes = np.stack([x0, y0, x0 + rng.uniform(4, w / 2, n), y0 + rng.uniform(4, h / 2, n)], axis=1)
            scores = rng.choice([0.25, 0.4, 0.55], n) if n and rng.random() < 0.3 else rng.uniform(0.1, 0.6, n)
            out.append(Detections(boxes.astype(np.float32).reshape(-1, 4), scores.astype(np.float32), ("defect",) * n))
        return out


class EllipseSegmenter:
    """Masks: the ellipse inscribed in each box (every other box: the box itself)."""

    name = "ellipse"

    def segment(self, images, boxes):
        out = []
        for image, b in zip(images, boxes):
            h, w = image.shape[:2]
            yy, xx = np.mgrid[0:h, 0:w]
            masks = np.zeros((len(b), h, w), bool)
            for i, (x0, y0, x1, y1) in enumerate(np.asarray(b, np.float64)):
                if i % 2:
                    masks[i, int(y0) : int(y1), int(x0) : int(x1)] = True
                else:
                    cy, cx, ry, rx = (y0 + y1) / 2, (x0 + x1) / 2, max(1.0, (y1 - y0) / 2), max(1.0, (x1 - x0) / 2)
                    masks[i] = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
            out.append(masks)
        return out


@pytest.mark.parametrize(("dataset", "folder", "category", "image_norm"), [
    ("mtd", "MTD", "magnetic_tile", True), ("mtd", "MTD", "magnetic_tile", False), ("mvtec", "MVTecAD", "bottle", True),
])
def test_evaluate_paper_equals_the_reference_chain_on_real_masks(tmp_path, dataset, folder, category, image_norm) -> None:
    """Real MTD masks (anti-aliased: the > 128 threshold matters) and shapes, and MVTec AD's
    900x900 bottles (the cubic shrink), plateau maps with overlaps and exact ties, some images
    without a box: pixel AP, image AP and both 100-threshold F1-max of ``evaluate --protocol
    paper`` equal the reference chain's exactly."""
    import json

    from tests.conftest import shared_data

    from iapas.evaluation import EvalSettings, evaluate_dataset
    from iapas.pipeline.stage2 import Pipeline, PipelineConfig

    out = tmp_path / "out"
    settings = EvalSettings(protocol="paper", mode="base", n_references=0, limit=16, image_norm=image_norm, save_full_maps=True)
    pipeline = Pipeline(PlateauDetector(), EllipseSegmenter(), PipelineConfig(mode="base"))
    evaluate_dataset(dataset, shared_data(folder), out, pipeline, settings, categories=[category], report=False)
    ours = json.loads((out / "metrics.json").read_text())["categories"][category]["metrics"]
    ref = reference_metrics(out, image_norm, category)
    assert 0 < ref["pixel_ap"] < 1 and 0 < ref["image_ap"] < 1
    for name, value in ref.items():
        assert ours[name] == value, name


def test_cli_evaluate_paper_with_tiny_models_is_reproduced_from_full_maps(tmp_path, tiny_models) -> None:
    """The done-when: ``iapas evaluate --protocol paper --save-full-maps`` on MTD with the tiny
    models writes metrics that the reference's chain on ``full_maps/`` reproduces exactly."""
    import json

    from typer.testing import CliRunner

    from iapas.cli import app
    from tests.conftest import shared_data

    out = tmp_path / "run"
    result = CliRunner().invoke(app, [
        "evaluate", "--dataset", "mtd", "--root", str(shared_data("MTD")), "--out", str(out), "--mode", "base",
        "--protocol", "paper", "--limit", "6", "--references", "2", "--calibration-images", "0", "--save-full-maps",
        "--detector", str(tiny_models["grounding-dino"]), "--segmenter", str(tiny_models["sam"]), "--device", "cpu",
        "--no-report", "--quiet",
    ])
    assert result.exit_code == 0, result.output
    ours = json.loads((out / "metrics.json").read_text())["categories"]["magnetic_tile"]["metrics"]
    assert len(list((out / "full_maps" / "magnetic_tile").rglob("*.npz"))) == 6
    for name, value in reference_metrics(out, image_norm=False).items():  # mode base: the reference skips it
        assert ours[name] == value, name
