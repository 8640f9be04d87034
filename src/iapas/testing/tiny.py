"""Builders for tiny Grounding DINO, SAM, SAM 3, OWLv2 and SAM 2 folders (see :mod:`iapas.testing`)."""

from __future__ import annotations

import json
import logging
import string
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from iapas.testing.clip_tokens import char_clip_tokenizer
from iapas.testing.stage1 import make_tiny_stage1_models

logger = logging.getLogger(__name__)

# Words the tiny tokenizers know as whole tokens; anything else is spelled with ##letters.
TINY_WORDS: tuple[str, ...] = (
    "defect", "abnormal", "anomaly", "scratch", "crack", "hole", "stain", "dent", "burn", "fray",
    "cut", "contamination", "broken", "missing", "rust", "bottle", "capsule", "metal", "nut",
    "tile", "leather", "wood", "carpet", "grid", "screw", "cable", "zipper", "pill", "object",
    "surface", "magnetic", "fabric", "glass", "plastic", "blowhole", "break", "uneven",
)


# bert-base-uncased's ids of the tokens models rely on: transformers' Grounding DINO splits a
# caption into phrases at [CLS], [SEP], "." and "?" by these very ids (its SPECIAL_TOKENS).
BERT_BASE_IDS: dict[str, int] = {"[PAD]": 0, "[UNK]": 100, "[CLS]": 101, "[SEP]": 102, "[MASK]": 103, ".": 1012, "?": 1029}
TINY_BERT_VOCAB_SIZE = max(BERT_BASE_IDS.values()) + 1  # 1030: the smallest that holds them


def bert_base_shaped_vocab(words: Sequence[str], size: int = TINY_BERT_VOCAB_SIZE) -> dict[str, int]:
    """A WordPiece vocabulary of ``size`` ids with :data:`BERT_BASE_IDS` where bert-base-uncased
    has them, then punctuation, ``words``, letters and digits with their ``##`` forms in the
    free ids from 1 up, and ``[unusedN]`` fillers."""
    tokens: dict[int, str] = {i: t for t, i in BERT_BASE_IDS.items()}
    chars = string.ascii_lowercase + string.digits
    rest = [*".,;:!?'\"-()/", *words, *chars, *(f"##{c}" for c in chars)]
    free = (i for i in range(1, size) if i not in tokens)
    for word in dict.fromkeys(t for t in rest if t not in BERT_BASE_IDS):
        tokens[next(free)] = word
    for i in free:
        tokens[i] = f"[unused{i}]"
    return {tokens[i]: i for i in range(size)}


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
    tokenizer = BertTokenizer(vocab=bert_base_shaped_vocab(TINY_WORDS), do_lower_case=True)
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


def sam3_tokenizer(vocab_size: int | None = None) -> Any:
    """SAM 3's tokenizer class (CLIP's), character-level, with its 32-token text window."""
    return char_clip_tokenizer(vocab_size, model_max_length=32)


def make_tiny_sam3(out_dir: str | Path, seed: int = 0, image_size: int = 112) -> Path:
    """Write a tiny random ``Sam3Model`` (model type ``sam3``) with its tokenizer and processor
    settings to ``out_dir``. ``image_size`` (a multiple of 14 x 8) is the square every image is
    resized to (the hub model's 1008)."""
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


def make_tiny_owlv2(out_dir: str | Path, seed: int = 0, image_size: int = 96) -> Path:
    """Write a tiny random ``Owlv2ForObjectDetection`` with its ``Owlv2Processor`` (a CLIP
    tokenizer that knows :data:`TINY_WORDS`, 16 tokens per query as the hub models; the PIL
    image processor padding to a square and resizing to ``image_size``, 16 px patches) to
    ``out_dir``."""
    import torch
    from transformers import Owlv2Config, Owlv2ForObjectDetection, Owlv2Processor
    from transformers.models.owlv2.configuration_owlv2 import Owlv2TextConfig, Owlv2VisionConfig
    from transformers.models.owlv2.image_processing_pil_owlv2 import Owlv2ImageProcessorPil

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = char_clip_tokenizer(model_max_length=16, words=TINY_WORDS)
    vocab = tokenizer.get_vocab()
    text = Owlv2TextConfig(
        vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
        max_position_embeddings=16, bos_token_id=vocab["<|startoftext|>"], eos_token_id=vocab["<|endoftext|>"],
        pad_token_id=0,
    )
    vision = Owlv2VisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=image_size,
        patch_size=16,
    )
    # the class head compares projected text (projection_dim) with patches mapped to the text width
    config = Owlv2Config(text_config=text.to_dict(), vision_config=vision.to_dict(), projection_dim=32)
    torch.manual_seed(seed)
    model = Owlv2ForObjectDetection(config).eval()
    image_processor = Owlv2ImageProcessorPil(size={"height": image_size, "width": image_size})
    processor = Owlv2Processor(image_processor=image_processor, tokenizer=tokenizer)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    logger.info("wrote tiny %s to %s", config.model_type, out)
    return out


