"""Builders for tiny Grounding DINO, SAM and SAM 3 folders (see :mod:`iapas.testing`)."""

from __future__ import annotations

import logging
import string
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

# Words the tiny tokenizers know as whole tokens; anything else is spelled with ##letters.
TINY_WORDS: tuple[str, ...] = (
    "defect", "abnormal", "anomaly", "scratch", "crack", "hole", "stain", "dent", "burn", "fray",
    "cut", "contamination", "broken", "missing", "rust", "bottle", "capsule", "metal", "nut",
    "tile", "leather", "wood", "carpet", "grid", "screw", "cable", "zipper", "pill", "object",
    "surface", "magnetic", "fabric", "glass", "plastic", "blowhole", "break", "uneven",
)


def _bert_vocab(words: tuple[str, ...]) -> dict[str, int]:
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tokens += list(".,;:!?'\"-()/")
    tokens += list(words)
    chars = string.ascii_lowercase + string.digits
    tokens += list(chars) + [f"##{c}" for c in chars]
    seen: dict[str, int] = {}
    for tok in tokens:
        seen.setdefault(tok, len(seen))
    return seen


def make_tiny_grounding_dino(
    out_dir: str | Path, seed: int = 0, shortest_edge: int = 800, mm: bool = False
) -> Path:
    """Write a tiny random ``GroundingDinoForObjectDetection`` with its processor to ``out_dir``
    (``MMGroundingDinoForObjectDetection``, model type ``mm-grounding-dino``, when ``mm``).

    ``shortest_edge`` is the processor's resize (the hub models' 800 by default; tests use less
    to run faster, the longest edge scales with it as 1333/800).
    """
    import torch
    from transformers import (
        BertConfig,
        BertTokenizer,
        GroundingDinoConfig,
        GroundingDinoForObjectDetection,
        GroundingDinoProcessor,
        MMGroundingDinoConfig,
        MMGroundingDinoForObjectDetection,
        SwinConfig,
    )
    from transformers.models.grounding_dino.image_processing_pil_grounding_dino import (
        GroundingDinoImageProcessorPil,
    )

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = BertTokenizer(vocab=_bert_vocab(TINY_WORDS), do_lower_case=True)
    backbone = SwinConfig(
        embed_dim=16,
        depths=[1, 1, 1, 1],
        num_heads=[1, 1, 2, 2],
        window_size=7,
        out_indices=[2, 3, 4],
    )
    text = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    config_class, model_class = (
        (MMGroundingDinoConfig, MMGroundingDinoForObjectDetection) if mm
        else (GroundingDinoConfig, GroundingDinoForObjectDetection)
    )
    config = config_class(
        backbone_config=backbone,
        text_config=text,
        d_model=32,
        encoder_layers=1,
        decoder_layers=2,
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        num_queries=20,
        encoder_n_points=2,
        decoder_n_points=2,
        max_text_len=32,
        disable_custom_kernels=True,
    )
    torch.manual_seed(seed)
    model = model_class(config).eval()
    size = {"shortest_edge": shortest_edge, "longest_edge": round(shortest_edge * 1333 / 800)}
    processor = GroundingDinoProcessor(image_processor=GroundingDinoImageProcessorPil(size=size), tokenizer=tokenizer)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    logger.info("wrote tiny %s to %s", config.model_type, out)
    return out


def make_tiny_sam(out_dir: str | Path, seed: int = 0, image_size: int = 256, hq: bool = False) -> Path:
    """Write a tiny random ``SamModel`` with its processor to ``out_dir`` (``SamHQModel``, model
    type ``sam_hq``, when ``hq``)."""
    import torch
    from transformers import SamConfig, SamHQConfig, SamHQModel, SamHQProcessor, SamModel, SamProcessor
    from transformers.models.sam.configuration_sam import (
        SamMaskDecoderConfig,
        SamPromptEncoderConfig,
        SamVisionConfig,
    )
    from transformers.models.sam.image_processing_pil_sam import SamImageProcessorPil
    from transformers.models.sam_hq.configuration_sam_hq import (
        SamHQMaskDecoderConfig,
        SamHQPromptEncoderConfig,
        SamHQVisionConfig,
    )

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    vision_class, prompt_class, decoder_class, config_class, model_class, processor_class = (
        (SamHQVisionConfig, SamHQPromptEncoderConfig, SamHQMaskDecoderConfig, SamHQConfig, SamHQModel, SamHQProcessor)
        if hq
        else (SamVisionConfig, SamPromptEncoderConfig, SamMaskDecoderConfig, SamConfig, SamModel, SamProcessor)
    )
    vision = vision_class(
        hidden_size=32,
        output_channels=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        window_size=8,
        global_attn_indexes=[1],
        num_pos_feats=16,
        mlp_dim=64,
        image_size=image_size,
        patch_size=16,
    )
    prompt = prompt_class(hidden_size=32, image_size=image_size, patch_size=16)
    hq_extra = {"vit_dim": 32} if hq else {}  # the HQ decoder reads the encoder's hidden states
    decoder = decoder_class(
        hidden_size=32, mlp_dim=64, num_hidden_layers=2, num_attention_heads=2, iou_head_hidden_dim=32, **hq_extra
    )
    config = config_class(vision_config=vision, prompt_encoder_config=prompt, mask_decoder_config=decoder)
    torch.manual_seed(seed)
    model = model_class(config).eval()
    processor = processor_class(
        image_processor=SamImageProcessorPil(
            size={"longest_edge": image_size}, pad_size={"height": image_size, "width": image_size}
        )
    )
    model.save_pretrained(out)
    processor.save_pretrained(out)
    logger.info("wrote tiny %s to %s", config.model_type, out)
    return out


