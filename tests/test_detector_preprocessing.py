"""The detector's preprocessing and text handling are the original Grounding DINO's.

Resize: the original's ``datasets/transforms.py`` rule (written out below from its code, and a
table made by rf-groundingdino's transform itself, ``benchmarks/reference_side.py resize-table``),
not transformers' size helper, which gives a long side one pixel longer for many capped shapes.
Phrases: the tiny tokenizer has bert-base-uncased's ids for [CLS], [SEP], "." and "?", which
transformers' Grounding DINO hard-codes as phrase delimiters, so the tiny model splits a caption
into phrases as the real one does.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from iapas.models.detector import GroundingDinoDetector, original_resized_shape

DATA = Path(__file__).parent / "data"


def groundingdino_get_size_with_aspect_ratio(image_size, size, max_size=None):
    """GroundingDINO ``datasets/transforms.py`` ``resize.get_size_with_aspect_ratio``, verbatim
    but for the argument order of ``image_size`` (the original takes PIL's (w, h))."""
    w, h = image_size
    if max_size is not None:
        min_original_size = float(min((w, h)))
        max_original_size = float(max((w, h)))
        if max_original_size / min_original_size * size > max_size:
            size = int(round(max_size * min_original_size / max_original_size))

    if (w <= h and w == size) or (h <= w and h == size):
        return (h, w)

    if w < h:
        ow = size
        oh = int(size * h / w)
    else:
        oh = size
        ow = int(size * w / h)

    return (oh, ow)


SHAPES = [(h, w) for h in range(40, 1700, 37) for w in range(40, 1700, 53)]


@pytest.mark.parametrize(("size", "max_size"), [(800, 1333), (320, 533)])
def test_resize_rule_is_the_original_code(size: int, max_size: int):
    for h, w in SHAPES:
        assert original_resized_shape(h, w, size, max_size) == groundingdino_get_size_with_aspect_ratio((w, h), size, max_size), (h, w)


def test_resize_of_the_capped_dataset_shapes_by_hand():
    # 250x700: short side round(1333*250/700) = 476, long side int(476*700/250) = int(1332.8)
    assert original_resized_shape(250, 700, 800, 1333) == (476, 1332)
    assert original_resized_shape(500, 1257, 800, 1333) == (530, 1332)  # KSDD1
    assert original_resized_shape(1257, 500, 800, 1333) == (1332, 530)
    assert original_resized_shape(232, 640, 800, 1333) == (483, 1332)  # KSDD2
    assert original_resized_shape(600, 800, 800, 1333) == (800, 1066)  # uncapped
    assert original_resized_shape(800, 900, 800, 1333) == (800, 900)  # already the size


def test_resize_equals_rf_groundingdino_transform():
    """Sizes the original transform itself produced on real PIL images (rf-groundingdino 0.3.0)."""
    table = json.loads((DATA / "gdino_original_resize.json").read_text())
    rows = table["rows"]
    assert len(rows) > 100
    for size, max_size, h, w, oh, ow in rows:
        assert original_resized_shape(h, w, size, max_size) == (oh, ow), (size, max_size, h, w)


@pytest.fixture(scope="module")
def detector(tiny_models: dict[str, Path]) -> GroundingDinoDetector:
    return GroundingDinoDetector.from_pretrained(str(tiny_models["grounding-dino"]), device="cpu")


def test_detector_resizes_capped_images_by_the_original_rule(detector: GroundingDinoDetector, monkeypatch):
    """The tiny processor's 320/533: 250x700 is 190x532 in the original (transformers: 190x533).
    Both preprocessing paths give that shape, and the values of a PIL bilinear resize to it."""
    from PIL import Image

    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (250, 700, 3), dtype=np.uint8)
    assert detector._resized_shape(image) == (190, 532)
    assert detector._shape_groups([image, image[:, :699], image]) == [[0, 2], [1]]  # 250x699: 190x531
    fast = detector._pixels([image])
    assert detector._fast_preprocessing()
    monkeypatch.setattr(detector, "_fast_preprocessing", lambda: False)
    slow = detector._pixels([image])
    assert tuple(fast["pixel_values"].shape) == tuple(slow["pixel_values"].shape) == (1, 3, 190, 532)
    assert int(slow["pixel_mask"].sum()) == int(fast["pixel_mask"].sum()) == 190 * 532
    ip = detector.processor.image_processor
    resized = np.asarray(Image.fromarray(image).resize((532, 190), Image.Resampling.BILINEAR), dtype=np.float32)
    expected = (resized / 255.0 - np.array(ip.image_mean, dtype=np.float32)) / np.array(ip.image_std, dtype=np.float32)
    for out in (fast, slow):
        np.testing.assert_allclose(out["pixel_values"][0].permute(1, 2, 0).numpy(), expected, atol=1e-5)


def test_tiny_vocabulary_has_bert_base_delimiter_ids(detector: GroundingDinoDetector):
    from transformers.models.grounding_dino import modeling_grounding_dino

    tok = detector.processor.tokenizer
    ids = tok.convert_tokens_to_ids(["[CLS]", "[SEP]", ".", "?", "[PAD]", "[UNK]", "[MASK]"])
    assert ids == [101, 102, 1012, 1029, 0, 100, 103]
    assert modeling_grounding_dino.SPECIAL_TOKENS == ids[:4]  # what the model splits at
    assert tok("scratch . crack hole ?")["input_ids"] == [101, tok.convert_tokens_to_ids("scratch"), 1012,
                                                          *tok.convert_tokens_to_ids(["crack", "hole"]), 1029, 102]
    assert detector.model.config.text_config.vocab_size == len(tok) == 1030


def test_tiny_detector_splits_the_caption_into_phrases(detector: GroundingDinoDetector):
    """As the original's ``generate_masks_with_special_tokens_and_transfer_map``: each phrase with
    its closing '.' attends only to itself, positions restart per phrase; so a phrase's text
    features do not depend on the other phrases (checked on the model's own BERT output)."""
    import torch

    from transformers.models.grounding_dino.modeling_grounding_dino import (
        generate_masks_with_special_tokens_and_transfer_map,
    )

    tok = detector.processor.tokenizer
    ids = torch.tensor([tok("scratch . crack hole .")["input_ids"]])  # [CLS] s . c h . [SEP]
    mask, positions = generate_masks_with_special_tokens_and_transfer_map(ids, detector.model.model.special_tokens)
    expected = np.eye(7, dtype=bool)
    expected[1:3, 1:3] = True  # "scratch ."
    expected[3:6, 3:6] = True  # "crack hole ."
    assert np.array_equal(mask[0].numpy(), expected)
    assert positions[0].tolist() == [0, 0, 1, 0, 1, 2, 0]

    features = []
    hook = detector.model.model.text_backbone.register_forward_hook(
        lambda module, args, output: features.append(output.last_hidden_state[0].clone())
    )
    try:
        image = np.random.default_rng(1).integers(0, 255, (64, 64, 3), dtype=np.uint8)
        detector.cache_text_features = False
        for caption in ("scratch . crack hole .", "scratch . stain ."):
            detector.detect([image], caption)
    finally:
        hook.remove()
        detector.cache_text_features = True
    assert torch.equal(features[0][1:3], features[1][1:3])  # "scratch ." alone in its phrase
    assert not torch.equal(features[0][3:5], features[1][3:5])