def write_sam2_preprocessing(out_dir: str | Path, image_size: int = 1024) -> None:
    """Write the ``preprocessor_config.json`` and ``processor_config.json`` a SAM 2 hub folder
    has (``Sam2ImageProcessor`` needs torchvision to be built, so they are written directly:
    square resize to ``image_size``, ImageNet mean and std)."""
    out = Path(out_dir)
    image = {
        "image_processor_type": "Sam2ImageProcessor",
        "processor_class": "Sam2Processor",
        "size": {"height": image_size, "width": image_size},
        "mask_size": {"height": 256, "width": 256},
        "image_mean": [0.485, 0.456, 0.406],
        "image_std": [0.229, 0.224, 0.225],
        "rescale_factor": 1 / 255,
        "resample": 2,
        "do_resize": True,
        "do_rescale": True,
        "do_normalize": True,
        "do_convert_rgb": True,
    }
    (out / "preprocessor_config.json").write_text(json.dumps(image, indent=2) + "\n")
    processor = {"processor_class": "Sam2Processor", "point_pad_value": -10, "target_size": image_size}
    (out / "processor_config.json").write_text(json.dumps(processor, indent=2) + "\n")


def make_tiny_sam2(out_dir: str | Path, seed: int = 0, image_size: int = 256, video: bool = False) -> Path:
    """Write a tiny random ``Sam2Model`` (a 4-stage Hiera of 5 blocks, 32-wide FPN, prompt encoder
    and mask decoder) with its preprocessing files to ``out_dir``; with ``video``, the same as a
    ``Sam2VideoModel`` (model type ``sam2_video``, as the hub's SAM 2.1 checkpoints are saved)."""
    import torch
    from transformers import Sam2Config, Sam2Model, Sam2VideoConfig, Sam2VideoModel
    from transformers.models.sam2.configuration_sam2 import (
        Sam2HieraDetConfig,
        Sam2MaskDecoderConfig,
        Sam2PromptEncoderConfig,
        Sam2VisionConfig,
    )

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    s = image_size
    backbone = Sam2HieraDetConfig(
        hidden_size=16, image_size=[s, s], blocks_per_stage=[1, 1, 2, 1], embed_dim_per_stage=[16, 32, 64, 128],
        num_attention_heads_per_stage=[1, 1, 2, 2], window_size_per_stage=[8, 4, 4, 2],
        global_attention_blocks=[3],  # not a stage's first block (those pool queries by the window)
        window_positional_embedding_background_size=[4, 4],
    )
    vision = Sam2VisionConfig(
        backbone_config=backbone.to_dict(), backbone_channel_list=[128, 64, 32, 16],
        backbone_feature_sizes=[[s // 4, s // 4], [s // 8, s // 8], [s // 16, s // 16]], fpn_hidden_size=32,
    )
    prompt = Sam2PromptEncoderConfig(hidden_size=32, image_size=s, patch_size=16)
    decoder = Sam2MaskDecoderConfig(
        hidden_size=32, mlp_dim=64, num_hidden_layers=2, num_attention_heads=2, iou_head_hidden_dim=32
    )
    parts = {
        "vision_config": vision.to_dict(),
        "prompt_encoder_config": prompt.to_dict(),
        "mask_decoder_config": decoder.to_dict(),
    }
    if video:
        config = Sam2VideoConfig(
            **parts, memory_attention_hidden_size=32, memory_attention_num_layers=1,
            memory_attention_feed_forward_hidden_size=64, memory_attention_rope_feat_sizes=[s // 16, s // 16],
            memory_encoder_hidden_size=32, memory_encoder_output_channels=16, mask_downsampler_embed_dim=32,
            memory_fuser_num_layers=1, memory_fuser_embed_dim=32, memory_fuser_intermediate_dim=64,
        )
        model_class: type = Sam2VideoModel
    else:
        config = Sam2Config(**parts)
        model_class = Sam2Model
    torch.manual_seed(seed)
    model = model_class(config).eval()
    model.save_pretrained(out)
    write_sam2_preprocessing(out, image_size=s)
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
        "owlv2": make_tiny_owlv2(out / "owlv2", seed=seed),
        "sam2": make_tiny_sam2(out / "sam2", seed=seed),
    }
    made.update(make_tiny_stage1_models(out, seed=seed))  # the CLIP tagger and Llama LLM of stage 1
    return made