def sam3_processor_config(height: int, width: int) -> dict:
    """``Sam3Processor``'s saved settings (``processor_config.json``), written as JSON because
    ``Sam3ImageProcessor`` cannot be built without torchvision; the adapter reads them back."""
    return {
        "image_processor": {
            "image_processor_type": "Sam3ImageProcessor",
            "do_convert_rgb": True, "do_normalize": True, "do_rescale": True, "do_resize": True,
            "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5],
            "rescale_factor": 1 / 255, "resample": 2,
            "size": {"height": height, "width": width},
            "mask_size": {"height": height * 2 // 7, "width": width * 2 // 7},
        },
        "point_pad_value": -10,
        "target_size": height,
        "processor_class": "Sam3Processor",
    }


def char_clip_tokenizer(vocab_size: int | None = None, model_max_length: int | None = None) -> Any:
    """A character-level ``CLIPTokenizer`` (no merges: letters, digits and ``-'.,``, each also
    as a word end). ``vocab_size`` pads the vocabulary with unused tokens (CLIP's 49408 for a
    real-size model). bos and eos take the two highest ids, as in CLIP (its text pooling reads
    the eos position)."""
    from transformers import CLIPTokenizer

    chars = string.ascii_lowercase + string.digits + "-'.,"
    vocab: dict[str, int] = {}
    for c in chars:
        vocab.setdefault(c, len(vocab))
    for c in chars:
        vocab.setdefault(c + "</w>", len(vocab))
    for i in range(len(vocab), (vocab_size or 0) - 2):
        vocab[f"<|unused{i}|>"] = i
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    extra = {} if model_max_length is None else {"model_max_length": model_max_length}
    return CLIPTokenizer(vocab=vocab, merges=[], **extra)


def sam3_tokenizer(vocab_size: int | None = None) -> Any:
    """SAM 3's tokenizer class (CLIP's), character-level, with its 32-token text window."""
    return char_clip_tokenizer(vocab_size, model_max_length=32)


def make_tiny_sam3(out_dir: str | Path, seed: int = 0, image_size: int = 112) -> Path:
    """Write a tiny random ``Sam3Model`` (model type ``sam3``) with its tokenizer and processor
    settings to ``out_dir``. ``image_size`` (a multiple of 14 x 8) is the square every image is
    resized to (the hub model's 1008)."""
    import json

    import torch
    from transformers import Sam3Config, Sam3Model
    from transformers.models.sam3.configuration_sam3 import Sam3ViTConfig, Sam3VisionConfig

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = sam3_tokenizer()
    grid = image_size // 14
    vit = Sam3ViTConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=image_size,
        patch_size=14, window_size=4, global_attn_indexes=[1], pretrain_image_size=image_size // 2,
    )
    vision = Sam3VisionConfig(
        backbone_config=vit, fpn_hidden_size=32, backbone_feature_sizes=[[grid * 4] * 2, [grid * 2] * 2, [grid] * 2]
    )
    text = {
        "vocab_size": len(tokenizer), "hidden_size": 32, "intermediate_size": 64, "projection_dim": 32,
        "num_hidden_layers": 1, "num_attention_heads": 2, "max_position_embeddings": 32,
        "bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.eos_token_id,
    }
    small = {"hidden_size": 32, "num_attention_heads": 2, "intermediate_size": 64}
    config = Sam3Config(
        vision_config=vision, text_config=text,
        geometry_encoder_config={**small, "num_layers": 1},
        detr_encoder_config={**small, "num_layers": 1},
        detr_decoder_config={**small, "num_layers": 1, "num_queries": 20},
        mask_decoder_config={"hidden_size": 32, "num_attention_heads": 2},
    )
    torch.manual_seed(seed)
    model = Sam3Model(config).eval()
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    (out / "processor_config.json").write_text(json.dumps(sam3_processor_config(image_size, image_size), indent=2))
    logger.info("wrote tiny %s to %s", config.model_type, out)
    return out


def make_tiny_models(out_dir: str | Path, seed: int = 0, detector_shortest_edge: int = 800) -> dict[str, Path]:
    """Write every tiny model iapas uses under ``out_dir``; returns name -> folder."""
    out = Path(out_dir)
    made = {
        "grounding-dino": make_tiny_grounding_dino(out / "grounding-dino", seed=seed, shortest_edge=detector_shortest_edge),
        "mm-grounding-dino": make_tiny_grounding_dino(
            out / "mm-grounding-dino", seed=seed, shortest_edge=detector_shortest_edge, mm=True
        ),
        "sam": make_tiny_sam(out / "sam", seed=seed),
        "sam-hq": make_tiny_sam(out / "sam-hq", seed=seed, hq=True),
        "sam3": make_tiny_sam3(out / "sam3", seed=seed),
    }
    try:  # stage 1 models (CLIP tagger, Llama LLM) when that module is present
        from iapas.testing import stage1
    except ImportError:
        return made
    made.update(stage1.make_tiny_stage1_models(out, seed=seed))
    return made
