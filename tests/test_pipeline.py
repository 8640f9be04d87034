"""Stage 2 logic (with canned detections) and the real adapters (with tiny models)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from iapas.models.base import Detector
from iapas.pipeline.stage2 import Pipeline, PipelineConfig
from iapas.product.profile import Profile
from iapas.core.caption import BASE_CAPTION
from iapas.core.types import Detections


class CannedDetector(Detector):
    """Returns fixed detections per caption; records the calls (logic tests only)."""

    name = "canned"

    def __init__(self, by_caption: dict[str, Detections]) -> None:
        self.by_caption = by_caption
        self.calls: list[tuple[int, str]] = []

    def detect(self, images: Sequence[np.ndarray], caption: str, *, box_threshold: float, text_threshold: float) -> list[Detections]:
        self.calls.append((len(images), caption))
        return [self.by_caption.get(caption, Detections.empty()) for _ in images]


class BoxSegmenter:
    """Masks = the box itself (logic tests only)."""

    name = "box"

    def __init__(self) -> None:
        self.calls: list[int] = []
        self.prompts: list[np.ndarray] = []  # the boxes given, per image

    def segment(self, images: Sequence[np.ndarray], boxes: Sequence[np.ndarray]) -> list[np.ndarray]:
        out = []
        for image, b in zip(images, boxes):
            self.calls.append(len(b))
            self.prompts.append(np.asarray(b))
            masks = np.zeros((len(b), *image.shape[:2]), bool)
            for i, (x0, y0, x1, y1) in enumerate(np.asarray(b, int)):
                masks[i, y0:y1, x0:x1] = True
            out.append(masks)
        return out


PROFILE = Profile.from_prompts("widget", "widget", ["scratch"])  # caption 'scratch . abnormal . defect . widget .'


def make(anomalies: Detections, obj: Detections | None = None, **cfg) -> tuple[Pipeline, CannedDetector, BoxSegmenter]:
    by_caption = {PROFILE.caption: anomalies, BASE_CAPTION: anomalies}
    if obj is not None:
        by_caption["widget"] = obj
    det, seg = CannedDetector(by_caption), BoxSegmenter()
    return Pipeline(det, seg, PipelineConfig(**cfg)), det, seg


def test_size_filter_nms_and_fusion_on_known_boxes():
    image = np.zeros((100, 200, 3), np.uint8)
    # object box 100x50 on 200x100 -> object_size 0.25, limit 0.8*0.25 = 0.2 of the image
    obj = Detections(np.array([[0, 0, 100, 50], [0, 0, 10, 10]], np.float32), np.array([0.9, 0.4]), ("widget", "widget"))
    anomalies = Detections(
        np.array(
            [
                [10, 10, 30, 20],  # area 200 -> 0.01, kept
                [11, 10, 31, 20],  # IoU with the first = 190/210 > 0.5, lower score -> removed by NMS
                [20, 15, 40, 25],  # kept, overlaps the first on [20,30)x[15,20)
                [0, 0, 200, 90],  # 0.9 of the image -> dropped by the size filter
            ],
            np.float32,
        ),
        np.array([0.5, 0.4, 0.25, 0.8], np.float32),
        ("scratch", "scratch", "defect", "widget"),
    )
    pipe, det, seg = make(anomalies, obj)
    result = pipe(image, PROFILE)
    assert det.calls == [(1, "widget"), (1, PROFILE.caption)]
    assert result.object_size == pytest.approx(0.25) and result.object_size_source == "detected"
    np.testing.assert_array_equal(result.object_box, [0, 0, 100, 50])
    assert result.kept.phrases == ("scratch", "defect")
    assert result.dropped.phrases == ("widget",)
    assert seg.calls == [2]  # one decoder call with both kept boxes
    amap = result.anomaly_map
    assert amap.shape == (100, 200) and amap.dtype == np.float32
    assert amap[12, 12] == pytest.approx(0.5)
    assert amap[17, 25] == pytest.approx(0.75)  # overlap: 0.5 + 0.25
    assert amap[22, 35] == pytest.approx(0.25)
    assert amap[50, 100] == 0
    assert result.image_score == pytest.approx(0.75)
    assert float(amap.sum()) == pytest.approx(200 * 0.5 + 200 * 0.25)


def test_boxes_stay_unclipped_for_the_size_filter_and_are_clamped_for_sam():
    """The reference code's order: object size, NMS and the size filter on the unclipped boxes,
    clamping only for SAM (and in the result)."""
    image = np.zeros((100, 100, 3), np.uint8)
    obj = Detections(np.array([[0, 0, 50, 100]], np.float32), np.array([0.9]), ("widget",))  # size 0.5, limit 0.4
    anomalies = Detections(
        np.array([[-40, 0, 60, 50], [10, 60, 30, 80]], np.float32),  # unclipped area 100*50 -> 0.5; clipped 0.3
        np.array([0.7, 0.6], np.float32),
        ("scratch", "defect"),
    )
    pipe, _, seg = make(anomalies, obj)
    r = pipe(image, PROFILE)
    assert r.kept.phrases == ("defect",)  # clipped first, 0.3 < 0.4 would have kept it
    assert r.dropped.phrases == ("scratch",)
    np.testing.assert_array_equal(r.dropped.boxes, [[0, 0, 60, 50]])  # the record shows the clipped box
    np.testing.assert_array_equal(seg.prompts[0], [[10, 60, 30, 80]])


def test_nms_sees_unclipped_boxes_and_sam_gets_clamped_ones():
    image = np.zeros((100, 100, 3), np.uint8)
    # unclipped IoU 1600 / (1600 + 4000 - 1600) = 0.4 <= 0.5: both kept; clipped both are
    # [0, 0, 40, 40] (IoU 1) and the second would be suppressed
    anomalies = Detections(
        np.array([[0, 0, 40, 40], [-60, 0, 40, 40]], np.float32), np.array([0.9, 0.5], np.float32), ("a", "b")
    )
    pipe, _, seg = make(anomalies, size_filter=False)
    r = pipe(image, PROFILE)
    assert r.kept.phrases == ("a", "b")
    np.testing.assert_array_equal(seg.prompts[0], [[0, 0, 40, 40], [0, 0, 40, 40]])
    assert r.anomaly_map[20, 20] == pytest.approx(1.4)


def test_object_size_of_an_unclipped_object_box():
    image = np.zeros((100, 100, 3), np.uint8)
    obj = Detections(np.array([[-50, 0, 100, 100]], np.float32), np.array([0.9]), ("widget",))  # 1.5 (clipped 1.0)
    big = Detections(np.array([[0, 0, 90, 100]], np.float32), np.array([0.6]), ("scratch",))  # 0.9 < 0.8 * 1.5
    pipe, _, _ = make(big, obj)
    r = pipe(image, PROFILE)
    assert r.object_size == pytest.approx(1.5) and len(r.kept) == 1  # clipped: limit 0.8, dropped
    np.testing.assert_array_equal(r.object_box, [0, 0, 100, 100])


def test_object_size_fallbacks():
    image = np.zeros((100, 100, 3), np.uint8)
    big = Detections(np.array([[0, 0, 85, 100]], np.float32), np.array([0.6]), ("scratch",))  # area 0.85
    pipe, _, _ = make(big, obj=None)
    r = pipe(image, PROFILE)  # no object found, no profile size -> 1.0, limit 0.8 -> dropped
    assert r.object_size_source == "default" and r.object_size == 1.0
    assert len(r.kept) == 0 and len(r.dropped) == 1
    assert not r.anomaly_map.any() and r.image_score == 0.0

    with_size = Profile.from_prompts("widget", "widget", ["scratch"])
    with_size.object_size = 0.5  # limit 0.4: still dropped
    assert pipe(image, with_size).object_size_source == "profile"
    pipe.config.size_threshold = 2.0  # override: limit 1.0 -> kept
    r = pipe(image, with_size)
    assert len(r.kept) == 1 and r.image_score == pytest.approx(0.6)


def test_base_mode_uses_fixed_caption_and_no_size_filter():
    image = np.zeros((50, 50, 3), np.uint8)
    whole = Detections(np.array([[0, 0, 50, 50]], np.float32), np.array([0.3]), ("defect",))
    pipe, det, _ = make(whole, mode="base")
    r = pipe(image)  # no profile needed
    assert det.calls == [(1, BASE_CAPTION)]  # no object forward
    assert len(r.kept) == 1 and r.anomaly_map.min() == pytest.approx(0.3)


def test_iapas_mode_needs_a_profile():
    pipe, _, _ = make(Detections.empty())
    with pytest.raises(ValueError, match="needs a profile"):
        pipe(np.zeros((10, 10, 3), np.uint8))


def test_batch_is_one_forward_per_caption():
    pipe, det, seg = make(Detections(np.array([[1, 1, 3, 3]], np.float32), np.array([0.5])), obj=Detections.empty())
    images = [np.zeros((20, 30, 3), np.uint8), np.zeros((40, 10, 3), np.uint8), np.zeros((8, 8, 3), np.uint8)]
    results = pipe.run(images, PROFILE)
    assert det.calls == [(3, "widget"), (3, PROFILE.caption)]
    assert [r.anomaly_map.shape for r in results] == [(20, 30), (40, 10), (8, 8)]


def test_any_prompt_runs_and_stage2_gives_no_verdict():
    """Stage 2 reads a Prompt (caption, object tag, size threshold, object size): a plain object
    gives the same result as the profile; a calibrated profile's verdict is profile.judge(result)."""
    from dataclasses import dataclass, replace

    from iapas.product.decision import Decision

    @dataclass
    class PlainPrompt:
        caption: str
        object_tag: str
        size_threshold: float = 0.8
        object_size: float | None = None

    image = np.zeros((40, 40, 3), np.uint8)
    pipe, _, _ = make(Detections(np.array([[2, 2, 10, 10]], np.float32), np.array([0.5])), obj=Detections.empty())
    plain = pipe(image, PlainPrompt(PROFILE.caption, PROFILE.object_tag))
    calibrated = replace(PROFILE, decision=Decision(threshold=0.4, score_max=1.0))
    result = pipe(image, calibrated)
    np.testing.assert_array_equal(plain.anomaly_map, result.anomaly_map)
    assert "decision" not in result.__dataclass_fields__
    with pytest.raises(AttributeError, match=r"profile\.judge\(result\)"):
        result.decision  # noqa: B018
    verdict = calibrated.judge(result)
    assert verdict.verdict == "NG" and verdict.score == pytest.approx(0.5) and PROFILE.judge(result) is None


