"""Evaluation: protocol functions, resumable predictions, metrics from stored maps, conflicts, CLI.

Most tests use a generated MVTec-layout dataset and a fake pipeline whose maps are known:
:class:`BlobDetector` boxes the bright pixels of an image (score = brightest value / 255) and
:class:`BoxSegmenter` turns each box into its mask, so the anomaly map is a known rectangle.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from iapas.data import get_dataset
from iapas.evaluation import (
    EvalSettings,
    Stage1Options,
    evaluate_category,
    evaluate_dataset,
    limit_samples,
    normalize_stack,
    pr_curve,
    resize_map,
    resize_mask,
    wrong_object_tags,
)
from iapas.evaluation.core import RunConflictError, load_map_file, metrics_from_predictions
from iapas.metrics import category_metrics
from iapas.models.base import Detector
from iapas.pipeline.stage2 import Pipeline, PipelineConfig
from iapas.product.profile import Profile
from iapas.core.types import Detections

OBJECT = "widget"


# --- fakes ---------------------------------------------------------------------------------------


class BlobDetector(Detector):
    """The object tag: a box 2 px inside the image borders (score 0.9). Any other caption: the
    bounding box of the pixels brighter than 120 (score = brightest / 255, phrase 'defect')."""

    name = "blob"

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay

    def detect(self, images: Sequence[np.ndarray], caption: str, *, box_threshold: float, text_threshold: float) -> list[Detections]:
        out = []
        for im in images:
            time.sleep(self.delay)
            h, w = im.shape[:2]
            if caption.strip(" .") == OBJECT:
                out.append(Detections(np.array([[2, 2, w - 2, h - 2]], np.float32), np.array([0.9], np.float32), (OBJECT,)))
                continue
            gray = im.max(axis=2)
            ys, xs = np.nonzero(gray > 120)
            if ys.size == 0:
                out.append(Detections.empty())
                continue
            box = np.array([[xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]], np.float32)
            out.append(Detections(box, np.array([gray.max() / 255.0], np.float32), ("defect",)))
        return out


class BoxSegmenter:
    """Masks = the boxes themselves."""

    name = "box"

    def segment(self, images: Sequence[np.ndarray], boxes: Sequence[np.ndarray]) -> list[np.ndarray]:
        out = []
        for image, b in zip(images, boxes):
            masks = np.zeros((len(b), *image.shape[:2]), bool)
            for i, (x0, y0, x1, y1) in enumerate(np.asarray(b, int)):
                masks[i, y0:y1, x0:x1] = True
            out.append(masks)
        return out


def fake_pipeline(delay: float = 0.0) -> Pipeline:
    return Pipeline(BlobDetector(delay), BoxSegmenter(), PipelineConfig())


def widget_profile(category: str) -> Profile:
    return Profile.from_prompts(category, OBJECT, ["scratch"])


# --- a generated dataset ---------------------------------------------------------------------------


def _save(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def make_mvtec(root: Path, categories: Sequence[str] = ("alpha", "beta"), n_good: int = 3, n_bad: int = 3, size: tuple[int, int] = (48, 40)) -> Path:
    """An MVTec-layout tree: train/good, test/good with a faint spot, test/crack with a bright
    rectangle and its mask. Image i of a kind has its own spot position and brightness."""
    h, w = size
    for c_index, cat in enumerate(categories):
        base = root / cat
        for i in range(2):
            _save(base / "train" / "good" / f"{i:03d}.png", np.full((h, w, 3), 60, np.uint8))
        for i in range(n_good):
            im = np.full((h, w, 3), 60, np.uint8)
            im[5 + i : 9 + i, 5:9] = 125 + 10 * i + c_index  # decoy: a faint spot, scored low
            _save(base / "test" / "good" / f"{i:03d}.png", im)
        for i in range(n_bad):
            im = np.full((h, w, 3), 60, np.uint8)
            y0, x0 = 10 + 2 * i, 12 + 3 * i
            im[y0 : y0 + 8, x0 : x0 + 10] = 200 + 10 * i
            mask = np.zeros((h, w), np.uint8)
            mask[y0 : y0 + 8, x0 : x0 + 6] = 255  # the true defect is narrower than the box
            _save(base / "test" / "crack" / f"{i:03d}.png", im)
            _save(base / "ground_truth" / "crack" / f"{i:03d}_mask.png", mask)
    return root


@pytest.fixture()
def dataset_root(tmp_path: Path) -> Path:
    return make_mvtec(tmp_path / "data")


def write_profiles(folder: Path, categories: Sequence[str]) -> Path:
    for c in categories:
        widget_profile(c).save(folder / f"{c}.yaml")
    return folder


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# --- protocol functions ----------------------------------------------------------------------------


def test_resize_mask_nearest_and_map_bicubic():
    mask = np.array([[1, 0], [0, 1]], bool)
    np.testing.assert_array_equal(
        resize_mask(mask, 4), np.array([[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 1], [0, 0, 1, 1]], bool)
    )
    # a constant map stays exactly constant, zeros stay zeros
    assert np.all(resize_map(np.full((7, 9), 0.3, np.float32), 400) == np.float32(0.3))
    assert not resize_map(np.zeros((50, 30), np.float32), 400).any()
    # a step: bicubic overshoots on both sides of the edge (nearest or bilinear would not)
    step = np.zeros((10, 10), np.float32)
    step[:, 5:] = 1.0
    up = resize_map(step, 40)
    assert up.shape == (40, 40) and up.dtype == np.float32
    assert up.min() < 0 and up.max() > 1
    np.testing.assert_array_equal(up, np.asarray(Image.fromarray(step).resize((40, 40), Image.BICUBIC)))


def test_normalize_stack_is_over_the_whole_stack():
    stack = np.array([[[0.0, 0.5]], [[0.25, -0.5]]], np.float32)  # min -0.5, max 0.5
    norm, lo, hi = normalize_stack(stack)
    assert (lo, hi) == (-0.5, 0.5)
    np.testing.assert_array_equal(norm, np.array([[[0.5, 1.0]], [[0.75, 0.0]]], np.float32))  # not per image
    const, lo, hi = normalize_stack(np.full((2, 1, 2), 3.0, np.float32))
    assert (lo, hi) == (3.0, 3.0) and not const.any()


def test_pr_curve_counts_by_hand():
    maps = np.array([[[1.0, 0.5, 0.0, 0.5]]], np.float32)
    masks = np.array([[[True, True, False, False]]])
    thr, precision, recall = pr_curve(maps, masks, 3)  # thresholds 0, 0.5, 1
    np.testing.assert_allclose(thr, [0, 0.5, 1])
    np.testing.assert_allclose(recall, [1.0, 1.0, 0.5])
    np.testing.assert_allclose(precision, [0.5, 2 / 3, 1.0])


def test_limit_samples_is_seeded_ordered_and_nested():
    items = list(range(20))
    odd = lambda i: i % 2  # noqa: E731
    five = limit_samples(items, 5, seed=3, label=odd)
    ten = limit_samples(items, 10, seed=3, label=odd)
    assert len(five) == 5 and five == sorted(five) and set(five) <= set(ten)
    assert limit_samples(items, 5, seed=3, label=odd) == five and limit_samples(items, None) == items


def test_limit_samples_draws_both_classes():
    """MTD-like: 2 anomalous among 40 (a uniform draw of 3 misses both with probability ~0.85)."""
    from iapas.data import Sample

    samples = [Sample(Path(f"{i:02d}.png"), int(i in (7, 31)), None, "x", "c") for i in range(40)]
    for seed in range(20):
        for n in range(2, 8):
            drawn = limit_samples(samples, n, seed)
            labels = [s.label for s in drawn]
            assert len(drawn) == n and labels.count(1) == min(2, (n + 1) // 2) and 0 in labels
            assert drawn == sorted(drawn, key=lambda s: s.path)  # test order kept
            assert set(drawn) <= set(limit_samples(samples, n + 1, seed))  # nested
        assert [s.label for s in limit_samples(samples, 1, seed)] == [1]  # anomalous first
    # the anomalous come first, then the normals go on once they run out: 2 anomalous + 8 normals
    assert sum(s.label for s in limit_samples(samples, 10, 0)) == 2
    # one class only: just a seeded draw of it
    normals = [s for s in samples if not s.label]
    assert len(limit_samples(normals, 3, 0)) == 3


def test_wrong_object_tags_rotate_and_fall_back():
    assert wrong_object_tags({"carpet": "carpet", "grid": "grid", "wood": "wood"}) == {
        "carpet": "grid", "grid": "wood", "wood": "carpet"
    }
    assert wrong_object_tags({"a": "tile", "b": "tile", "c": "wood"}) == {"a": "wood", "b": "wood", "c": "tile"}
    assert wrong_object_tags({"magnetic_tile": "bottle"}) == {"magnetic_tile": "banana"}


# --- one category with known maps ------------------------------------------------------------------


def expected_native_map(image: np.ndarray) -> np.ndarray:
    """What the fake pipeline must produce: the brightest value / 255 inside the bright box."""
    gray = image.max(axis=2)
    ys, xs = np.nonzero(gray > 120)
    amap = np.zeros(gray.shape, np.float32)
    if ys.size:
        amap[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1] = np.float32(gray.max() / 255.0)
    return amap


def test_evaluate_category_applies_the_protocol_and_metrics_match_a_direct_computation(dataset_root: Path, tmp_path: Path):
    category = get_dataset("mvtec", dataset_root).load("alpha", protocol="full")
    out = tmp_path / "out"
    result = evaluate_category(fake_pipeline(), category, widget_profile("alpha"), out, EvalSettings(protocol="full"))
    assert result.n_test == result.n_done == 6 and not result.failures and result.error is None

    # recompute everything from the image files, independently of the stored predictions
    maps, per_image, masks, labels, scores = [], [], [], [], []
    for sample in category.test:
        image = np.asarray(Image.open(sample.path).convert("RGB"))
        gt = np.asarray(Image.open(sample.mask_path)) > 127 if sample.mask_path else np.zeros(image.shape[:2], bool)
        native = expected_native_map(image)
        expected_map = np.asarray(Image.fromarray(native).resize((400, 400), Image.BICUBIC))
        # the reference code's order: normalise the raw map by its own range, then resize
        span = float(native.max() - native.min())
        unit = ((native - native.min()) / span).astype(np.float32) if span > 0 else np.zeros_like(native)
        per_image.append(np.asarray(Image.fromarray(unit).resize((400, 400), Image.BICUBIC)))
        expected_mask = np.asarray(Image.fromarray(gt.astype(np.uint8) * 255).resize((400, 400), Image.NEAREST)) > 127
        maps.append(expected_map)
        masks.append(expected_mask)
        labels.append(sample.label)
        scores.append(float(native.max()))  # image score: the raw full-resolution map's max
    stack = np.stack(maps)
    lo, hi = float(stack.min()), float(stack.max())
    assert lo < 0 < hi  # bicubic overshoot below zero next to the boxes
    assert max(float(m.max()) for m in maps) > max(scores)  # ... and above the raw maximum

    # default (the paper's protocol): per-image min-max, then the stack min-max
    unit_stack = np.stack(per_image)
    ulo, uhi = float(unit_stack.min()), float(unit_stack.max())
    assert ulo < 0 and uhi > 1
    assert result.score_range == pytest.approx((ulo, uhi), abs=1e-6)
    normalised = ((unit_stack.astype(np.float64) - ulo) / (uhi - ulo)).astype(np.float32)
    direct = category_metrics(normalised, np.stack(masks), image_scores=np.array(scores), image_labels=np.array(labels))
    assert result.metrics is not None
    # equal up to float32 rounding of the edge pixels (normalising after resizing, from the stored raw
    # maps, rounds differently by an ulp, which can make or break exact ties between pixels)
    assert asdict(result.metrics) == pytest.approx(asdict(direct), abs=1e-4)
    assert 0 < direct.pixel_ap < 1 and direct.image_auroc == 1.0

    # without it (--no-image-norm): the stack min-max of the raw resized maps only; exact
    raw_normalised = ((stack.astype(np.float64) - lo) / (hi - lo)).astype(np.float32)
    direct_raw = category_metrics(raw_normalised, np.stack(masks), image_scores=np.array(scores), image_labels=np.array(labels))
    assert direct_raw.pixel_ap != pytest.approx(direct.pixel_ap)  # the per-image normalisation matters

    # the stored 400x400 maps and masks are the resized raw ones (float32, lossless)
    records = read_jsonl(out / "predictions" / "alpha.jsonl")
    assert [r["key"] for r in records] == ["crack/000", "crack/001", "crack/002", "good/000", "good/001", "good/002"]
    order = {s.path.relative_to(dataset_root / "alpha" / "test").with_suffix("").as_posix(): i for i, s in enumerate(category.test)}
    for rec in records:
        stored_map, stored_mask = load_map_file(out / rec["map"])
        i = order[rec["key"]]
        assert stored_map.dtype == np.float32 and stored_map.shape == (400, 400)
        np.testing.assert_array_equal(stored_map, maps[i])
        np.testing.assert_array_equal(stored_mask, masks[i])
        assert rec["label"] == labels[i] and rec["defect_type"] in ("crack", "good")
        assert rec["score"] == pytest.approx(float(maps[i].max()))
        assert (rec["map_min"], rec["map_max"]) == (0.0, scores[i])  # the raw range, at full precision
        assert rec["status"] == "ok" and len(rec["kept"]) == 1 and rec["dropped"] == []
    first = records[0]  # crack/000: box 12..22 x 10..18 on the 40x48 image, score 200/255
    assert first["kept"][0]["box"] == [12.0, 10.0, 22.0, 18.0]
    assert first["kept"][0]["score"] == pytest.approx(200 / 255, abs=1e-5)
    assert first["image_score"] == pytest.approx(200 / 255, abs=1e-6)

    # and metrics_from_predictions gives the same from the files alone
    again, rng, curve = metrics_from_predictions(out, records, image_score="raw")
    assert again == result.metrics and rng == result.score_range
    assert curve["recall"][0] == 1.0 and len(curve["thresholds"]) == 101
    raw, rng_raw, _ = metrics_from_predictions(out, records, image_norm=False, image_score="raw")
    assert raw == direct_raw and rng_raw == (lo, hi)  # every field identical


def test_per_image_normalisation_and_raw_image_scores_by_hand(tmp_path: Path):
    """Three 2x2 maps with hand-computed metrics (raw range in the records, as evaluate stores it).

    a: anomalous, map [[.2 (defect), .1], [0, 0]]    -> per image [[1, .5], [0, 0]]
    b: anomalous, map [[.8, .4 (defect)], [0, 0]]    -> per image [[1, .5], [0, 0]]
    c: normal,    map [[.5, 0], [0, 0]]              -> per image [[1, 0], [0, 0]]
    d: normal,    all zeros (no box)                 -> stays all zeros
    Raw pixel ranking: .8 n, .5 n, .4 p, .2 p, .1 n, 0...: AP = (1/3 + 2/4) / 2 = 5/12, F1-max 2/3 (at .2).
    Per image: 1 {p, n, n}, .5 {n, p}, 0...: AP = .5 * 1/3 + .5 * 2/5 = 11/30, F1-max = max(.4, 4/7) = 4/7.
    Image scores are the raw maxima .2, .8, .5, 0 (a, b anomalous): AP = (1 + 2/3) / 2 = 5/6; from the
    normalised maps (1, 1, 1, 0) it would be 2/3. The records' 'score' field (rigged here) feeds nothing.
    """
    from iapas.evaluation.core import save_map_file

    maps = {
        "a": [[0.2, 0.1], [0, 0]],
        "b": [[0.8, 0.4], [0, 0]],
        "c": [[0.5, 0.0], [0, 0]],
        "d": [[0.0, 0.0], [0, 0]],
    }
    masks = {"a": [[1, 0], [0, 0]], "b": [[0, 1], [0, 0]], "c": [[0, 0], [0, 0]], "d": [[0, 0], [0, 0]]}
    records = []
    for key, m in maps.items():
        arr = np.array(m, np.float32)
        save_map_file(tmp_path / f"{key}.npz", arr, np.array(masks[key], bool))
        records.append({
            "key": key, "label": int(key in "ab"), "map": f"{key}.npz", "map_min": float(arr.min()), "map_max": float(arr.max()),
            "score": {"a": 0.9, "b": 0.1, "c": 0.95, "d": 0.0}[key],  # not an input: would give image AP 1/2
        })
    on, rng_on, _ = metrics_from_predictions(tmp_path, records, image_score="raw")
    assert on.pixel_ap == pytest.approx(11 / 30, abs=1e-12) and on.pixel_f1_max == pytest.approx(4 / 7, abs=1e-12)
    assert rng_on == (0.0, 1.0)
    off, rng_off, _ = metrics_from_predictions(tmp_path, records, image_norm=False, image_score="raw")
    assert off.pixel_ap == pytest.approx(5 / 12, abs=1e-12) and off.pixel_f1_max == pytest.approx(2 / 3, abs=1e-12)
    assert rng_off == (0.0, pytest.approx(0.8))
    for m in (on, off):
        assert m.image_ap == pytest.approx(5 / 6, abs=1e-12) and m.image_auroc == pytest.approx(3 / 4, abs=1e-12)
    # the reference code's image score (the default): each image's maximum of the normalised stack, so
    # 1, 1, 1, 0 with the per-image normalisation: AP (threshold 1: 2 of 3) = 2/3, AUROC (two ties) 3/4,
    # F1-max 2*2 / (2 + 1 + 2) = 4/5 (exact and over the paper's 100 thresholds alike)
    paper, _, _ = metrics_from_predictions(tmp_path, records)
    assert paper.image_ap == pytest.approx(2 / 3, abs=1e-12) and paper.image_auroc == pytest.approx(3 / 4, abs=1e-12)
    assert paper.image_f1_max == pytest.approx(4 / 5) and paper.image_f1_max_100 == pytest.approx(4 / 5)
    assert paper.pixel_ap == on.pixel_ap  # the pixel metrics do not depend on the image score
    # without the per-image normalisation the stack's maxima are .25, 1, .625, 0: the raw ranking again
    paper_off, _, _ = metrics_from_predictions(tmp_path, records, image_norm=False)
    assert paper_off.image_ap == pytest.approx(5 / 6, abs=1e-12)
    # a record without the raw range (an older run) is refused, not silently mis-normalised
    with pytest.raises(ValueError, match="raw map range"):
        metrics_from_predictions(tmp_path, [{k: v for k, v in r.items() if k != "map_min"} for r in records])


def test_image_norm_is_a_metric_time_option_said_in_every_table(dataset_root: Path, tmp_path: Path):
    out = tmp_path / "out"
    write_profiles(out / "profiles", ["alpha"])
    on = evaluate_dataset("mvtec", dataset_root, out, fake_pipeline(), EvalSettings(protocol="full"), categories=["alpha"])
    data = json.loads((out / "metrics.json").read_text())
    assert data["image_norm"] is True and data["settings"]["image_norm"] is True
    assert "each image's map min-max normalised with its raw full-resolution range" in data["protocol_description"]
    assert "each image's map min-max normalised" in (out / "metrics.md").read_text()
    html = (out / "report.html").read_text()
    assert "each image&#x27;s map min-max normalised" in html or "each image's map min-max normalised" in html
    assert "maxima of the raw full-resolution maps" in html
    # switching it off on the same folder is accepted, segments nothing, and changes the pixel metrics
    off = evaluate_dataset("mvtec", dataset_root, out, fake_pipeline(), EvalSettings(protocol="full", image_norm=False), categories=["alpha"])
    assert off.categories[0].n_new == 0
    assert off.categories[0].metrics.pixel_ap != pytest.approx(on.categories[0].metrics.pixel_ap)
    assert off.categories[0].metrics.image_ap == on.categories[0].metrics.image_ap  # raw maxima either way
    data = json.loads((out / "metrics.json").read_text())
    assert data["image_norm"] is False and "no per-image normalisation" in data["protocol_description"]
    assert "no per-image normalisation" in (out / "metrics.md").read_text()


def test_size_filter_off_keeps_big_boxes_and_base_mode_needs_no_profile(tmp_path: Path):
    root = tmp_path / "data"
    make_mvtec(root, ("alpha",), n_good=1, n_bad=1)
    big = np.full((48, 40, 3), 60, np.uint8)
    big[1:47, 1:39] = 220  # a defect over nearly the whole image: larger than 0.8 x the object
    _save(root / "alpha" / "test" / "crack" / "000.png", big)
    category = get_dataset("mvtec", root).load("alpha", protocol="full")
    on = evaluate_category(fake_pipeline(), category, widget_profile("alpha"), tmp_path / "on", EvalSettings(protocol="full"))
    off = evaluate_category(
        fake_pipeline(), category, widget_profile("alpha"), tmp_path / "off", EvalSettings(protocol="full", size_filter=False)
    )
    base = evaluate_category(fake_pipeline(), category, None, tmp_path / "base", EvalSettings(protocol="full", mode="base"))
    rec_on = read_jsonl(tmp_path / "on" / "predictions" / "alpha.jsonl")[0]
    rec_off = read_jsonl(tmp_path / "off" / "predictions" / "alpha.jsonl")[0]
    rec_base = read_jsonl(tmp_path / "base" / "predictions" / "alpha.jsonl")[0]
    assert rec_on["key"] == "crack/000" and len(rec_on["kept"]) == 0 and len(rec_on["dropped"]) == 1
    assert len(rec_off["kept"]) == 1 and rec_off["dropped"] == []
    assert len(rec_base["kept"]) == 1 and rec_base["object"]["source"] == "default"
    assert on.metrics is not None and off.metrics is not None and base.metrics is not None
    assert on.metrics.pixel_ap < off.metrics.pixel_ap


# --- bad inputs, resuming, conflicts ---------------------------------------------------------------


def test_bad_image_and_misfit_mask_are_recorded_and_left_out(dataset_root: Path, tmp_path: Path):
    bad_image = dataset_root / "alpha" / "test" / "good" / "001.png"
    bad_image.write_bytes(b"not a png at all")
    bad_mask = dataset_root / "alpha" / "ground_truth" / "crack" / "002_mask.png"
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(bad_mask)
    write_profiles(tmp_path / "out" / "profiles", ["alpha"])
    result = evaluate_dataset("mvtec", dataset_root, tmp_path / "out", fake_pipeline(), EvalSettings(protocol="full"), categories=["alpha"])
    alpha = result.categories[0]
    assert result.failed and alpha.n_test == 6 and alpha.n_done == 4
    errors = {f.key: f.error for f in alpha.failures}
    assert set(errors) == {"good/001", "crack/002"}
    assert str(bad_image) in errors["good/001"]
    assert str(bad_mask) in errors["crack/002"] and "crack/002.png" in errors["crack/002"]  # names both files
    assert alpha.metrics is not None and alpha.metrics.n_images == 4
    records = {r["key"]: r for r in read_jsonl(tmp_path / "out" / "predictions" / "alpha.jsonl")}
    assert records["good/001"]["status"] == "failed" and records["crack/002"]["status"] == "failed"
    md = (tmp_path / "out" / "metrics.md").read_text()
    assert "alpha: 2 test image(s) failed and are left out of the metrics." in md
    assert "| alpha |" in md


def test_rerun_skips_finished_images_and_refuses_other_settings(dataset_root: Path, tmp_path: Path):
    out = tmp_path / "out"
    write_profiles(out / "profiles", ["alpha", "beta"])
    first = evaluate_dataset("mvtec", dataset_root, out, fake_pipeline(), EvalSettings(protocol="full"), report=False)
    assert [c.n_new for c in first.categories] == [6, 6]
    stale = out / "maps" / "alpha" / "good" / ".000.npz.a1b2c3d4.tmp.npz"  # what a killed run was writing
    stale.write_bytes(b"half")
    second = evaluate_dataset("mvtec", dataset_root, out, fake_pipeline(), EvalSettings(protocol="full"), report=False)
    assert [c.n_new for c in second.categories] == [0, 0]
    assert not stale.exists()
    assert [c.metrics for c in second.categories] == [c.metrics for c in first.categories]

    with pytest.raises(RunConflictError, match="mode: 'iapas' -> 'base'"):
        evaluate_dataset("mvtec", dataset_root, out, fake_pipeline(), EvalSettings(protocol="full", mode="base"))
    half = fake_pipeline()
    half.detector.dtype, half.detector.device = "torch.float16", "cuda"  # half precision changes the boxes
    with pytest.raises(RunConflictError, match="dtype: None -> 'torch.float16'"):
        evaluate_dataset("mvtec", dataset_root, out, half, EvalSettings(protocol="full"))
    with pytest.raises(RunConflictError, match="size_threshold_override"):
        evaluate_dataset("mvtec", dataset_root, out, fake_pipeline(), EvalSettings(protocol="full", size_threshold=1.2))
    # a hand-edited profile changes the caption: refused for that category
    edited = Profile.from_prompts("beta", OBJECT, ["dent"])
    edited.save(out / "profiles" / "beta.yaml")
    with pytest.raises(RunConflictError, match="category beta .*caption"):
        evaluate_dataset("mvtec", dataset_root, out, fake_pipeline(), EvalSettings(protocol="full"))
    # --restart discards the predictions (not the profiles) and runs with the new settings
    third = evaluate_dataset("mvtec", dataset_root, out, fake_pipeline(), EvalSettings(protocol="full"), restart=True, report=False)
    assert [c.n_new for c in third.categories] == [6, 6]
    assert third.categories[1].profile.caption == edited.caption and third.categories[1].profile.source == "file"


def test_limit_evaluates_a_nested_subset_and_says_so(dataset_root: Path, tmp_path: Path):
    out = tmp_path / "out"
    write_profiles(out / "profiles", ["alpha"])
    small = evaluate_dataset("mvtec", dataset_root, out, fake_pipeline(), EvalSettings(protocol="full", limit=2), categories=["alpha"], report=False)
    assert small.categories[0].n_test == 2 and small.categories[0].n_new == 2
    assert any("at most 2 test images" in n for n in small.notes)
    bigger = evaluate_dataset("mvtec", dataset_root, out, fake_pipeline(), EvalSettings(protocol="full", limit=4), categories=["alpha"], report=False)
    assert bigger.categories[0].n_test == 4 and bigger.categories[0].n_new == 2  # the first two were resumed


def test_missing_profile_without_stage1_fails_that_category_only(dataset_root: Path, tmp_path: Path):
    out = tmp_path / "out"
    write_profiles(out / "profiles", ["alpha"])
    result = evaluate_dataset("mvtec", dataset_root, out, fake_pipeline(), EvalSettings(protocol="full"), report=False)
    alpha, beta = result.categories
    assert alpha.metrics is not None and beta.metrics is None
    assert "no profile" in (beta.error or "") and result.failed
    assert result.mean()["pixel_ap"] == alpha.metrics.pixel_ap


def test_stage1_builds_missing_profiles_with_the_offline_backends(dataset_root: Path, tmp_path: Path):
    out = tmp_path / "out"
    stage1 = Stage1Options(tagger="manual", tags=[OBJECT], llm="knowledge")
    result = evaluate_dataset("mvtec", dataset_root, out, fake_pipeline(), EvalSettings(protocol="full"), stage1=stage1, report=False)
    for c in result.categories:
        assert c.profile.source == "stage1" and c.profile.object_tag == OBJECT
        saved = Profile.load(out / "profiles" / f"{c.name}.yaml")
        assert saved.caption == c.profile.caption and saved.caption.endswith(f"abnormal . defect . {OBJECT} .")
        assert saved.stage1["dataset"]["category"] == c.name
    again = evaluate_dataset("mvtec", dataset_root, out, fake_pipeline(), EvalSettings(protocol="full"), stage1=stage1, report=False)
    assert [c.profile.source for c in again.categories] == ["file", "file"]


# --- kill and resume in a subprocess -----------------------------------------------------------------


def _subprocess_main(root: str, out: str, delay: str) -> None:
    """Entry point of the kill-and-resume test's child process."""
    result = evaluate_dataset(
        "mvtec", root, out, fake_pipeline(float(delay)), EvalSettings(protocol="full"), report=False,
        stage1=Stage1Options(tagger="manual", tags=[OBJECT], llm="knowledge"),
    )
    sys.exit(1 if result.failed else 0)


