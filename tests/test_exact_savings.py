"""The exact savings give the maps of the plain path, bit for bit (CPU float32, tiny models).

Each saving is a switch on the adapters (on by default); these tests run the same images with
it off and on and compare the maps, boxes and scores exactly, and count the forwards it saves.
SAM's device preprocessing is the one saving that equals the processor to float32 rounding
rather than bitwise: its pixel values are pinned to 1e-5 (values of magnitude <= 2.7).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from iapas.pipeline.stage2 import Pipeline, PipelineConfig
from iapas.product.profile import Profile

PROFILE = Profile.from_prompts("bottle", "bottle", ["scratch", "crack", "hole", "stain"], size_threshold=1000.0)


@pytest.fixture(scope="module")
def pipe(tiny_models: dict[str, Path]) -> Pipeline:
    return Pipeline.from_config(
        PipelineConfig(detector=str(tiny_models["grounding-dino"]), segmenter=str(tiny_models["sam"]), device="cpu")
    )


def images(n: int, shape: tuple[int, int] = (96, 128), seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 255, (*shape, 3), dtype=np.uint8) for _ in range(n)]


def run_with(pipe: Pipeline, switches: dict[str, bool], batches: list[list[np.ndarray]]):
    owners = {"share_backbone": pipe.detector, "cache_text_features": pipe.detector,
              "fast_preprocessing": pipe.segmenter, "batched_postprocess": pipe.segmenter}
    saved = {k: getattr(owners[k], k) for k in switches}
    for k, v in switches.items():
        setattr(owners[k], k, v)
    try:
        return [r for b in batches for r in pipe.run(b, PROFILE)]
    finally:
        for k, v in saved.items():
            setattr(owners[k], k, v)


def assert_same_results(a, b) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.anomaly_map.dtype == y.anomaly_map.dtype
        assert np.array_equal(x.anomaly_map, y.anomaly_map)
        assert np.array_equal(x.kept.boxes, y.kept.boxes) and np.array_equal(x.kept.scores, y.kept.scores)
        assert x.kept.phrases == y.kept.phrases
        assert np.array_equal(x.masks, y.masks)
        assert x.object_size == y.object_size


class Calls:
    def __init__(self, module) -> None:
        self.n = 0
        self.handle = module.register_forward_hook(self._hook)

    def _hook(self, *_args) -> None:
        self.n += 1


def test_shared_backbone_is_bitwise_and_runs_once_per_batch(pipe):
    swin = Calls(pipe.detector.model.model.backbone.conv_encoder)
    batches = [images(1, seed=1), images(1, shape=(150, 90), seed=2)]
    try:
        plain = run_with(pipe, {"share_backbone": False, "cache_text_features": False}, batches)
        assert swin.n == 2 * 2  # object tag and caption, per batch
        swin.n = 0
        shared = run_with(pipe, {"share_backbone": True, "cache_text_features": False}, batches)
        assert swin.n == 2  # once per batch
    finally:
        swin.handle.remove()
    assert sum(len(r.kept) for r in plain) > 0
    assert_same_results(plain, shared)
    assert "forward" not in vars(pipe.detector.model.model.backbone)  # only patched inside the group


def test_text_feature_cache_is_bitwise_and_reused_across_images(pipe):
    bert = Calls(pipe.detector.model.model.text_backbone.embeddings)
    batches = [images(1, seed=s) for s in range(2)]
    pipe.detector.text_memo.clear()
    try:
        plain = run_with(pipe, {"cache_text_features": False}, batches)
        assert bert.n == 2 * 2
        bert.n = 0
        cached = run_with(pipe, {"cache_text_features": True}, batches)
        assert bert.n == 2  # the object tag and the caption, once each for both images
    finally:
        bert.handle.remove()
    assert_same_results(plain, cached)
    # another caption is computed, not answered from the memo
    other = Profile.from_prompts("bottle", "bottle", ["dent"], size_threshold=1000.0)
    before = pipe.detector.text_memo.calls
    pipe.run(batches[0], other)
    assert pipe.detector.text_memo.calls == before + 1  # 'bottle' is cached, the new caption is not


def test_sam_device_preprocessing_equals_the_processor(pipe):
    import torch

    seg = pipe.segmenter
    assert seg._standard_processor()
    rng = np.random.default_rng(3)
    ims = [rng.integers(0, 255, shape, dtype=np.uint8) for shape in [(96, 128, 3), (300, 90, 3), (256, 256, 3)]]
    ims.append(ims[0][::2, ::2])  # a non-contiguous, read-only view
    ims[-1].flags.writeable = False
    reference = seg.image_processor(images=ims, return_tensors="pt")
    values, original, reshaped = seg._pixels_fast(ims)
    assert values.shape == reference["pixel_values"].shape
    assert original == [tuple(int(v) for v in s) for s in reference["original_sizes"]]
    assert reshaped == [tuple(int(v) for v in s) for s in reference["reshaped_input_sizes"]]
    assert (values - reference["pixel_values"]).abs().max() < 1e-5
    for i, (h, w) in enumerate(reshaped):
        assert torch.count_nonzero(values[i, :, h:, :]) == 0 and torch.count_nonzero(values[i, :, :, w:]) == 0
    batches = [images(1, seed=4)]
    plain = run_with(pipe, {"fast_preprocessing": False}, batches)
    fast = run_with(pipe, {"fast_preprocessing": True}, batches)
    for a, b in zip(plain, fast):  # float32 rounding of the pixels: at most a few edge pixels move
        assert np.mean(a.masks != b.masks) < 1e-3 if a.masks.size else True
        np.testing.assert_allclose(a.anomaly_map, b.anomaly_map, atol=1.0)
        assert np.mean(a.anomaly_map != b.anomaly_map) < 1e-3


def test_batched_mask_postprocessing_is_bitwise(pipe):
    seg = pipe.segmenter
    rng = np.random.default_rng(7)
    image = rng.integers(0, 255, (120, 200, 3), dtype=np.uint8)
    xy = rng.uniform(0, 100, (40, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(5, 90, (40, 2))], axis=1).astype(np.float32)  # > one 32-box chunk
    seg.batched_postprocess = False
    try:
        chunked = seg.segment([image, image[:60]], [boxes, boxes[:3] / 2])
    finally:
        seg.batched_postprocess = True
    batched = seg.segment([image, image[:60]], [boxes, boxes[:3] / 2])
    for a, b in zip(chunked, batched):
        assert a.dtype == b.dtype == bool and a.shape == b.shape
        assert np.array_equal(a, b)
    assert batched[0].shape == (40, 120, 200) and batched[0].any()


def test_all_savings_together_keep_the_maps(pipe):
    batches = [images(1, seed=8), images(1, seed=9)]
    off = {"share_backbone": False, "cache_text_features": False, "batched_postprocess": False, "fast_preprocessing": False}
    on = {k: True for k in off}
    on["fast_preprocessing"] = False  # the one non-bitwise saving is pinned above
    assert_same_results(run_with(pipe, off, batches), run_with(pipe, on, batches))
