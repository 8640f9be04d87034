"""SAM 3 as a joint detector + segmenter (issue 14): the caption's phrases as text prompts, each
instance's score and mask as s_i and m_i, the same NMS, size filter and fusion as the cascade,
and no separate segmenter."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from iapas.cli import app
from iapas.models.base import Detector
from iapas.models.loading import ModelLoadError
from iapas.pipeline.stage2 import NoSegmenter, Pipeline, PipelineConfig
from iapas.product.profile import Profile
from iapas.core.types import Detections
from tests.conftest import shared_data
from tests.test_more_models import profile_file  # noqa: F401 - a fixture: 'tile', 'magnetic tile', crack/hole/fray

runner = CliRunner()


def read_results(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]


class Counter:
    """Forward calls of a module, and the batch size of each."""

    def __init__(self, module) -> None:
        self.batches: list[int] = []
        module.register_forward_hook(self._hook, with_kwargs=True)

    def _hook(self, module, args, kwargs, output) -> None:
        first = next(t for t in [*args, *kwargs.values()] if hasattr(t, "shape"))
        self.batches.append(int(first.shape[0]))

    @property
    def calls(self) -> int:
        return len(self.batches)


# --- loading -----------------------------------------------------------------------------------


def test_sam3_loads_through_the_factory_and_returns_masks(tiny_models: dict[str, Path]):
    from iapas.models.factory import adapter_class, load_detector, returns_masks
    from iapas.models.sam3 import Sam3Detector

    folder = tiny_models["sam3"]
    assert json.loads((folder / "config.json").read_text())["model_type"] == "sam3"
    assert adapter_class("detector", str(folder)) is Sam3Detector
    assert returns_masks(str(folder)) and not returns_masks(str(tiny_models["grounding-dino"]))  # from config.json
    det = load_detector(str(folder), device="cpu")
    assert type(det) is Sam3Detector and type(det.model).__name__ == "Sam3Model" and det.returns_masks
    assert (det.settings.height, det.settings.width) == (112, 112)  # read from processor_config.json
    image = np.random.default_rng(0).integers(0, 255, (96, 128, 3), dtype=np.uint8)
    (found,) = det.detect([image], "crack . hole .", box_threshold=0.0)
    # every one of the tiny model's 20 queries passes 0.0, for each of the two prompts, in order
    assert len(found) == 40 and found.phrases == ("crack",) * 20 + ("hole",) * 20
    assert found.masks is not None and found.masks.shape == (40, 96, 128) and found.masks.dtype == bool
    assert np.all((found.scores > 0) & (found.scores <= 1))
    (none,) = det.detect([image], "crack .", box_threshold=1.0)  # nothing passes: empty, masks still (0, H, W)
    assert len(none) == 0 and none.masks.shape == (0, 96, 128)


def test_masks_upsampled_in_chunks_are_the_same(tiny_models: dict[str, Path], monkeypatch: pytest.MonkeyPatch):
    from iapas.models import sam3
    from iapas.models.sam3 import Sam3Detector

    det = Sam3Detector.from_pretrained(str(tiny_models["sam3"]), device="cpu")
    image = np.random.default_rng(1).integers(0, 255, (70, 90, 3), dtype=np.uint8)
    (whole,) = det.detect([image], "crack .", box_threshold=0.0)
    monkeypatch.setattr(sam3, "MASK_CHUNK", 3)  # 20 instances: 7 calls
    (chunked,) = det.detect([image], "crack .", box_threshold=0.0)
    assert whole.masks.shape == (20, 70, 90) and whole.masks.any()
    np.testing.assert_array_equal(whole.masks, chunked.masks)


def test_wrong_kind_of_folder_is_refused(tiny_models: dict[str, Path]):
    from iapas.models.detector import GroundingDinoDetector
    from iapas.models.factory import load_segmenter
    from iapas.models.sam3 import Sam3Detector

    sam = tiny_models["sam"]
    with pytest.raises(ModelLoadError, match=f"SAM 3 detector: {sam} holds a 'sam' model; expected sam3"):
        Sam3Detector.from_pretrained(str(sam), device="cpu")
    sam3 = tiny_models["sam3"]
    with pytest.raises(ModelLoadError, match=f"{sam3} holds a 'sam3' model; expected grounding-dino or mm-grounding-dino"):
        GroundingDinoDetector.from_pretrained(str(sam3), device="cpu")
    # SAM 3 is a detector (that segments), not a box-prompted segmenter
    with pytest.raises(ModelLoadError, match=f"segmenter: {sam3} holds a 'sam3' model; expected sam or sam_hq"):
        load_segmenter(str(sam3), device="cpu")


def test_phrase_longer_than_the_text_window_is_refused(tiny_models: dict[str, Path]):
    from iapas.models.sam3 import Sam3Detector

    det = Sam3Detector.from_pretrained(str(tiny_models["sam3"]), device="cpu")
    det.check_caption("crack . magnetic tile .")  # 12 characters + bos + eos: fits the 32 tokens
    with pytest.raises(ValueError, match="reads at most 32 per prompt"):
        det.check_caption("crack . " + "x" * 31 + " .")  # the char-level tokenizer: 33 tokens
    with pytest.raises(ValueError, match="has no phrase"):
        det.check_caption(" . ")


# --- forward counts ----------------------------------------------------------------------------


def test_one_vision_encoder_pass_per_image_whatever_the_number_of_phrases(tiny_models: dict[str, Path]):
    pipe = Pipeline.from_config(
        PipelineConfig(detector=str(tiny_models["sam3"]), device="cpu", box_threshold=0.0, text_threshold=0.0, nms_iou=1.0)
    )  # thresholds 0 and NMS off keep every instance (the random model's boxes nearly coincide)
    assert isinstance(pipe.segmenter, NoSegmenter)  # no SAM loaded
    model = pipe.detector.model
    vision, text = Counter(model.vision_encoder), Counter(model.text_encoder)
    detr, masks = Counter(model.detr_decoder), Counter(model.mask_decoder)
    profile = Profile.from_prompts("tile", "tile", ["scratch", "crack", "hole", "stain"], size_threshold=1000.0)
    prompts = pipe.detector.prompts(profile.caption)
    assert prompts == ["scratch", "crack", "hole", "stain", "abnormal", "defect", "tile"]  # the object tag among them
    rng = np.random.default_rng(4)
    images = [rng.integers(0, 255, (96, 128, 3), dtype=np.uint8) for _ in range(3)]
    results = pipe.run(images, profile)
    assert all(len(r.kept) == 7 * 20 for r in results)  # 20 queries for each of the 7 prompts
    assert vision.batches == [3]  # one vision pass for the batch of 3: one encoding per image
    assert text.batches == [7]  # the 7 phrases encoded once, the object tag shared with the caption
    assert detr.batches == masks.batches == [7, 7, 7]  # per image: all 7 prompts in one call
    for r, image in zip(results, images):
        assert r.masks.shape == (len(r.kept), 96, 128) and r.anomaly_map.shape == (96, 128)
        assert r.object_size_source == "detected" and set(r.kept.phrases) <= set(prompts)
    # again: the text features are cached; fewer prompts per call means more calls, not more encodings
    pipe.detector.prompt_batch = 3
    pipe.run(images[:2], profile)
    assert vision.batches == [3, 2] and text.batches == [7]
    assert detr.batches[3:] == [3, 3, 1, 3, 3, 1]
    assert pipe.detector.vision_count == 2


# --- the pipeline's joint path -----------------------------------------------------------------


def box_mask(box: tuple[int, int, int, int], shape: tuple[int, int] = (10, 10)) -> np.ndarray:
    m = np.zeros(shape, bool)
    x0, y0, x1, y1 = box
    m[y0:y1, x0:x1] = True
    return m


class CannedJointDetector(Detector):
    """Canned instances with masks on a 10x10 image: the object box covers half the image."""

    name = "canned-joint"

    def __init__(self) -> None:
        self.calls: list[str] = []

    def detect(self, images, caption, *, box_threshold, text_threshold):
        self.calls.append(caption)
        if caption == "tile":
            return [Detections(np.array([[0, 0, 10, 5]]), np.array([0.9]), ("tile",), masks=box_mask((0, 0, 10, 5))[None])]
        boxes = np.array([[0, 0, 2, 2], [0, 0, 8, 8], [1, 1, 3, 3], [0, 0, 2, 2.1]], np.float32)
        scores = np.array([0.5, 0.7, 0.3, 0.2], np.float32)
        masks = np.stack([box_mask((0, 0, 2, 2)), np.ones((10, 10), bool), box_mask((1, 1, 3, 3)), box_mask((0, 0, 2, 2))])
        return [Detections(boxes, scores, ("crack", "stain", "hole", "crack"), masks=masks) for _ in images]


class RaisingSegmenter:
    name = "raising"

    def segment(self, images, boxes):
        raise AssertionError("the segmenter must not be called when the detections bring their masks")


def test_pipeline_uses_the_detections_masks_with_the_same_nms_and_size_filter():
    profile = Profile.from_prompts("tile", "tile", ["crack", "stain", "hole"])
    det = CannedJointDetector()
    pipe = Pipeline(det, RaisingSegmenter(), PipelineConfig())  # the detector does not say it is joint
    (r,) = pipe.run([np.zeros((10, 10, 3), np.uint8)], profile)
    assert det.calls == ["tile", profile.caption]
    assert r.object_size == pytest.approx(0.5) and r.object_size_source == "detected"
    # NMS drops the 4th (IoU 4/4.2 with the 1st); the size filter drops 'stain' (area 0.64, not < 0.8 * 0.5)
    assert r.kept.phrases == ("crack", "hole") and r.dropped.phrases == ("stain",)
    assert r.dropped.masks is None  # dropped masks are not kept
    expected = np.zeros((10, 10), np.float32)
    expected[0:2, 0:2] += 0.5
    expected[1:3, 1:3] += 0.3
    np.testing.assert_array_equal(r.anomaly_map, expected)
    assert r.anomaly_map[1, 1] == pytest.approx(0.8) and r.image_score == pytest.approx(0.8)
    np.testing.assert_array_equal(r.masks, np.stack([box_mask((0, 0, 2, 2)), box_mask((1, 1, 3, 3))]))
    assert "segmentation" not in r.timings  # no segmenter ran: the masks' cost is in detection
    # size filter off: 'stain' (whole image, 0.7) is fused too
    pipe.config.size_filter = False
    (r,) = pipe.run([np.zeros((10, 10, 3), np.uint8)], profile)
    assert r.kept.phrases == ("stain", "crack", "hole")
    np.testing.assert_allclose(r.anomaly_map, expected + 0.7)


def test_a_joint_detector_needs_no_segmenter_and_records_none():
    from iapas.engine.runner import run_signature

    class Joint(CannedJointDetector):
        returns_masks = True

    profile = Profile.from_prompts("tile", "tile", ["crack"])
    pipe = Pipeline(Joint(), None, PipelineConfig())
    assert isinstance(pipe.segmenter, NoSegmenter)
    assert Pipeline(Joint(), RaisingSegmenter()).segmenter.name == "none"  # a segmenter given is unused (bench)
    sig = run_signature(pipe, profile)
    assert (sig["detector"], sig["segmenter"]) == ("canned-joint", "none")
    with pytest.raises(ValueError, match="returns no masks: a segmenter is needed"):
        Pipeline(CannedJointDetector(), None)
    with pytest.raises(RuntimeError, match="expected to return masks"):
        NoSegmenter().segment([], [])


def test_from_config_loads_no_segmenter_for_a_joint_detector(tiny_models: dict[str, Path], monkeypatch, caplog):
    import logging

    from iapas.models import factory

    def refuse(*args, **kwargs):
        raise AssertionError("no segmenter may be loaded")

    monkeypatch.setattr(factory, "load_segmenter", refuse)
    with caplog.at_level(logging.INFO, logger="iapas.pipeline.stage2"):
        pipe = Pipeline.from_config(PipelineConfig(detector=str(tiny_models["sam3"]), segmenter="sam-vit-b", device="cpu"))
    assert pipe.segmenter.name == "none"
    warned = [r for r in caplog.records if "returns its own masks" in r.getMessage()]
    assert warned and warned[0].levelno == logging.WARNING and "sam-vit-b unused" in warned[0].getMessage()


def test_detections_masks_follow_select_and_concat():
    masks = np.stack([box_mask((0, 0, 1, 1)), box_mask((0, 0, 2, 2)), box_mask((0, 0, 3, 3))])
    d = Detections(np.zeros((3, 4)), np.array([0.1, 0.2, 0.3]), ("a", "b", "c"), masks=masks)
    s = d.select([2, 0])
    assert s.phrases == ("c", "a") and s.masks.sum(axis=(1, 2)).tolist() == [9, 1]
    assert d.select(np.array([False, True, False])).masks.shape == (1, 10, 10)
    both = Detections.concat([s, d.select([1])], (10, 10))
    assert both.phrases == ("c", "a", "b") and both.masks.sum(axis=(1, 2)).tolist() == [9, 1, 4]
    assert Detections.concat([], (4, 5)).masks.shape == (0, 4, 5)
    assert Detections.concat([Detections.empty(), s], (10, 10)).masks is None  # a part without masks: none
    assert Detections(np.zeros((1, 4)), [0.5]).select([0]).masks is None
    with pytest.raises(ValueError, match="masks of shape"):
        Detections(np.zeros((2, 4)), [0.5, 0.6], masks=np.zeros((3, 10, 10), bool))


# --- end to end --------------------------------------------------------------------------------


def test_segment_with_sam3_on_real_mtd(tmp_path: Path, tiny_models: dict[str, Path], profile_file: Path):
    root = shared_data("MTD")
    picked = [sorted((root / cls / "Imgs").glob("*.jpg"))[0] for cls in ("MT_Crack", "MT_Blowhole", "MT_Free")]
    src = tmp_path / "mtd"
    src.mkdir()
    for p in picked:  # linked, never copied
        (src / p.name).symlink_to(p)
    out = tmp_path / "out"
    sam3 = tiny_models["sam3"]
    args = ["segment", str(src), "--profile", str(profile_file), "--out", str(out), "--detector", str(sam3),
            "--device", "cpu", "--box-threshold", "0.2", "--size-threshold", "10"]
    # no --segmenter: none is needed (nor loaded: offline). The random model's boxes are about the
    # object's size: --size-threshold 10 keeps them, so their masks reach the maps.
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    records = read_results(out)
    assert len(records) == 3 and all(r["status"] == "ok" for r in records)
    for rec in records:
        assert Image.open(out / rec["outputs"]["mask"]).size == Image.open(rec["image"]).size
        assert {k["phrase"] for k in rec["kept"]} <= {"crack", "hole", "fray", "abnormal", "defect", "magnetic tile"}
    assert all(rec["kept"] and rec["image_score"] > 0 for rec in records)  # the tiny model's scores (~0.25) pass 0.2
    run = json.loads((out / "run.json").read_text())
    text = json.dumps(run)
    assert str(sam3) in text and '"segmenter": "none"' in text


def test_bench_with_a_sam3_detector_column(tmp_path: Path, tiny_models: dict[str, Path]):
    from tests.test_evaluation import make_mvtec

    make_mvtec(tmp_path / "data" / "MVTecAD", ("alpha",), n_good=1, n_bad=1)
    out = tmp_path / "bench"
    sam3 = tiny_models["sam3"]
    args = [
        "bench", "--root-dir", str(tmp_path / "data"), "--out", str(out), "--protocol", "full",
        "--detector", str(tiny_models["grounding-dino"]), "--segmenter", str(tiny_models["sam"]), "--device", "cpu",
        "--tagger", "manual", "--tags", "widget", "--llm", "knowledge", "--quiet", "--ablation", f"detector={sam3}",
    ]
    result = CliRunner().invoke(app, args, env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    data = json.loads((out / "bench.json").read_text())
    assert [v["name"] for v in data["variants"]] == ["default", "detector-sam3"]
    (row,) = data["rows"]
    assert row["detector-sam3"]["categories"] == 1 and row["detector-sam3"]["seconds_per_image"] > 0
    models = json.loads((out / "mvtec" / "detector-sam3" / "metrics.json").read_text())["models"]
    assert (models["detector"], models["segmenter"]) == (str(sam3), "none")  # no separate segmenter
    default = json.loads((out / "mvtec" / "default" / "metrics.json").read_text())["models"]
    assert default["segmenter"] == str(tiny_models["sam"])


# --- names, presets ----------------------------------------------------------------------------


def test_sam3_name_is_gated_and_in_the_help():
    from iapas.models import registry

    (row,) = [m for m in registry.MODEL_NAMES if m.name == "sam3"]
    assert (row.kind, row.hub_id, row.gated) == ("detector", "facebook/sam3", True)
    assert registry.resolve("detector", "sam3") == "facebook/sam3" and "sam3" not in registry.names("segmenter")
    result = runner.invoke(app, ["segment", "--help"], env={"COLUMNS": "80"})
    lines = result.output.splitlines()
    assert max(len(line) for line in lines) <= 80
    assert any(line.split() == ["sam3", "facebook/sam3", "(gated)"] for line in lines)
    assert "none is gated" not in result.output and "with it no segmenter is loaded" in result.output


def test_sam3_preset_is_the_hub_architecture():
    from iapas.testing.presets import PRESETS, count_parameters

    preset = PRESETS["sam3"]
    assert (preset.kind, preset.hub_id) == ("sam3", "facebook/sam3")
    assert count_parameters("sam3") == 840_376_374  # the detector; the hub's ~0.9 B adds the video tracker
    config = preset.config()
    assert (config.vision_config.backbone_config.image_size, config.text_config.vocab_size) == (1008, 49408)


def test_sam3_preset_processor_files_load_as_the_hub_ones(tmp_path: Path):
    from transformers import AutoTokenizer

    from iapas.models.sam3 import read_image_settings
    from iapas.testing.presets import make_processor

    make_processor("sam3").save_pretrained(tmp_path)
    tokenizer = AutoTokenizer.from_pretrained(str(tmp_path))
    assert (len(tokenizer), tokenizer.bos_token_id, tokenizer.eos_token_id) == (49408, 49406, 49407)  # CLIP's
    assert len(tokenizer("magnetic tile")["input_ids"]) == 14  # 12 characters + bos + eos
    settings = read_image_settings(str(tmp_path), "test")
    assert (settings.height, settings.width, settings.image_mean) == (1008, 1008, (0.5, 0.5, 0.5))


def test_evaluate_with_sam3_resumes_into_its_own_folder(tmp_path: Path, tiny_models: dict[str, Path]):
    from tests.test_evaluation import make_mvtec

    make_mvtec(tmp_path / "MVTecAD", ("alpha",), n_good=1, n_bad=1)
    out = tmp_path / "out"
    args = ["evaluate", "--dataset", "mvtec", "--root", str(tmp_path / "MVTecAD"), "--out", str(out), "--protocol", "full",
            "--detector", str(tiny_models["sam3"]), "--device", "cpu", "--tagger", "manual", "--tags", "widget",
            "--llm", "knowledge", "--quiet"]
    first = runner.invoke(app, args)
    assert first.exit_code == 0, first.output
    assert json.loads((out / "metrics.json").read_text())["models"]["segmenter"] == "none"
    again = runner.invoke(app, args)  # the pre-load check predicts segmenter 'none' too: no false conflict
    assert again.exit_code == 0, again.output
