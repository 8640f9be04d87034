"""Evaluation: protocol functions, resumable predictions, metrics from stored maps, conflicts, CLI.

Most tests use a generated MVTec-layout dataset and a fake pipeline whose maps are known:
:class:`BlobDetector` boxes the bright pixels of an image (score = brightest value / 255) and
:class:`BoxSegmenter` turns each box into its mask, so the anomaly map is a known rectangle.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
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
from iapas.pipeline import Pipeline, PipelineConfig
from iapas.profile import Profile
from iapas.types import Detections

OBJECT = "widget"


# --- fakes ---------------------------------------------------------------------------------------


class BlobDetector:
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
            im[y0 : y0 + 8, x0 : x0 + 10] = 200 + 15 * i
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
    five = limit_samples(items, 5, seed=3)
    ten = limit_samples(items, 10, seed=3)
    assert len(five) == 5 and five == sorted(five) and set(five) <= set(ten)
    assert limit_samples(items, 5, seed=3) == five and limit_samples(items, None) == items


def test_wrong_object_tags_rotate_and_fall_back():
    assert wrong_object_tags({"carpet": "carpet", "grid": "grid", "wood": "wood"}) == {
        "carpet": "grid", "grid": "wood", "wood": "carpet"
    }
    assert wrong_object_tags({"a": "tile", "b": "tile", "c": "wood"}) == {"a": "wood", "b": "wood", "c": "tile"}
    assert wrong_object_tags({"magnetic_tile": "bottle"}) == {"magnetic_tile": "carpet"}


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
    maps, masks, labels = [], [], []
    for sample in category.test:
        image = np.asarray(Image.open(sample.path).convert("RGB"))
        gt = np.asarray(Image.open(sample.mask_path)) > 127 if sample.mask_path else np.zeros(image.shape[:2], bool)
        expected_map = np.asarray(Image.fromarray(expected_native_map(image)).resize((400, 400), Image.BICUBIC))
        expected_mask = np.asarray(Image.fromarray(gt.astype(np.uint8) * 255).resize((400, 400), Image.NEAREST)) > 127
        maps.append(expected_map)
        masks.append(expected_mask)
        labels.append(sample.label)
    stack = np.stack(maps)
    lo, hi = float(stack.min()), float(stack.max())
    assert lo < 0 < hi  # bicubic overshoot below zero next to the boxes
    assert result.score_range == (lo, hi)
    normalised = ((stack.astype(np.float64) - lo) / (hi - lo)).astype(np.float32)
    direct = category_metrics(normalised, np.stack(masks), image_labels=np.array(labels))
    assert result.metrics == direct  # every field identical
    assert 0 < direct.pixel_ap < 1 and direct.image_auroc == 1.0

    # the stored 400x400 maps and masks are the resized ones (float32, lossless)
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
        assert rec["status"] == "ok" and len(rec["kept"]) == 1 and rec["dropped"] == []
    first = records[0]  # crack/000: box 12..22 x 10..18 on the 40x48 image, score 200/255
    assert first["kept"][0]["box"] == [12.0, 10.0, 22.0, 18.0]
    assert first["kept"][0]["score"] == pytest.approx(200 / 255, abs=1e-5)
    assert first["image_score"] == pytest.approx(200 / 255, abs=1e-6)

    # and metrics_from_predictions gives the same from the files alone
    again, rng, curve = metrics_from_predictions(out, records)
    assert again == direct and rng == (lo, hi)
    assert curve["recall"][0] == 1.0 and len(curve["thresholds"]) == 101


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