# --- the real transformers adapters, loaded from tiny model folders ---------------------------


def test_tiny_models_through_the_real_loading_path(tiny_models: dict[str, Path]):
    pipe = Pipeline.from_config(
        PipelineConfig(detector=str(tiny_models["grounding-dino"]), segmenter=str(tiny_models["sam"]), device="cpu")
    )
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (120, 160, 3), dtype=np.uint8), rng.integers(0, 255, (90, 70), dtype=np.uint8)]
    profile = Profile.from_prompts("bottle", "bottle", ["scratch", "crack"])
    profile.size_threshold = 1000.0  # keep every box so SAM is exercised
    results = pipe.run(images, profile)
    for image, r in zip(images, results):
        h, w = image.shape[:2]
        assert r.anomaly_map.shape == (h, w)
        assert len(r.kept) > 0, "the tiny detector gives boxes at threshold 0.1"
        assert r.masks.shape == (len(r.kept), h, w) and r.masks.dtype == bool
        assert (r.kept.boxes[:, [0, 2]] <= w).all() and (r.kept.boxes[:, [1, 3]] <= h).all()
        assert (r.kept.boxes >= 0).all()
        assert (r.kept.scores > 0.1).all() and (r.kept.scores <= 1).all()
        expected = np.zeros((h, w), np.float32)
        for m, s in zip(r.masks, r.kept.scores):
            expected[m] += s
        np.testing.assert_allclose(r.anomaly_map, expected, rtol=1e-6)
    # one forward per caption for each image size of the batch (two sizes here: a padded batch
    # would change the boxes); one encoder pass and one decoder call per image
    assert pipe.detector.forward_count == 2 * 2
    assert pipe.segmenter.encoder_count == 1 and pipe.segmenter.decoder_count == 2