def _child(root: Path, out: Path, delay: float) -> subprocess.Popen:
    code = (
        f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import test_evaluation as t; "
        f"t._subprocess_main({str(root)!r}, {str(out)!r}, {str(delay)!r})"
    )
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def test_killed_run_resumes_without_duplicates_and_gives_the_same_metrics(tmp_path: Path):
    root = make_mvtec(tmp_path / "data", n_good=4, n_bad=4)
    reference = evaluate_dataset(
        "mvtec", root, tmp_path / "reference", fake_pipeline(), EvalSettings(protocol="full"), report=False,
        stage1=Stage1Options(tagger="manual", tags=[OBJECT], llm="knowledge"),
    )
    out = tmp_path / "killed"
    log = out / "predictions" / "alpha.jsonl"
    child = _child(root, out, delay=0.05)  # 2 detector calls per image: ~0.1 s per image
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and child.poll() is None:
        if log.exists() and len(log.read_text().splitlines()) >= 3:
            break
        time.sleep(0.01)
    assert child.poll() is None, "the run finished before it could be killed: " + child.stdout.read().decode()
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    child.stdout.close()
    done_before = len(read_jsonl(log))
    assert 3 <= done_before < 8 and not (out / "predictions" / "beta.jsonl").exists()
    assert not (out / "metrics.json").exists()

    rerun = _child(root, out, delay=0.0)
    output = rerun.communicate(timeout=60)[0].decode()
    assert rerun.returncode == 0, output
    for name in ("alpha", "beta"):
        keys = [r["key"] for r in read_jsonl(out / "predictions" / f"{name}.jsonl")]
        assert len(keys) == len(set(keys)) == 8  # every image once
        assert all(r["status"] == "ok" for r in read_jsonl(out / "predictions" / f"{name}.jsonl"))
    resumed = json.loads((out / "metrics.json").read_text())
    expected = json.loads((tmp_path / "reference" / "metrics.json").read_text())
    for name in ("alpha", "beta"):
        assert resumed["categories"][name]["metrics"] == expected["categories"][name]["metrics"]
    assert resumed["mean"] == expected["mean"]
    assert resumed["categories"]["alpha"]["n_new"] == 8 - done_before
    assert reference.categories[0].metrics is not None


