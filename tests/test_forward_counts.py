"""Model forwards per image, counted with hooks on the real (tiny) modules.

The work per image is one detector forward for the object, one for the caption, one SAM image
encoding and one batched mask decoding; a regression to per-box or per-prompt forwards fails here.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from iapas.pipeline.stage2 import Pipeline, PipelineConfig
from iapas.product.profile import Profile


class Counter:
    def __init__(self, module) -> None:
        self.calls = 0
        self.batch_sizes: list[int] = []
        module.register_forward_hook(self._hook)

    def _hook(self, module, args, output) -> None:
        self.calls += 1


@pytest.fixture(scope="module")
def counted(tiny_models: dict[str, Path]):
    pipe = Pipeline.from_config(
        PipelineConfig(detector=str(tiny_models["grounding-dino"]), segmenter=str(tiny_models["sam"]), device="cpu")
    )
    counters = {
        "detector": Counter(pipe.detector.model),
        "encoder": Counter(pipe.segmenter.model.vision_encoder),
        "decoder": Counter(pipe.segmenter.model.mask_decoder),
        "prompt": Counter(pipe.segmenter.model.prompt_encoder),
    }
    return pipe, counters


def images(n: int, shapes: list[tuple[int, int]] | None = None) -> list[np.ndarray]:
    """``n`` random images, all 96x128 (one camera) unless ``shapes`` are given."""
    rng = np.random.default_rng(n)
    shapes = shapes or [(96, 128)] * n
    return [rng.integers(0, 255, (*shapes[i], 3), dtype=np.uint8) for i in range(n)]


PROFILE = Profile.from_prompts("bottle", "bottle", ["scratch", "crack", "hole", "stain"], size_threshold=1000.0)


@pytest.mark.parametrize(("n", "batch"), [(1, 1), (4, 1), (4, 4), (5, 2)])
def test_forwards_per_image(counted, n: int, batch: int):
    pipe, counters = counted
    for c in counters.values():
        c.calls = 0
    pipe.config.fuse_object_detection = False
    batches = [images(n)[i : i + batch] for i in range(0, n, batch)]
    results = [r for b in batches for r in pipe.run(b, PROFILE)]
    boxes = sum(len(r.kept) for r in results)
    assert boxes > n, "several boxes per image, so per-box decoding would show"
    assert counters["detector"].calls == 2 * len(batches)  # object + caption, each once per batch
    assert counters["encoder"].calls == len(batches)  # one encoder pass per batch of images
    assert counters["decoder"].calls == n  # one decoder call per image, all boxes at once
    assert counters["prompt"].calls == n


def test_fused_object_detection_saves_one_forward(counted):
    pipe, counters = counted
    for c in counters.values():
        c.calls = 0
    pipe.config.fuse_object_detection = True
    try:
        results = pipe.run(images(3), PROFILE)
    finally:
        pipe.config.fuse_object_detection = False
    assert counters["detector"].calls == 1
    for r in results:
        assert r.object_size_source in ("detected", "default")
        if r.object_box is not None:
            assert 0 < r.object_size <= 1


def test_fused_object_scores_come_from_the_object_tokens(counted):
    pipe, _ = counted
    det = pipe.detector
    ims = images(2)
    anomalies, objects = det.detect_with_object(ims, PROFILE.caption, "bottle", box_threshold=0.1, text_threshold=0.1)
    probs, boxes, ids = det._forward(det._pixels(ims), PROFILE.caption)
    positions = det._phrase_positions(ids, "bottle")
    assert positions.size == 1 and ids[positions[0]] == det.processor.tokenizer.convert_tokens_to_ids("bottle")
    for i, obj in enumerate(objects):
        expected = probs[i][:, positions].max(axis=-1)
        np.testing.assert_allclose(np.sort(obj.scores), np.sort(expected[expected > 0.1]), rtol=1e-5)
    separate = det.detect(ims, PROFILE.caption, box_threshold=0.1, text_threshold=0.1)
    for a, b in zip(anomalies, separate):
        np.testing.assert_allclose(a.scores, b.scores, rtol=1e-5)
    with pytest.raises(ValueError, match="not in the caption"):
        det.detect_with_object(ims, "scratch . defect .", "bottle")


def test_fast_preprocessing_equals_the_processor(counted):
    import torch

    pipe, _ = counted
    det = pipe.detector
    assert det._fast_preprocessing()
    rng = np.random.default_rng(5)
    ims = [rng.integers(0, 255, shape, dtype=np.uint8) for shape in [(96, 128, 3), (300, 90, 3), (320, 320, 3)]]
    ims.append(ims[0][::2, ::2])  # a non-contiguous, read-only view
    ims[-1].flags.writeable = False
    reference = det.processor.image_processor(images=ims, return_tensors="pt")
    fast = det._pixels_fast(ims)
    assert fast["pixel_values"].shape == reference["pixel_values"].shape
    assert torch.equal(fast["pixel_mask"], reference["pixel_mask"])
    assert (fast["pixel_values"] - reference["pixel_values"]).abs().max() < 1e-5


def test_mixed_sizes_give_the_same_boxes_batched_as_one_by_one(counted):
    """A padded batch would change each image's boxes (the backbone sees the padding): images
    are grouped by resized shape, one forward per group."""
    pipe, counters = counted
    det = pipe.detector
    shapes = [(96, 128), (200, 80), (96, 128), (150, 150)]
    ims = images(4, shapes)
    for c in counters.values():
        c.calls = 0
    batched = det.detect(ims, PROFILE.caption, box_threshold=0.1, text_threshold=0.1)
    assert counters["detector"].calls == 3  # three distinct shapes
    for image, dets in zip(ims, batched):
        alone = det.detect([image], PROFILE.caption, box_threshold=0.1, text_threshold=0.1)[0]
        assert len(dets) == len(alone) > 0
        np.testing.assert_allclose(dets.scores, alone.scores, rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(dets.boxes, alone.boxes, rtol=1e-4, atol=1e-3)
        assert dets.phrases == alone.phrases
    fused, objects = det.detect_with_object(ims, PROFILE.caption, "bottle")
    for a, b in zip(fused, batched):
        np.testing.assert_allclose(a.scores, b.scores, rtol=1e-4, atol=1e-6)
    assert len(objects) == 4


@pytest.mark.parametrize(
    ("module", "field", "value", "message"),
    [
        ("detector", "logits", float("nan"), r"Grounding DINO .* NaN/inf logits \(float32 on cpu\): check the model files"),
        ("segmenter", "pred_masks", float("inf"), r"SAM .* NaN/inf masks"),
    ],
)
def test_nan_model_outputs_fail_loudly_instead_of_an_empty_map(counted, module: str, field: str, value: float, message: str):
    """A half-precision overflow gives NaN logits, which no threshold passes: that must be an
    error naming the dtype, not an image 'without defects'. A RuntimeError, so the runner fails
    the batch and goes on."""
    import torch

    from iapas.models import ModelOutputError

    pipe, _ = counted

    def poison(_module, _args, output):
        setattr(output, field, torch.full_like(getattr(output, field), value))
        return output

    handle = getattr(pipe, module).model.register_forward_hook(poison)
    try:
        with pytest.raises(ModelOutputError, match=message) as caught:
            pipe.run(images(1), PROFILE)
    finally:
        handle.remove()
    assert isinstance(caught.value, RuntimeError)
