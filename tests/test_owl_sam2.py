"""OWLv2 as the detector and SAM 2.1 as the segmenter (issue 14): their adapters, tiny models,
real-size presets, names, and bench columns."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from iapas.cli import app
from iapas.models.factory import load_detector, load_segmenter
from iapas.models.loading import ModelLoadError
from iapas.models.owlv2 import Owlv2Detector
from iapas.models.sam2 import Sam2Segmenter
from iapas.pipeline.stage2 import Pipeline, PipelineConfig
from iapas.product.profile import Profile
from tests.test_more_models import Counter, profile_file, segment_real_mtd  # noqa: F401 - fixture

runner = CliRunner()
RNG = np.random.default_rng(14)
# images of three shapes: wide, tall and square (OWLv2 pads each to a square, SAM 2 squashes)
IMAGES = [RNG.integers(0, 255, shape, dtype=np.uint8) for shape in ((60, 100, 3), (90, 40, 3), (64, 64, 3))]


@pytest.fixture(scope="module")
def owl(tiny_models: dict[str, Path]) -> Owlv2Detector:
    return load_detector(str(tiny_models["owlv2"]), device="cpu")


@pytest.fixture(scope="module")
def sam2(tiny_models: dict[str, Path]) -> Sam2Segmenter:
    return load_segmenter(str(tiny_models["sam2"]), device="cpu")


# --- OWLv2 -------------------------------------------------------------------------------------


def test_owlv2_loads_by_model_type_and_detects_with_the_caption_phrases(owl: Owlv2Detector, tiny_models):
    assert json.loads((tiny_models["owlv2"] / "config.json").read_text())["model_type"] == "owlv2"
    assert type(owl) is Owlv2Detector and type(owl.model).__name__ == "Owlv2ForObjectDetection"
    assert owl.max_query_tokens == 16
    (found,) = owl.detect(IMAGES[:1], "crack . hole . magnetic tile .", box_threshold=0.0, text_threshold=0.9)
    assert found.boxes.shape == (36, 4)  # every patch of the 96 px / 16 px grid passes 0.0
    assert np.all((found.scores > 0) & (found.scores <= 1))
    assert set(found.phrases) <= {"crack", "hole", "magnetic tile"}
    (empty,) = owl.detect(IMAGES[:1], " . ", box_threshold=0.0)
    assert len(empty) == 0  # no phrase, no query


def test_owlv2_boxes_match_the_processor_post_processing_on_non_square_images(owl: Owlv2Detector):
    import torch

    phrases = ["crack", "hole"]
    found = owl.detect(IMAGES[:2], "crack . hole .", box_threshold=0.3)
    for image, det in zip(IMAGES[:2], found):
        inputs = owl.processor(text=[phrases], images=[image], return_tensors="pt")
        with torch.no_grad():
            outputs = owl.model(**inputs)
        (ref,) = owl.processor.image_processor.post_process_object_detection(
            outputs, threshold=0.3, target_sizes=[image.shape[:2]]
        )
        assert len(ref["scores"]) == len(det) > 0
        np.testing.assert_allclose(det.boxes, ref["boxes"].numpy(), rtol=1e-5, atol=1e-3)
        np.testing.assert_allclose(det.scores, ref["scores"].numpy(), rtol=1e-5, atol=1e-6)
        assert list(det.phrases) == [phrases[i] for i in ref["labels"].tolist()]


def test_owlv2_normalised_boxes_scale_by_the_longer_side():
    box = np.array([[0.5, 0.25, 1.0, 0.5], [0.1, 0.2, 0.2, 0.2]], np.float32)  # cx, cy, w, h of the square
    wide = Owlv2Detector._xyxy(box, np.arange(2), np.zeros((60, 100, 3), np.uint8))
    np.testing.assert_allclose(wide, [[0, 0, 100, 50], [0, 10, 20, 30]], atol=1e-4)
    tall = Owlv2Detector._xyxy(box, np.arange(1), np.zeros((200, 50, 3), np.uint8))
    np.testing.assert_allclose(tall, [[0, 0, 200, 100]], atol=1e-4)  # may reach past the image: unclipped


def test_owlv2_one_vision_and_one_text_pass_for_all_captions(tiny_models: dict[str, Path]):
    det = load_detector(str(tiny_models["owlv2"]), device="cpu")
    vision, text = Counter(det.model.owlv2.vision_model), Counter(det.model.owlv2.text_model)
    captions = ["magnetic tile", "crack . hole . magnetic tile ."]
    objects, anomalies = det.detect_many(IMAGES, captions, box_threshold=0.05)
    assert (vision.calls, text.calls) == (1, 1)  # three images of three sizes, two captions
    assert (det.vision_count, det.text_count) == (1, 1)
    det.detect_many(IMAGES, captions, box_threshold=0.05)
    assert (vision.calls, text.calls) == (2, 1)  # the phrases' text embeddings are cached
    for caption, many in zip(captions, (objects, anomalies)):
        for together, alone in zip(many, det.detect(IMAGES, caption, box_threshold=0.05)):  # one caption
            np.testing.assert_array_equal(together.boxes, alone.boxes)
            np.testing.assert_array_equal(together.scores, alone.scores)
            assert together.phrases == alone.phrases
        for i, image in enumerate(IMAGES):  # an image's boxes do not depend on the others of its batch
            (single,) = det.detect([image], caption, box_threshold=0.05)
            np.testing.assert_allclose(many[i].boxes, single.boxes, atol=1e-4)
            np.testing.assert_allclose(many[i].scores, single.scores, atol=1e-6)  # (near-tied phrases may swap)
    assert all(set(d.phrases) <= {"magnetic tile"} for d in objects)
    fused, fused_objects = det.detect_with_object(IMAGES, captions[1], "magnetic tile", box_threshold=0.05)
    for a, b in zip(fused_objects + fused, objects + anomalies):
        np.testing.assert_array_equal(a.boxes, b.boxes)
    with pytest.raises(ValueError, match="not in the caption"):
        det.detect_with_object(IMAGES, "crack .", "magnetic tile")


def test_owlv2_text_cache_is_bounded_and_a_full_cache_still_answers(tiny_models: dict[str, Path], monkeypatch):
    """When a call's new phrases would overflow the cache, it is emptied first: the call's
    phrases are all encoded again (one text pass) and it answers as with an empty cache."""
    import iapas.models.owlv2 as owlv2

    monkeypatch.setattr(owlv2, "_TEXT_CACHE_SIZE", 3)
    det = load_detector(str(tiny_models["owlv2"]), device="cpu")
    det.detect(IMAGES, "crack . hole .", box_threshold=0.05)
    got = det.detect(IMAGES, "crack . scratch . stain .", box_threshold=0.05)  # 2 cached + 2 new > 3
    assert det.text_count == 2 and set(det._text_cache) == {"crack", "scratch", "stain"}
    fresh = load_detector(str(tiny_models["owlv2"]), device="cpu")
    for a, b in zip(got, fresh.detect(IMAGES, "crack . scratch . stain .", box_threshold=0.05)):
        np.testing.assert_array_equal(a.boxes, b.boxes)
        assert a.phrases == b.phrases


def test_owlv2_refuses_a_phrase_longer_than_its_query_window(owl: Owlv2Detector):
    many_short = " . ".join(["crack", "hole", "scratch", "stain", "dent"] * 20)  # long caption, short queries
    owl.check_caption(many_short)
    with pytest.raises(ValueError, match=r"phrase 'xqzjvxqzjvxqzjv' is 17 tokens long but .* at most 16 per query"):
        owl.check_caption("crack . xqzjvxqzjvxqzjv .")
    from iapas.models.detector import check_caption_length

    check_caption_length(many_short, owl.name)  # the pre-load check counts Grounding DINO's window only
    check_caption_length(" . ".join(["crack"] * 300), owl.name)  # 900 tokens: no limit on the whole caption
    pipe = Pipeline(owl, object(), PipelineConfig(mode="base", base_caption="xqzjvxqzjvxqzjv ."))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="per query"):
        pipe.check(None)


# --- SAM 2.1 -----------------------------------------------------------------------------------


def test_sam2_segments_at_each_image_size_with_one_encoder_pass(sam2: Sam2Segmenter, tiny_models):
    assert json.loads((tiny_models["sam2"] / "config.json").read_text())["model_type"] == "sam2"
    assert type(sam2) is Sam2Segmenter and type(sam2.model).__name__ == "Sam2Model"
    seg = Sam2Segmenter(sam2.model, sam2.preprocessing, "cpu", sam2.dtype, sam2.name)
    boxes = [np.array([[0, 0, 60, 40], [10, 20, 90, 55], [5, 5, 6, 6]], np.float32), np.zeros((0, 4)),
             np.array([[0, 0, 64, 64]], np.float32)]
    masks = seg.segment(IMAGES, boxes)
    assert [m.shape for m in masks] == [(3, 60, 100), (0, 90, 40), (1, 64, 64)]
    assert all(m.dtype == bool for m in masks)
    assert (seg.encoder_count, seg.decoder_count) == (1, 2)  # the box-less image costs nothing
    assert seg.segment(IMAGES[:1], [np.zeros((0, 4))])[0].shape == (0, 60, 100)
    assert (seg.encoder_count, seg.decoder_count) == (1, 2)


def test_sam2_preprocessing_and_box_scaling_by_hand(sam2: Sam2Segmenter):
    import torch

    assert sam2.input_size == (256, 256)
    grey = np.full((60, 100, 3), (51, 102, 204), np.uint8)
    values = sam2._pixels([grey])
    expected = [(51 / 255 - 0.485) / 0.229, (102 / 255 - 0.456) / 0.224, (204 / 255 - 0.406) / 0.225]
    assert values.shape == (1, 3, 256, 256)
    np.testing.assert_allclose(values[0, :, 0, 0].numpy(), expected, rtol=1e-5)
    assert float((values[0] - values[0, :, :1, :1]).abs().max()) < 1e-6  # constant after the resize
    seen = []
    hook = sam2.model.prompt_encoder.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(kwargs["input_boxes"].clone()), with_kwargs=True
    )
    try:
        sam2.segment([grey], [np.array([[0, 0, 100, 60], [10, 30, 50, 45]], np.float32)])
    finally:
        hook.remove()
    # x by 256/100, y by 256/60 (the square resize does not keep the aspect ratio)
    np.testing.assert_allclose(seen[0][0].numpy(), [[0, 0, 256, 256], [25.6, 128, 128, 192]], rtol=1e-5)
    assert torch.equal(seen[0], seen[-1])


def test_sam2_masks_are_the_full_forwards_logits_upsampled(sam2: Sam2Segmenter):
    import torch
    import torch.nn.functional as F

    image, box = IMAGES[0], np.array([[10, 5, 80, 50], [0, 0, 30, 30]], np.float32)
    (masks,) = sam2.segment([image], [box])
    scaled = torch.from_numpy(box * np.array([2.56, 256 / 60, 2.56, 256 / 60], np.float32))[None]
    with torch.no_grad():  # pixel_values in one call: the path that does not reuse the embeddings
        out = sam2.model(pixel_values=sam2._pixels([image]), input_boxes=scaled, multimask_output=False)
    logits = F.interpolate(out.pred_masks[0].float(), (60, 100), mode="bilinear", align_corners=False)[:, 0]
    close = np.abs(logits.numpy()) < 1e-4  # threshold ties may flip within float rounding
    assert np.array_equal(masks[~close], (logits.numpy() > 0)[~close]) and masks.any()


def test_sam2_hub_layout_sam2_video_loads_as_the_image_model(tmp_path: Path):
    from iapas.testing.tiny import make_tiny_sam2

    folder = make_tiny_sam2(tmp_path / "sam2.1-hub-like", video=True)
    assert json.loads((folder / "config.json").read_text())["model_type"] == "sam2_video"
    seg = load_segmenter(str(folder), device="cpu")  # all image-model weights present, else refused
    assert type(seg) is Sam2Segmenter and type(seg.model).__name__ == "Sam2Model"
    assert seg.segment(IMAGES[:1], [np.array([[0, 0, 50, 50]], np.float32)])[0].shape == (1, 60, 100)


def test_both_adapters_run_in_bfloat16(tiny_models: dict[str, Path]):
    det = load_detector(str(tiny_models["owlv2"]), device="cpu", dtype="bfloat16")
    (found,) = det.detect(IMAGES[:1], "crack . hole .", box_threshold=0.0)
    assert len(found) == 36 and found.boxes.dtype == found.scores.dtype == np.float32
    seg = load_segmenter(str(tiny_models["sam2"]), device="cpu", dtype="bfloat16")
    (masks,) = seg.segment(IMAGES[:1], [np.array([[0, 0, 50, 40]], np.float32)])
    assert masks.shape == (1, 60, 100) and masks.dtype == bool


# --- refusals, forward counts, end to end ------------------------------------------------------


def test_wrong_kind_of_folder_is_refused_with_the_folder_named(tiny_models: dict[str, Path]):
    sam, owl, sam2 = (str(tiny_models[k]) for k in ("sam", "owlv2", "sam2"))
    with pytest.raises(ModelLoadError, match=f"OWLv2 detector: {sam} holds a 'sam' model; expected owlv2$"):
        Owlv2Detector.from_pretrained(sam, device="cpu")
    with pytest.raises(ModelLoadError, match=f"SAM 2 segmenter: {owl} holds a 'owlv2' model; expected sam2 or sam2_video$"):
        Sam2Segmenter.from_pretrained(owl, device="cpu")
    with pytest.raises(ModelLoadError, match=f"detector: {sam2} holds a 'sam2' model; expected .*owlv2"):
        load_detector(sam2, device="cpu")
    with pytest.raises(ModelLoadError, match=f"segmenter: {owl} holds a 'owlv2' model; expected .*sam2"):
        load_segmenter(owl, device="cpu")


def test_pipeline_forward_counts_with_owlv2_and_sam2(tiny_models: dict[str, Path]):
    pipe = Pipeline.from_config(PipelineConfig(
        detector=str(tiny_models["owlv2"]), segmenter=str(tiny_models["sam2"]), device="cpu",
        box_threshold=0.0, text_threshold=0.0,
    ))
    model, seg = pipe.detector.model, pipe.segmenter.model
    c = {name: Counter(m) for name, m in {
        "vision": model.owlv2.vision_model, "text": model.owlv2.text_model, "encoder": seg.vision_encoder,
        "decoder": seg.mask_decoder, "prompt": seg.prompt_encoder,
    }.items()}
    profile = Profile.from_prompts("tile", "tile", ["scratch", "crack", "hole", "stain"], size_threshold=1000.0)
    images = [RNG.integers(0, 255, (96, 128, 3), dtype=np.uint8) for _ in range(4)]
    results = pipe.run(images, profile)
    assert sum(len(r.kept) for r in results) > 4, "several boxes per image"
    assert c["vision"].calls == 1  # one vision pass for the batch, for the object tag and the caption
    assert c["text"].calls == 1  # all phrases of both captions in one text pass
    assert c["encoder"].calls == 1  # one SAM 2 image encoding for the batch
    assert c["decoder"].calls == c["prompt"].calls == 4  # one decoder call per image, all its boxes
    pipe.config.fuse_object_detection = True  # supported: the same numbers for OWLv2
    fused = pipe.run(images, profile)
    for a, b in zip(fused, results):
        np.testing.assert_array_equal(a.anomaly_map, b.anomaly_map)
    assert (c["vision"].calls, c["text"].calls, c["encoder"].calls) == (2, 1, 2)


def test_segment_with_owlv2_and_sam2_on_real_mtd(tmp_path: Path, tiny_models: dict[str, Path], profile_file: Path):  # noqa: F811
    picks = {"MT_Crack": 1, "MT_Break": 0, "MT_Free": 1}
    out = segment_real_mtd(tmp_path, profile_file, tiny_models["owlv2"], tiny_models["sam2"], picks)
    run = (out / "run.json").read_text()
    assert str(tiny_models["owlv2"]) in run and str(tiny_models["sam2"]) in run


def test_bench_with_an_owlv2_and_a_sam2_column(tmp_path: Path, tiny_models: dict[str, Path]):
    from tests.test_evaluation import make_mvtec

    make_mvtec(tmp_path / "data" / "MVTecAD", ("alpha",), n_good=1, n_bad=1)
    out = tmp_path / "bench"
    owl, sam2 = tiny_models["owlv2"], tiny_models["sam2"]
    args = [
        "bench", "--root-dir", str(tmp_path / "data"), "--out", str(out), "--protocol", "full",
        "--detector", str(tiny_models["grounding-dino"]), "--segmenter", str(tiny_models["sam"]), "--device", "cpu",
        "--tagger", "manual", "--tags", "widget", "--llm", "knowledge", "--quiet",
        "--ablation", f"detector={owl}", "--ablation", f"segmenter={sam2}",
    ]
    result = runner.invoke(app, args, env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    data = json.loads((out / "bench.json").read_text())
    names = ["default", "detector-owlv2", "segmenter-sam2"]
    assert [v["name"] for v in data["variants"]] == names
    (row,) = data["rows"]
    for name in names:
        assert row[name]["categories"] == 1 and row[name]["seconds_per_image"] > 0
    models = {n: json.loads((out / "mvtec" / n / "metrics.json").read_text())["models"] for n in names}
    assert (models[names[1]]["detector"], models[names[1]]["segmenter"]) == (str(owl), str(tiny_models["sam"]))
    assert (models[names[2]]["detector"], models[names[2]]["segmenter"]) == (str(tiny_models["grounding-dino"]), str(sam2))
    md = (out / "bench.md").read_text()
    assert "| detector owlv2 AP |" in md and "| segmenter sam2 s/image |" in md


# --- names and presets -------------------------------------------------------------------------


def test_names_resolve_to_the_hub_ids():
    from iapas.models import registry

    assert registry.resolve("detector", "owlv2-base") == "google/owlv2-base-patch16-ensemble"
    assert registry.resolve("detector", "owlv2-large") == "google/owlv2-large-patch14-ensemble"
    assert registry.resolve("segmenter", "sam2.1-large") == "facebook/sam2.1-hiera-large"
    assert registry.resolve("segmenter", "sam2.1-tiny") == "facebook/sam2.1-hiera-tiny"
    assert registry.resolve("segmenter", "owlv2-base") == "owlv2-base"  # a detector name is not a segmenter
    assert not any(m.gated for m in registry.MODEL_NAMES if m.family in ("OWLv2", "SAM 2.1"))


def test_presets_have_the_published_parameter_counts():
    import torch
    from transformers import Sam2VideoConfig, Sam2VideoModel

    from iapas.testing.presets import PRESETS, count_parameters

    assert abs(count_parameters("owlv2-base") - 155e6) / 155e6 < 0.005
    assert count_parameters("owlv2-large") == pytest.approx(PRESETS["owlv2-large"].published_parameters, rel=0.005)
    for name, published in (("sam2.1-tiny", 38.9e6), ("sam2.1-large", 224.4e6)):
        config = PRESETS[name].config()
        # the release's count includes the video memory modules: count the video model of this config
        video = Sam2VideoConfig(
            vision_config=config.vision_config.to_dict(), prompt_encoder_config=config.prompt_encoder_config.to_dict(),
            mask_decoder_config=config.mask_decoder_config.to_dict(),
        )
        with torch.device("meta"):
            n = sum(p.numel() for p in Sam2VideoModel(video).parameters())
        assert abs(n - published) / published < 0.005, (name, n)
        assert count_parameters(name) < n  # Sam2Model, the image model, leaves them out


def test_owlv2_stand_in_tokenizer_has_clip_shape():
    from iapas.testing.presets import CLIP_VOCAB_SIZE, make_processor

    processor = make_processor("owlv2", image_size=1008)
    tok = processor.tokenizer
    assert len(tok) == CLIP_VOCAB_SIZE == 49408
    ids = tok("crack")["input_ids"]
    assert ids[0] == 49406 and ids[-1] == 49407 and len(ids) == 3  # a whole word between start and end
    assert processor.image_processor.size.height == 1008


def test_sam2_tiny_preset_is_written_and_loads_through_the_loader(tmp_path: Path):
    result = runner.invoke(app, ["testing", "make-random-models", str(tmp_path), "--preset", "sam2.1-tiny"])
    assert result.exit_code == 0, result.output
    seg = load_segmenter(str(tmp_path / "sam2.1-tiny"), device="cpu")
    assert seg.input_size == (1024, 1024)
    assert sum(p.numel() for p in seg.model.parameters()) == pytest.approx(31.4e6, rel=0.005)
