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