def test_a_torn_last_line_is_redone_not_glued_to_the_next(dataset_root: Path, tmp_path: Path):
    out = tmp_path / "out"
    write_profiles(out / "profiles", ["alpha"])
    evaluate_dataset("mvtec", dataset_root, out, fake_pipeline(), EvalSettings(protocol="full"), categories=["alpha"], report=False)
    log = out / "predictions" / "alpha.jsonl"
    text = log.read_text()
    log.write_text(text[: len(text) - 40])  # a writer killed in the middle of the last line
    again = evaluate_dataset("mvtec", dataset_root, out, fake_pipeline(), EvalSettings(protocol="full"), categories=["alpha"], report=False)
    assert again.categories[0].n_new == 1 and again.categories[0].n_done == 6
    keys = [r["key"] for r in read_jsonl(log)]
    assert sorted(keys) == sorted(set(keys)) and len(keys) == 6


# --- bench ---------------------------------------------------------------------------------------------


def make_mtd(root: Path, n_free: int = 6, n_defect: int = 3) -> Path:
    """A small MTD tree: MT_Free and MT_Crack images (40x48) with masks beside them."""
    for i in range(n_free):
        _save(root / "MT_Free" / "Imgs" / f"f{i}.jpg", np.full((40, 48, 3), 60, np.uint8))
        _save(root / "MT_Free" / "Imgs" / f"f{i}.png", np.zeros((40, 48), np.uint8))
    for i in range(n_defect):
        im = np.full((40, 48, 3), 60, np.uint8)
        im[5 + 3 * i : 15 + 3 * i, 10:20] = 210
        mask = np.zeros((40, 48), np.uint8)
        mask[5 + 3 * i : 15 + 3 * i, 10:16] = 255
        _save(root / "MT_Crack" / "Imgs" / f"c{i}.png", mask)
        Image.fromarray(im).save(root / "MT_Crack" / "Imgs" / f"c{i}.bmp")
    return root


