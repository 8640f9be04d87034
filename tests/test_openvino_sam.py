"""SAM and SAM-HQ on the OpenVINO runtime: the same masks as eager on the tiny models.

The tiny models get weights from :func:`iapas.testing.reference_weights.seeded_tensor` (unit-
scale, unlike the ~1e-10 weights a fresh transformers SAM gets, whose embeddings are ~1e-20
and whose masks hardly depend on the image), so the comparison sees real activations.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("openvino")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

EMBEDDING_RTOL = 1e-5  # max |ov - eager| / max |eager| of the image embeddings (measured ~5e-7)
LOGIT_RTOL = 1e-4  # the same for the decoder's low-resolution mask logits (measured ~1e-6)


def _seeded_sam(out: Path, hq: bool, seed: int = 7) -> Path:
    """A tiny SAM (SAM-HQ) folder with unit-scale seeded weights."""
    from transformers import AutoConfig, AutoModel

    from iapas.testing.reference_weights import seeded_tensor
    from iapas.testing.tiny import make_tiny_sam

    folder = make_tiny_sam(out, image_size=256, hq=hq)
    config = AutoConfig.from_pretrained(folder)
    config.vision_config.window_size = 6  # 16 tokens a side padded to 18, as real SAM pads 64 to 70
    model = AutoModel.from_config(config).eval()
    model.load_state_dict({k: seeded_tensor(k, v.shape, seed) for k, v in model.state_dict().items()})
    model.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("ov_sam")
    return {"sam": _seeded_sam(root / "sam", hq=False), "sam-hq": _seeded_sam(root / "sam-hq", hq=True)}


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("ov_cache")


def _images() -> list[np.ndarray]:
    rng = np.random.default_rng(3)
    shapes = [(200, 300), (256, 256), (384, 512)]  # landscape, square, larger than S: resized
    images = []
    for h, w in shapes:
        yy, xx = np.mgrid[0:h, 0:w]
        base = np.stack([(xx * 255 // w), (yy * 255 // h), ((xx + yy) * 127 // (h + w))], axis=-1)
        images.append(np.clip(base + rng.integers(0, 40, (h, w, 3)), 0, 255).astype(np.uint8))
    return images


def _boxes(image: np.ndarray, n: int, seed: int) -> np.ndarray:
    h, w = image.shape[:2]
    rng = np.random.default_rng(seed)
    x0, y0 = rng.uniform(0, w * 0.6, n), rng.uniform(0, h * 0.6, n)
    return np.stack([x0, y0, x0 + rng.uniform(8, w * 0.4, n), y0 + rng.uniform(8, h * 0.4, n)], axis=1).astype(np.float32)


@pytest.mark.parametrize("kind", ["sam", "sam-hq"])
def test_openvino_masks_equal_eager(folders: dict[str, Path], cache: Path, kind: str) -> None:
    """Binary masks bit-equal to eager's for 0, 1, 3 and 7 boxes on three image sizes (the
    decoder's dynamic box count), in one batch; embeddings and logits to the stated bounds."""
    import torch

    from iapas.models.segmenter import SamHQSegmenter, SamSegmenter

    eager = SamSegmenter.from_pretrained(str(folders[kind]), device="cpu", dtype="float32")
    ov = SamSegmenter.from_pretrained(str(folders[kind]), device="auto", runtime="openvino", ov_cache=cache)
    assert type(ov) is type(eager) is (SamHQSegmenter if kind == "sam-hq" else SamSegmenter)
    assert ov.ov is not None and eager.ov is None and ov.device == "cpu"
    images = _images()
    boxes = [_boxes(images[0], 3, 1), _boxes(images[1], 0, 2), _boxes(images[2], 7, 3)]
    expected, got = eager.segment(images, boxes), ov.segment(images, boxes)
    for e, g, b, image in zip(expected, got, boxes, images):
        assert g.dtype == bool and g.shape == e.shape == (len(b), *image.shape[:2])
        assert np.array_equal(g, e)
    assert 0.02 < np.mean(expected[0]) < 0.98  # masks that depend on the logits, not all one value
    single = [_boxes(images[1], 1, 4)]
    assert np.array_equal(ov.segment(images[1:2], single)[0], eager.segment(images[1:2], single)[0])

    pixels = eager._pixels(images)[0]
    with torch.inference_mode():
        ref, out = eager._embed(pixels), ov._embed(pixels)
        ref_t, out_t = (ref[0], out[0]) if kind == "sam-hq" else (ref, out)
        assert (ref_t - out_t).abs().max() <= EMBEDDING_RTOL * ref_t.abs().max()
        if kind == "sam-hq":  # the HQ decoder's input: the first global block's hidden states
            assert (ref[1][0] - out[1][0]).abs().max() <= EMBEDDING_RTOL * ref[1][0].abs().max()
        input_boxes = torch.from_numpy(_boxes(images[2], 5, 9) * 0.5)[None]
        logits_ref = eager._decode_boxes(ref, 2, input_boxes).pred_masks
        logits_ov = ov._decode_boxes(ref, 2, input_boxes).pred_masks
    assert logits_ov.shape == logits_ref.shape == (1, 5, 1, 64, 64)
    assert (logits_ref - logits_ov).abs().max() <= LOGIT_RTOL * logits_ref.abs().max()
    ov.ov.decode_chunk = 2  # many boxes go to the decoder in chunks (2 + 2 + 1 here): same masks, in order
    with torch.inference_mode():
        chunked = ov._decode_boxes(ref, 2, input_boxes).pred_masks
    assert chunked.shape == logits_ref.shape and (logits_ref - chunked).abs().max() <= LOGIT_RTOL * logits_ref.abs().max()
    assert np.array_equal(ov.segment(images[2:], boxes[2:])[0], expected[2])  # 7 boxes: 4 calls