def test_model_load_errors_say_what_to_do(tmp_path: Path, tiny_models: dict[str, Path]):
    from iapas.models.detector import GroundingDinoDetector
    from iapas.models.loading import ModelLoadError
    from iapas.models.segmenter import SamSegmenter

    with pytest.raises(ModelLoadError, match="does not exist"):
        GroundingDinoDetector.from_pretrained(str(tmp_path / "missing"), device="cpu")
    with pytest.raises(ModelLoadError, match="holds a 'sam' model; expected grounding-dino"):
        GroundingDinoDetector.from_pretrained(str(tiny_models["sam"]), device="cpu")
    with pytest.raises(ModelLoadError, match="no config.json"):
        SamSegmenter.from_pretrained(str(tmp_path), device="cpu")
    with pytest.raises(ModelLoadError, match="HF_HUB_OFFLINE is set.*local-dir"):
        SamSegmenter.from_pretrained("facebook/sam-vit-nonexistent", device="cpu")


def test_size_filter_off_keeps_every_box():
    image = np.zeros((100, 100, 3), np.uint8)
    big = Detections(np.array([[0, 0, 100, 100], [0, 0, 10, 10]], np.float32), np.array([0.6, 0.2]), ("defect", "scratch"))
    pipe, det, _ = make(big, obj=None, size_filter=False)
    r = pipe(image, PROFILE)
    assert len(r.kept) == 2 and len(r.dropped) == 0
    assert r.anomaly_map[5, 5] == pytest.approx(0.8) and r.anomaly_map[50, 50] == pytest.approx(0.6)


def test_rgba_arrays_are_composited_like_rgba_files(tmp_path: Path):
    """The Python API and the CLI must see the same pixels: alpha on black, not dropped."""
    from PIL import Image

    from iapas.core.images import read_image
    from iapas.pipeline.stage2 import as_rgb

    rgba = np.zeros((16, 20, 4), np.uint8)
    rgba[..., 0], rgba[..., 1], rgba[..., 2] = 200, 100, 50
    rgba[:, :10, 3] = 255  # left half opaque
    rgba[:, 10:, 3] = 0  # right half transparent: black
    path = tmp_path / "rgba.png"
    Image.fromarray(rgba).save(path)
    from_array = as_rgb(rgba)
    np.testing.assert_array_equal(from_array, read_image(path).rgb)
    np.testing.assert_array_equal(from_array[0, 0], [200, 100, 50])
    np.testing.assert_array_equal(from_array[0, 15], [0, 0, 0])


def test_grounding_dino_boxes_are_decoded_unclipped():
    from iapas.models.detector import GroundingDinoDetector

    cxcywh = np.array([[0.1, 0.5, 0.4, 0.2]], np.float32)  # on 100x50: x -10..30, y 20..30
    out = GroundingDinoDetector._boxes(cxcywh, np.array([0]), 100, 50)
    np.testing.assert_allclose(out, [[-10, 20, 30, 30]], atol=1e-5)