def test_find_datasets_by_folder_name_and_layout(tmp_path: Path):
    from iapas.evaluation.bench import find_datasets

    make_mvtec(tmp_path / "mvtec_anomaly_detection", ("alpha",), n_good=1, n_bad=1)
    make_mtd(tmp_path / "Magnetic-tile-defect", n_free=2, n_defect=1)
    make_mtd(tmp_path / "tiles-copy", n_free=2, n_defect=1)  # recognised by its layout, but MTD is taken
    (tmp_path / "notes").mkdir()
    assert find_datasets(tmp_path) == {"mvtec": tmp_path / "mvtec_anomaly_detection", "mtd": tmp_path / "Magnetic-tile-defect"}


def test_find_datasets_btad_download_name_and_layouts_settled_by_categories(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    from iapas.evaluation.bench import find_datasets

    # BTAD as downloaded: 'BTech_Dataset_transformed' (MVTec layout, categories 01 02 03)
    make_mvtec(tmp_path / "BTech_Dataset_transformed", ("01", "02", "03"), n_good=1, n_bad=1)
    assert find_datasets(tmp_path) == {"btad": tmp_path / "BTech_Dataset_transformed"}
    # an unknown folder name: the MVTec layout fits mvtec, mpdd, btad and dtd; the categories settle it
    (tmp_path / "BTech_Dataset_transformed").rename(tmp_path / "beans")
    make_mvtec(tmp_path / "my-copy-of-mpdd", ("tubes", "connector"), n_good=1, n_bad=1)
    assert find_datasets(tmp_path) == {"mpdd": tmp_path / "my-copy-of-mpdd", "btad": tmp_path / "beans"}
    # categories of no known dataset: left out, with a warning naming the folder
    make_mvtec(tmp_path / "mystery", ("alpha",), n_good=1, n_bad=1)
    with caplog.at_level("WARNING", logger="iapas.evaluation.bench"):
        assert "mystery" not in {p.name for p in find_datasets(tmp_path).values()}
    assert any(str(tmp_path / "mystery") in r.getMessage() and "btad" in r.getMessage() for r in caplog.records)


def test_bench_runs_datasets_and_ablations_side_by_side(tmp_path: Path):
    from iapas.evaluation.bench import run_bench

    datasets = tmp_path / "datasets"
    make_mvtec(datasets / "MVTecAD")
    make_mtd(datasets / "MTD")
    out = tmp_path / "bench"
    stage1 = Stage1Options(tagger="manual", tags=[OBJECT], llm="knowledge")
    bench = run_bench(
        datasets, out, fake_pipeline(), EvalSettings(protocol="full"), stage1=stage1,
        ablations=["prompt", "size-sweep", "wrong-tag"], sizes=[0.5, 0.8], report=False,
    )
    names = [v.name for v in bench.variants]
    assert names == ["default", "prompt-fixed", "size-0.5", "wrong-tag"]  # 0.8 is the default column
    assert set(bench.results) == {"mvtec", "mtd"} and not bench.errors
    # variants that keep the profiles share them; the wrong tags have their own
    assert sorted(p.name for p in (out / "mvtec" / "profiles").iterdir()) == ["alpha.yaml", "beta.yaml"]
    assert not (out / "mvtec" / "prompt-fixed" / "profiles").exists()
    wrong = Profile.load(out / "mvtec" / "profiles-wrong-tag" / "alpha.yaml")
    assert wrong.object_tag == "banana" and wrong.stage1["object"]["source"] == "given"
    fixed = bench.results["mvtec"]["prompt-fixed"]
    assert fixed.categories[0].profile.object_tag == OBJECT
    assert json.loads((out / "mvtec" / "prompt-fixed" / "run.json").read_text())["categories"]["alpha"]["caption"] == "defect . abnormal ."
    # with the wrong object tag the defect itself is taken for the object and dropped by the size filter
    default_ap = bench.results["mvtec"]["default"].mean()["pixel_ap"]
    assert bench.results["mvtec"]["wrong-tag"].mean()["pixel_ap"] < default_ap
    md = (out / "bench.md").read_text()
    assert "| dataset | IAP-AS AP | IAP-AS F1-max | IAP-AS F1-max (paper's 100 thr.) | IAP-AS s/image | fixed prompt AP |" in md
    default_mean = bench.results["mvtec"]["default"].mean()
    assert "| MVTec AD | " + f"{100 * default_ap:.2f} | {100 * default_mean['pixel_f1_max']:.2f} | " \
        f"{100 * default_mean['pixel_f1_max_100']:.2f} |" in md and "| MTD |" in md
    rows = (out / "bench.csv").read_text().splitlines()
    assert rows[0] == "dataset,variant,pixel_ap,pixel_f1_max,pixel_f1_max_100,seconds_per_image,categories,failed" and len(rows) == 1 + 2 * 4
    html = (out / "bench.html").read_text()
    assert "<table>" in html and "http://" not in html


def test_bench_default_column_covers_every_mvtec_category_and_ablations_the_textures(tmp_path: Path):
    from iapas.evaluation.bench import run_bench

    datasets = tmp_path / "datasets"
    make_mvtec(datasets / "MVTecAD", ("bottle", "carpet", "grid"))
    out = tmp_path / "bench"
    stage1 = Stage1Options(tagger="manual", tags=[OBJECT], llm="knowledge")
    bench = run_bench(datasets, out, fake_pipeline(), EvalSettings(protocol="full"), stage1=stage1, ablations=["size-filter"], report=False)
    default, off = bench.results["mvtec"]["default"], bench.results["mvtec"]["size-filter-off"]
    assert [c.name for c in default.categories] == ["bottle", "carpet", "grid"]  # was carpet, grid only
    assert [c.name for c in off.categories] == ["carpet", "grid"]
    per = {c.name: c.metrics.pixel_ap for c in default.categories}
    assert default.mean()["pixel_ap"] == pytest.approx(sum(per.values()) / 3)
    md = (out / "bench.md").read_text()
    assert f"| MVTec AD | {100 * sum(per.values()) / 3:.2f} |" in md
    textures_ap = (per["carpet"] + per["grid"]) / 2
    assert "the IAP-AS column is the mean over every category; the ablation columns are over the paper's ablation categories only (carpet, grid)" in md
    assert f"over those, IAP-AS has pixel AP {100 * textures_ap:.2f}" in md
    assert json.loads((out / "bench.json").read_text())["ablation_categories"] == {"mvtec": ["carpet", "grid"]}


# --- the CLI with tiny real models -------------------------------------------------------------------


def test_cli_evaluate_with_tiny_models_writes_tables_and_exits_1_on_a_bad_image(dataset_root: Path, tmp_path: Path, tiny_models: dict[str, Path]):
    from typer.testing import CliRunner

    from iapas.cli import app

    (dataset_root / "beta" / "test" / "good" / "000.png").write_bytes(b"")  # an empty file
    out = tmp_path / "run"
    args = [
        "evaluate", "--dataset", "mvtec", "--root", str(dataset_root), "--out", str(out), "--protocol", "full",
        "--detector", str(tiny_models["grounding-dino"]), "--segmenter", str(tiny_models["sam"]), "--device", "cpu",
        "--tagger", "manual", "--tags", "widget", "--llm", "knowledge", "--quiet",
    ]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 1, result.output
    for name in ("metrics.csv", "metrics.json", "metrics.md", "report.html", "run.json", "profiles/alpha.yaml"):
        assert (out / name).is_file(), name
    data = json.loads((out / "metrics.json").read_text())
    assert data["protocol"] == "full" and data["mode"] == "iapas"
    assert data["categories"]["beta"]["n_failed"] == 1 and data["categories"]["beta"]["n_done"] == 5
    assert "empty file" in data["categories"]["beta"]["failures"][0]["error"]
    assert data["models"]["detector"] == str(tiny_models["grounding-dino"])
    lines = (out / "metrics.csv").read_text().splitlines()
    assert lines[0].startswith("category,pixel_ap,pixel_f1_max,") and [l.split(",")[0] for l in lines[1:]] == ["alpha", "beta", "mean"]
    # same command again: everything is resumed, nothing recomputed; other settings are refused
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 1 and json.loads((out / "metrics.json").read_text())["categories"]["alpha"]["n_new"] == 0
    refused = CliRunner().invoke(app, [*args, "--mode", "base"])
    assert refused.exit_code == 2 and "other settings" in refused.output
    # --no-image-norm is a metric-time switch: accepted on the same folder, nothing segmented again
    assert json.loads((out / "metrics.json").read_text())["image_norm"] is True
    raw = CliRunner().invoke(app, [*args, "--no-image-norm"])
    assert raw.exit_code == 1, raw.output
    data = json.loads((out / "metrics.json").read_text())
    assert data["image_norm"] is False and data["categories"]["alpha"]["n_new"] == 0
    assert "no per-image normalisation" in (out / "metrics.md").read_text()


def test_cli_bench_passes_image_norm_through(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from typer.testing import CliRunner

    import iapas.cli.bench as cli_bench
    import iapas.evaluation.bench as bench_module
    from iapas.cli import app
    from iapas.data import DatasetError

    seen = []

    def fake_run_bench(root_dir, out, pipeline, settings, **kwargs):
        seen.append(settings.image_norm)
        raise DatasetError("stop here")

    monkeypatch.setattr(cli_bench, "_pipeline", lambda *a, **k: None)
    monkeypatch.setattr(bench_module, "run_bench", fake_run_bench)
    # mode base under the paper protocol: off by default, as the reference code's baseline
    for flag, expected in (([], False), (["--image-norm"], True), (["--no-image-norm"], False)):
        result = CliRunner().invoke(app, ["bench", "--root-dir", str(tmp_path), "--out", str(tmp_path / "b"), "--mode", "base", "--quiet", *flag])
        assert result.exit_code == 2 and "stop here" in result.output
        assert seen[-1] is expected


def test_a_caption_the_detector_cannot_read_fails_its_category_once(dataset_root: Path, tmp_path: Path):
    class ShortWindowDetector(BlobDetector):
        def check_caption(self, caption: str) -> None:
            if len(caption.split(" . ")) > 5:  # alpha: 4 phrases, beta: 6
                raise ValueError(f"caption {caption!r} is too long for {self.name}")

    out = tmp_path / "out"
    write_profiles(out / "profiles", ["alpha"])
    Profile.from_prompts("beta", OBJECT, ["scratch", "dent", "hole"]).save(out / "profiles" / "beta.yaml")
    pipe = Pipeline(ShortWindowDetector(), BoxSegmenter(), PipelineConfig())
    result = evaluate_dataset("mvtec", dataset_root, out, pipe, EvalSettings(protocol="full"), report=False)
    alpha, beta = result.categories
    assert alpha.metrics is not None and beta.metrics is None and result.failed
    assert "too long" in (beta.error or "") and not (out / "predictions" / "beta.jsonl").exists()


def test_a_changed_image_file_is_segmented_again(dataset_root: Path, tmp_path: Path):
    out = tmp_path / "out"
    write_profiles(out / "profiles", ["alpha"])
    settings = EvalSettings(protocol="full")
    evaluate_dataset("mvtec", dataset_root, out, fake_pipeline(), settings, categories=["alpha"], report=False)
    image = dataset_root / "alpha" / "test" / "good" / "000.png"
    _save(image, np.full((48, 40, 3), 90, np.uint8))  # replaced: no decoy spot any more
    again = evaluate_dataset("mvtec", dataset_root, out, fake_pipeline(), settings, categories=["alpha"], report=False)
    assert again.categories[0].n_new == 1
    record = {r["key"]: r for r in read_jsonl(out / "predictions" / "alpha.jsonl")}["good/000"]
    assert record["kept"] == [] and record["file"]["size"] == image.stat().st_size


def test_cli_evaluate_on_a_users_own_folder_dataset(tmp_path: Path, tiny_models: dict[str, Path]):
    """Own labelled images: OK/ and NG/ folders, masks named '<stem>.png' in labels/."""
    from PIL import Image
    from typer.testing import CliRunner

    from iapas.cli import app

    root = tmp_path / "line3"
    rng = np.random.default_rng(2)
    for folder, n in (("OK", 5), ("NG", 3)):
        (root / folder).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(root / folder / f"{folder}{i}.png")
    (root / "labels").mkdir()
    for i in range(3):
        mask = np.zeros((48, 64), np.uint8)
        mask[10:20, 10 + i : 30 + i] = 255
        Image.fromarray(mask).save(root / "labels" / f"NG{i}.png")
    out = tmp_path / "run"
    result = CliRunner().invoke(app, [
        "evaluate", "--dataset", "folder", "--root", str(root), "--out", str(out), "--mode", "base",
        "--normal", "OK", "--anomalous", "NG", "--masks", "labels", "--mask-pattern", "{stem}.png", "--references", "2",
        "--detector", str(tiny_models["grounding-dino"]), "--segmenter", str(tiny_models["sam"]), "--device", "cpu", "--quiet",
    ])
    assert result.exit_code == 0, result.output
    data = json.loads((out / "metrics.json").read_text())
    (category,) = data["categories"].values()
    # 3 defective + 5 normal - 2 references - 1 calibration image (at most half of the 3 normals left;
    # the default asks for the 99 that a 1% false-alarm rate needs, so no threshold, and why)
    assert category["n_done"] == 3 + 2
    assert category["decision"]["n_calibration"] == 1 and category["decision"]["threshold"] is None
    assert "needs at least 99" in category["decision"]["reason"]
    assert (out / "report.html").is_file()