@pytest.fixture(scope="module")
def converted(folders: dict[str, Path], cache: Path) -> Path:
    """The module's cache with the tiny SAM's two graphs in it."""
    from iapas.models.segmenter import SamSegmenter

    SamSegmenter.from_pretrained(str(folders["sam"]), device="cpu", runtime="openvino", ov_cache=cache)
    return cache


def _conversions(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith("converted ")]


@pytest.mark.parametrize("kind", ["sam", "sam-hq"])
def test_the_lighter_encoder_traced_for_openvino_is_eagers_bit_for_bit(folders: dict[str, Path], kind: str) -> None:
    """The rewritten vision blocks (activation between reshapes; a windowed block's qkv before
    the padding, proj after the crop) compute eager's very numbers with torch, on a batch of two
    with padded windows, and leave the model as it was."""
    import torch
    from transformers import AutoModel

    from iapas.models.ov.sam import _lighter_encoder

    model = AutoModel.from_pretrained(folders[kind]).eval()
    layers = model.vision_encoder.layers
    assert [layer.window_size for layer in layers] == [6, 0]  # one windowed block (padded), one global
    x = torch.from_numpy(np.random.default_rng(5).standard_normal((2, 3, 256, 256)).astype(np.float32))

    def encode() -> list:
        with torch.no_grad():
            out = model.vision_encoder(x)
        return [out[0], *out[1]] if kind == "sam-hq" else [out[0]]

    eager = encode()
    hooked = layers[0].mlp.forward  # an instance's own forward (a hook or wrapper) comes back after
    layers[0].mlp.forward = hooked
    with _lighter_encoder(model):
        assert all("forward" in layer.mlp.__dict__ for layer in layers)
        assert ["forward" in layer.__dict__ for layer in layers] == [True, False]
        lighter = encode()
    assert all(torch.equal(a, b) for a, b in zip(lighter, eager, strict=True))
    assert layers[0].mlp.__dict__.pop("forward") is hooked
    assert not any("forward" in m.__dict__ for layer in layers for m in (layer, layer.mlp))
    assert all(torch.equal(a, b) for a, b in zip(encode(), eager, strict=True))


def test_cache_reused_then_rebuilt_when_the_model_changes(
    folders: dict[str, Path], converted: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A copy of a converted model (same content, so same fingerprint) only reads the cache;
    new weights in that folder (a new fingerprint) convert both graphs again beside the old
    entries, never reuse them, and give eager's masks."""
    import shutil

    from iapas.models.ov.source import source_fingerprint
    from iapas.models.segmenter import SamSegmenter

    def entries() -> list[str]:
        return sorted(p.name for p in converted.iterdir() if p.is_dir() and p.name.startswith("sam-sam-"))

    before = entries()
    assert len(before) == 2 and before[0].startswith("sam-sam-image-encoder-") and before[1].startswith("sam-sam-mask-decoder-")
    folder = tmp_path / "sam"
    shutil.copytree(folders["sam"], folder)
    with caplog.at_level(logging.INFO, logger="iapas.models.ov"):
        SamSegmenter.from_pretrained(str(folder), device="cpu", runtime="openvino", ov_cache=converted)
    assert _conversions(caplog) == [] and entries() == before

    _seeded_sam(folder, hq=False, seed=8)  # other weights in the same folder
    with caplog.at_level(logging.INFO, logger="iapas.models.ov"):
        reloaded = SamSegmenter.from_pretrained(str(folder), device="cpu", runtime="openvino", ov_cache=converted)
    assert len(_conversions(caplog)) == 2  # the image encoder and the mask decoder
    assert len(entries()) == 4 and set(before) < set(entries())
    eager = SamSegmenter.from_pretrained(str(folder), device="cpu")
    first = SamSegmenter.from_pretrained(str(folders["sam"]), device="cpu")
    # a model known by name only (built in memory): its weights complete the key
    keys = {source_fingerprint("stand-in", m.model, "sam-graph=2") for m in (eager, first, eager)}
    assert len(keys) == 2 and all(k.startswith("name:stand-in;weights=sha256:") for k in keys)
    image = _images()[1]
    boxes = [_boxes(image, 4, 5)]
    assert np.array_equal(reloaded.segment([image], boxes)[0], eager.segment([image], boxes)[0])


def test_bad_runtime_settings_are_refused_in_one_line(folders: dict[str, Path], cache: Path) -> None:
    """float16 weights, a GPU device or an unknown runtime: one line naming the segmenter."""
    from iapas.models.segmenter import SamSegmenter

    folder = str(folders["sam"])
    with pytest.raises(ValueError, match=r"^segmenter .*sam: the openvino runtime converts float32 models; got torch.float16 \(use --dtype float32\)$"):
        SamSegmenter.from_pretrained(folder, device="cpu", dtype="float16", runtime="openvino", ov_cache=cache)
    eager = SamSegmenter.from_pretrained(folder, device="cpu")
    with pytest.raises(ValueError, match=r"^segmenter .*sam: the openvino runtime runs on the CPU; got device cuda \(use --device cpu\)$"):
        SamSegmenter(eager.model, eager.image_processor, "cuda", eager.dtype, folder, runtime="openvino", ov_cache=cache)
    with pytest.raises(ValueError, match=r"^segmenter .*sam: unknown runtime 'onnx'; expected torch or openvino$"):
        SamSegmenter(eager.model, eager.image_processor, "cpu", eager.dtype, folder, runtime="onnx")
    assert not any(cache.glob("*float16*"))
