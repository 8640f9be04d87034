"""Real-size random presets: the hub models' architectures, checked by parameter count."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from iapas.testing.presets import BERT_VOCAB_SIZE, PRESETS, count_parameters, stand_in_bert_vocab

# Published sizes (model cards / papers): SAM ViT-H 641 M, ViT-L 312 M, ViT-B 94 M (93.7 M);
# Grounding DINO Swin-T 172 M, Swin-B 233 M (232.3 M counted by transformers).
PUBLISHED = {
    "sam-vit-huge": 641e6,
    "sam-vit-large": 312e6,
    "sam-vit-base": 94e6,
    "grounding-dino-tiny": 172e6,
    "grounding-dino-base": 233e6,
}


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_preset_has_the_published_parameter_count(name: str):
    n = count_parameters(name)  # on the meta device: no memory, no initialisation
    assert abs(n - PUBLISHED[name]) / PUBLISHED[name] < 0.005, n
    assert PRESETS[name].published_parameters == int(PUBLISHED[name])


def test_stand_in_vocabulary_has_bert_base_uncased_shape():
    vocab = stand_in_bert_vocab()
    assert len(vocab) == BERT_VOCAB_SIZE == len(set(vocab.values()))
    assert sorted(vocab.values()) == list(range(BERT_VOCAB_SIZE))
    assert [vocab[t] for t in ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")] == [0, 100, 101, 102, 103]


def test_unknown_preset_fails_before_writing(tmp_path: Path):
    from iapas.cli import app

    result = CliRunner().invoke(app, ["testing", "make-random-models", str(tmp_path / "m"), "--preset", "sam-vit-base", "--preset", "sam-vit-giant"])
    assert result.exit_code == 2
    assert "unknown preset 'sam-vit-giant'" in result.output
    assert not (tmp_path / "m").exists()


@pytest.mark.slow
def test_sam_vit_base_preset_loads_through_the_loader(tmp_path: Path):
    """The cheapest preset (94 M parameters, ~375 MB) written by the CLI and loaded as a hub
    folder is: about 10 s on 2 cores."""
    from iapas.cli import app
    from iapas.models.segmenter import SamSegmenter

    result = CliRunner().invoke(app, ["testing", "make-random-models", str(tmp_path), "--preset", "sam-vit-base"])
    assert result.exit_code == 0, result.output
    assert "noise" in result.output
    seg = SamSegmenter.from_pretrained(str(tmp_path / "sam-vit-base"), device="cpu", dtype="float32")
    assert sum(p.numel() for p in seg.model.parameters()) == count_parameters("sam-vit-base")
    assert seg.model.config.vision_config.hidden_size == 768
    assert seg._standard_processor() and int(seg.image_processor.size.longest_edge) == 1024


def test_mm_grounding_dino_and_sam_hq_presets_are_their_classes_and_load_in_their_adapters():
    """The two presets without a published count: the real classes, SAM-HQ = SAM-H plus the HQ
    token's modules (its paper: about 0.5% more), MM-Grounding-DINO tiny = Grounding DINO tiny's
    Swin-T and BERT, and each processor the one its adapter reads."""
    import torch
    from transformers import GroundingDinoProcessor, SamHQProcessor

    from iapas.testing.presets import _model_class, make_processor

    mm, hq = PRESETS["mm-grounding-dino-tiny"], PRESETS["sam-hq-vit-huge"]
    with torch.device("meta"):
        assert type(_model_class(mm.kind)(mm.config())).__name__ == "MMGroundingDinoForObjectDetection"
        assert type(_model_class(hq.kind)(hq.config())).__name__ == "SamHQModel"
    assert count_parameters("mm-grounding-dino-tiny") == mm.published_parameters
    assert abs(count_parameters("mm-grounding-dino-tiny") - count_parameters("grounding-dino-tiny")) < 10
    assert count_parameters("sam-hq-vit-huge") == hq.published_parameters
    extra = count_parameters("sam-hq-vit-huge") / count_parameters("sam-vit-huge") - 1
    assert 0.001 < extra < 0.006, extra
    assert isinstance(make_processor(mm.kind), GroundingDinoProcessor)
    assert isinstance(make_processor(hq.kind), SamHQProcessor)
    # LLMDet tiny is MM-Grounding-DINO tiny's architecture with other weights
    llmdet = PRESETS["llmdet-tiny"]
    assert llmdet.kind == mm.kind and llmdet.hub_id == "iSEE-Laboratory/llmdet_tiny"
    assert llmdet.config().to_dict() == mm.config().to_dict()


def _tiny_detector_outputs(tmp_path: Path, score: tuple[float, float] | None):
    """A tiny Grounding DINO given seed_weights(score) and its outputs on one random image."""
    import numpy as np
    import torch
    from PIL import Image
    from transformers import AutoModelForZeroShotObjectDetection, AutoProcessor

    from iapas.testing import make_tiny_grounding_dino
    from iapas.testing.presets import seed_weights

    folder = make_tiny_grounding_dino(tmp_path / "gd")
    model = AutoModelForZeroShotObjectDetection.from_pretrained(folder).eval()
    seed_weights(model, 0, score)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (200, 260, 3), dtype=np.uint8))
    inputs = AutoProcessor.from_pretrained(folder)(images=image, text="scratch . dent .", return_tensors="pt")
    with torch.no_grad():
        return model(**inputs)


def test_a_tamed_detectors_class_logits_are_scale_times_the_dot_product_plus_shift(tmp_path: Path):
    import torch

    out = _tiny_detector_outputs(tmp_path, (0.0, -1.5))  # scale 0: the shift alone, to the bit
    real = torch.isfinite(out.logits)
    assert real.any() and bool((out.logits[real] == -1.5).all())
    assert bool((out.logits[~real] == float("-inf")).all())  # padding tokens stay out


def test_a_tamed_detector_has_no_tied_proposals_but_the_out_of_image_ones_at_zero(tmp_path: Path):
    import torch

    def shared(out) -> list[float]:
        """The encoder logits that 100 or more proposals share (a few pairs tie by chance)."""
        values, counts = torch.unique(out.enc_outputs_class[0].max(-1).values, return_counts=True)
        return values[counts >= 100].tolist()

    # seeded alone: the proposals outside the image share one logit (their memory is zeroed)
    assert shared(_tiny_detector_outputs(tmp_path / "a", None)) not in ([], [0.0])
    tamed = _tiny_detector_outputs(tmp_path / "b", (0.35, -4.5))
    assert shared(tamed) == [0.0]
    top = torch.topk(tamed.enc_outputs_class[0].max(-1).values, 2 * tamed.logits.shape[1]).values
    assert len(torch.unique(top)) == len(top) and float(top[-1]) > 0  # the selected queries: no ties
    wh = tamed.pred_boxes[0, :, 2:]
    assert bool(((wh > 1e-3) & (wh < 0.99)).all())  # refined proposals, not 0 or the whole image
