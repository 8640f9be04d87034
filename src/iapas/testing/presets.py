"""Real-size random models: the hub models' configurations with random weights (see :mod:`iapas.testing`).

Each preset is the configuration of a hub checkpoint of the model table (the rows of
:data:`iapas.models.registry.MODELS` with a ``preset``; MM-Grounding-DINO tiny and LLMDet tiny
share one architecture), written out from transformers' defaults and the hub ``config.json`` values, with
the hub processor's settings (Grounding DINO: shortest edge 800, longest 1333; SAM: longest edge
1024, padded to 1024x1024; SAM 3: 1008x1008; OWLv2: padded to a square, resized to 960 or 1008;
SAM 2.1: resized to 1024x1024). The weights are
random, so the outputs are noise: these folders are for measuring speed and memory at the real
cost without a download, never for judging quality. :func:`seed_weights` (``make_random_model(...,
seeded=True)``) gives them unit-scale seeded weights instead, for comparing two runtimes'
arithmetic at real size (see ``benchmarks/openvino_exact.py``).

The Grounding DINO tokenizer is a stand-in for ``bert-base-uncased`` (which cannot be built
offline): the real vocabulary size (30522) and ids of the special tokens and of the phrase
delimiters ([PAD] 0, [UNK] 100, [CLS] 101, [SEP] 102, [MASK] 103, "." 1012, "?" 1029), the words of :data:`iapas.testing.TINY_WORDS`, letters and digits with
their ``##`` forms, and ``[unusedN]`` fillers, so captions tokenise to about as many tokens.
OWLv2's CLIP tokenizer is stood in for the same way: the real vocabulary size (49408) and
start/end ids (49406, 49407), whole-word tokens for those words.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from iapas.models import registry
from iapas.testing.tiny import TINY_WORDS, bert_base_shaped_vocab

logger = logging.getLogger(__name__)

BERT_VOCAB_SIZE = 30522
CLIP_VOCAB_SIZE = 49408
MM_GDINO_TINY_PARAMETERS = 172_250_628  # transformers' count of the config below
SAM_HQ_HUGE_PARAMETERS = 642_686_256  # idem


@dataclass(frozen=True)
class Preset:
    """One hub model's architecture: its name, the hub id it copies and that model's type
    (``kind``: ``grounding-dino``, ``sam``, ``sam3``, ``owlv2``, ``sam2_video``, ...), both from
    the model table (:data:`iapas.models.registry.MODELS`), the published parameter count, and a
    builder of its config."""

    name: str
    kind: str
    hub_id: str
    published_parameters: int
    config: Callable[[], Any]


def _swin(**overrides: Any) -> Any:
    from transformers import SwinConfig

    return SwinConfig(out_features=["stage2", "stage3", "stage4"], **overrides)


def _grounding_dino_tiny(mm: bool = False) -> Any:
    from transformers import BertConfig, GroundingDinoConfig, MMGroundingDinoConfig

    # transformers' GroundingDinoConfig defaults are grounding-dino-tiny's: Swin-T (embed 96,
    # depths 2-2-6-2, heads 3-6-12-24, window 7), bert-base-uncased, d_model 256, 6+6 layers,
    # 900 queries, 4 sampling points, 256 text tokens. MMGroundingDinoConfig's defaults are
    # documented as openmmlab-community/mm_grounding_dino_tiny_o365v1_goldg_v3det's, on the same
    # Swin-T and BERT (``mm``).
    config_class = MMGroundingDinoConfig if mm else GroundingDinoConfig
    return config_class(
        backbone_config=_swin(embed_dim=96, depths=[2, 2, 6, 2], num_heads=[3, 6, 12, 24], window_size=7, image_size=224),
        text_config=BertConfig(vocab_size=BERT_VOCAB_SIZE),
    )


def _grounding_dino_base() -> Any:
    from transformers import BertConfig, GroundingDinoConfig

    # The hub config.json of grounding-dino-base: Swin-B 384 (embed 128, depths 2-2-18-2,
    # heads 4-8-16-32, window 12), the rest as tiny.
    return GroundingDinoConfig(
        backbone_config=_swin(embed_dim=128, depths=[2, 2, 18, 2], num_heads=[4, 8, 16, 32], window_size=12, image_size=384),
        text_config=BertConfig(vocab_size=BERT_VOCAB_SIZE),
    )


def _sam(hidden: int, layers: int, heads: int, global_attn: list[int], hq: bool = False) -> Callable[[], Any]:
    def build() -> Any:
        from transformers.models.sam import configuration_sam as plain
        from transformers.models.sam_hq import configuration_sam_hq as with_hq

        # SAM-HQ (``hq``): SAM's ViT and decoder plus the HQ token, whose decoder reads the
        # encoder's hidden states (vit_dim = the ViT width)
        SamConfig = with_hq.SamHQConfig if hq else plain.SamConfig  # noqa: N806
        SamVisionConfig = with_hq.SamHQVisionConfig if hq else plain.SamVisionConfig  # noqa: N806
        SamPromptEncoderConfig = with_hq.SamHQPromptEncoderConfig if hq else plain.SamPromptEncoderConfig  # noqa: N806
        SamMaskDecoderConfig = with_hq.SamHQMaskDecoderConfig if hq else plain.SamMaskDecoderConfig  # noqa: N806
        extra = {"vit_dim": hidden} if hq else {}

        # ViT with windowed attention (window 14) and global attention every quarter, 1024x1024
        # input in 16 px patches, 256 output channels, mlp 4x; prompt encoder and two-way
        # mask decoder (256 wide, 2 layers, 8 heads, mlp 2048) are the same for all three sizes.
        vision = SamVisionConfig(
            hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads, global_attn_indexes=global_attn,
            output_channels=256, window_size=14, image_size=1024, patch_size=16, mlp_ratio=4.0, num_pos_feats=128,
        )
        return SamConfig(
            vision_config=vision.to_dict(),
            prompt_encoder_config=SamPromptEncoderConfig(hidden_size=256, image_size=1024, patch_size=16).to_dict(),
            mask_decoder_config=SamMaskDecoderConfig(
                hidden_size=256, mlp_dim=2048, num_hidden_layers=2, num_attention_heads=8, **extra
            ).to_dict(),
        )

    return build


def _sam3() -> Any:
    from transformers import Sam3Config

    # transformers' Sam3Config defaults are facebook/sam3's detector: a ViT (hidden 1024, 32 layers,
    # 16 heads, 14 px patches, window 24, global attention at 7/15/23/31) on 1008x1008 input with
    # a 256-wide FPN; a CLIP text encoder (hidden 1024, 24 layers, 32 tokens); 6+6-layer DETR
    # encoder/decoder with 200 queries and a presence head; the mask decoder. The hub checkpoint
    # (about 0.9 B) also holds the video tracker, which Sam3Model does not load.
    return Sam3Config()


def _owlv2(vision: dict[str, Any], text: dict[str, Any], projection_dim: int) -> Callable[[], Any]:
    def build() -> Any:
        from transformers import Owlv2Config

        # transformers' Owlv2Config defaults are owlv2-base-patch16's (CLIP B/16: ViT 768 wide,
        # 12 layers; text 512 wide, 12 layers, 16 tokens per query), but its vision image_size
        # (768) is not the hub's 960; the hub config.json values are given here.
        return Owlv2Config(
            vision_config={"model_type": "owlv2_vision_model", **vision},
            text_config={"model_type": "owlv2_text_model", **text},
            projection_dim=projection_dim,
        )

    return build


def _sam2(embed_dim: int, heads: int, blocks: list[int], global_blocks: list[int], windows: list[int]) -> Callable[[], Any]:
    def build() -> Any:
        from transformers import Sam2Config
        from transformers.models.sam2.configuration_sam2 import Sam2HieraDetConfig, Sam2VisionConfig

        # The Hiera trunk of the SAM 2.1 release configs (sam2.1_hiera_t/l.yaml: embed_dim,
        # num_heads, stages, global_att_blocks, window_spec), channels doubling per stage; the FPN
        # neck (256), prompt encoder and mask decoder are transformers' defaults, which are the
        # release's. Sam2Model is the image model: the video memory modules are not in it.
        dims = [embed_dim * 2**i for i in range(4)]
        backbone = Sam2HieraDetConfig(
            hidden_size=embed_dim, num_attention_heads=heads, blocks_per_stage=blocks, embed_dim_per_stage=dims,
            num_attention_heads_per_stage=[heads * 2**i for i in range(4)], window_size_per_stage=windows,
            global_attention_blocks=global_blocks,
        )
        vision = Sam2VisionConfig(backbone_config=backbone.to_dict(), backbone_channel_list=dims[::-1])
        return Sam2Config(vision_config=vision.to_dict())

    return build


# Published sizes of the new presets: owlv2-base 155 M (model card); owlv2-large 438 M is
# transformers' count (the hub lists 0.4 B); SAM 2.1 tiny 38.9 M and large 224.4 M (the SAM 2
# release) include the video memory modules, which Sam2Model (31.4 M, 216.9 M) leaves out.
# MM-Grounding-DINO tiny and SAM-HQ ViT-H: the counts are transformers' own for these configs,
# not checked against a published figure (SAM-HQ's paper: SAM-H plus about 0.5%). LLMDet tiny:
# MM-Grounding-DINO tiny's architecture (Swin-T, BERT base, the same detector dimensions, 4
# feature levels), other weights, as a published sweep of the hub config.json files lists it
# (not checked against the hub: no network here).
# preset name (a ``preset`` of the model table) -> (published parameters, config builder)
_BUILDERS: dict[str, tuple[int, Callable[[], Any]]] = {
    "grounding-dino-tiny": (172_000_000, _grounding_dino_tiny),
    "grounding-dino-base": (233_000_000, _grounding_dino_base),
    "sam-vit-base": (94_000_000, _sam(768, 12, 12, [2, 5, 8, 11])),
    "sam-vit-large": (312_000_000, _sam(1024, 24, 16, [5, 11, 17, 23])),
    "sam-vit-huge": (641_000_000, _sam(1280, 32, 16, [7, 15, 23, 31])),
    "sam3": (840_000_000, _sam3),
    "mm-grounding-dino-tiny": (MM_GDINO_TINY_PARAMETERS, lambda: _grounding_dino_tiny(mm=True)),
    "llmdet-tiny": (MM_GDINO_TINY_PARAMETERS, lambda: _grounding_dino_tiny(mm=True)),
    "sam-hq-vit-huge": (SAM_HQ_HUGE_PARAMETERS, _sam(1280, 32, 16, [7, 15, 23, 31], hq=True)),
    "owlv2-base": (155_000_000, _owlv2({"image_size": 960, "patch_size": 16}, {}, 512)),
    "owlv2-large": (
        438_000_000,
        _owlv2(
            {"hidden_size": 1024, "intermediate_size": 4096, "num_attention_heads": 16, "num_hidden_layers": 24,
             "image_size": 1008, "patch_size": 14},
            {"hidden_size": 768, "intermediate_size": 3072, "num_attention_heads": 12},
            768,
        ),
    ),
    "sam2.1-tiny": (38_900_000, _sam2(96, 1, [1, 2, 7, 2], [5, 7, 9], [8, 4, 14, 7])),
    "sam2.1-large": (224_400_000, _sam2(144, 2, [2, 6, 36, 4], [23, 33, 43], [8, 4, 16, 8])),
}


def _presets() -> dict[str, Preset]:
    """Every preset of the model table, with the hub id and model type of its row."""
    rows = {m.preset: m for m in registry.MODELS if m.preset}
    missing = set(rows) ^ set(_BUILDERS)
    if missing:  # a table row without a builder, or a builder without a row
        raise RuntimeError(f"presets and the model table disagree on {', '.join(sorted(missing))}")
    return {
        name: Preset(name, rows[name].model_type, rows[name].hub_id, published, config)
        for name, (published, config) in _BUILDERS.items()
    }


PRESETS: dict[str, Preset] = _presets()


def preset_names() -> tuple[str, ...]:
    """The preset names (for help texts)."""
    return tuple(PRESETS)


def get_preset(name: str) -> Preset:
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; choose from {', '.join(PRESETS)}") from None


def _model_class(kind: str) -> Any:
    """The transformers class a model type loads as (the model table's)."""
    import transformers

    return getattr(transformers, registry.model_class(kind))


def count_parameters(name: str) -> int:
    """The preset model's parameter count, from an instance on the meta device (no memory, no init)."""
    import torch

    preset = get_preset(name)
    with torch.device("meta"):
        model = _model_class(preset.kind)(preset.config())
    return sum(p.numel() for p in model.parameters())


def stand_in_bert_vocab() -> dict[str, int]:
    """A ``bert-base-uncased``-shaped vocabulary (see the module docstring)."""
    return bert_base_shaped_vocab(TINY_WORDS, BERT_VOCAB_SIZE)


class Sam3ProcessorFiles:
    """SAM 3's processor files, built offline: a stand-in CLIP tokenizer with CLIP's vocabulary
    size and special-token ids, and the hub processor's settings (1008x1008) as JSON
    (``Sam3ImageProcessor`` itself needs torchvision)."""

    def save_pretrained(self, out: str | Path) -> None:
        import json

        from iapas.testing.tiny import sam3_processor_config, sam3_tokenizer

        sam3_tokenizer(vocab_size=CLIP_VOCAB_SIZE).save_pretrained(out)
        (Path(out) / "processor_config.json").write_text(json.dumps(sam3_processor_config(1008, 1008), indent=2))


def stand_in_clip_tokenizer() -> Any:
    """A CLIP tokenizer of the real vocabulary size and start/end ids (see the module docstring)."""
    from iapas.testing.clip_tokens import char_clip_tokenizer

    return char_clip_tokenizer(CLIP_VOCAB_SIZE, model_max_length=16, words=TINY_WORDS)


def make_processor(kind: str, image_size: int = 960) -> Any:
    """The hub processor of a preset kind (``grounding-dino``, ``sam``, ``sam3`` or ``owlv2`` at
    ``image_size``), built offline. SAM 2's is written as files: see
    :func:`iapas.testing.tiny.write_sam2_preprocessing`."""
    if kind == "sam3":
        return Sam3ProcessorFiles()
    if kind == "owlv2":
        from transformers import Owlv2Processor
        from transformers.models.owlv2.image_processing_pil_owlv2 import Owlv2ImageProcessorPil

        image_processor = Owlv2ImageProcessorPil(size={"height": image_size, "width": image_size})
        return Owlv2Processor(image_processor=image_processor, tokenizer=stand_in_clip_tokenizer())
    if kind in ("grounding-dino", "mm-grounding-dino"):  # one processor for both
        from transformers import BertTokenizer, GroundingDinoProcessor
        from transformers.models.grounding_dino.image_processing_pil_grounding_dino import GroundingDinoImageProcessorPil

        tokenizer = BertTokenizer(vocab=stand_in_bert_vocab(), do_lower_case=True)
        image_processor = GroundingDinoImageProcessorPil(size={"shortest_edge": 800, "longest_edge": 1333})
        return GroundingDinoProcessor(image_processor=image_processor, tokenizer=tokenizer)
    from transformers import SamHQProcessor, SamProcessor
    from transformers.models.sam.image_processing_pil_sam import SamImageProcessorPil

    return (SamHQProcessor if kind == "sam_hq" else SamProcessor)(
        image_processor=SamImageProcessorPil(size={"longest_edge": 1024}, pad_size={"height": 1024, "width": 1024})
    )


# transformers' names of the two layer norms apply_score_shift sets (the original layout's are its defaults)
HF_TEXT_NORM = "model.encoder.layers.{last}.text_enhancer_layer.layer_norm_after"
HF_DECODER_NORM = "model.decoder.layer_norm"


def seed_weights(model: Any, seed: int, score: tuple[float, float] | None = None) -> None:
    """Give ``model`` every floating-point tensor from
    :func:`iapas.testing.reference_weights.seeded_tensor`, for activations of unit scale. A fresh
    transformers init gives SAM's layers 0.02-scale weights, and Grounding DINO scores that
    saturate (315 of grounding-dino-tiny's 900 queries at exactly 1.0 on an MVTec image), so which
    boxes are kept hangs on tie order; measured in ``benchmarks/openvino_exact.py``.

    ``score = (scale, shift)`` (Grounding DINO family) also makes the detector behave like a
    trained one where ties would otherwise decide: see :func:`_tame_detector`."""
    from iapas.testing.reference_weights import seeded_tensor

    state = {key: seeded_tensor(key, value.shape, seed) if value.is_floating_point() else value
             for key, value in model.state_dict().items()}
    if score is not None:
        _tame_detector(state, model.config.encoder_layers, *score)
    model.load_state_dict(state)


def _tame_detector(state: dict[str, Any], encoder_layers: int, scale: float, shift: float) -> None:
    """Class logits ``scale * (random dot product) + shift``
    (:func:`~iapas.testing.reference_weights.apply_score_shift` on transformers' names: coordinate
    0 of the last text-enhancer norm is the constant 1 and of the decoder's output norm the constant
    ``shift``); the two-stage proposals outside the image (whose memory is zeroed)
    score 0 instead of one shared, often top, logit (zero ``enc_output`` and norm biases); box
    heads' last layers x0.1, so boxes refine their proposals instead of saturating to 0 or the
    whole image."""
    from iapas.testing.reference_weights import apply_score_shift

    apply_score_shift(state, encoder_layers, scale, shift, text_norm=HF_TEXT_NORM, decoder_norm=HF_DECODER_NORM)
    state["model.enc_output.bias"].zero_()
    state["model.enc_output_norm.bias"].zero_()
    for key, value in state.items():
        if "bbox_embed" in key and ".layers.2." in key:
            value.mul_(0.1)


def make_random_model(name: str, out_dir: str | Path, seed: int = 0, seeded: bool = False,
                      score: tuple[float, float] | None = None) -> Path:
    """Write preset ``name`` with random weights and its processor to ``out_dir`` (save_pretrained):
    transformers' init, or with ``seeded`` (and ``score``) :func:`seed_weights`'s."""
    import torch

    preset = get_preset(name)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    config = preset.config()
    model = _model_class(preset.kind)(config).eval()
    if seeded:
        seed_weights(model, seed, score)
    model.save_pretrained(out)
    if registry.model_class(preset.kind) == "Sam2Model":
        from iapas.testing.tiny import write_sam2_preprocessing

        write_sam2_preprocessing(out, image_size=1024)
    elif preset.kind == "owlv2":
        make_processor(preset.kind, image_size=int(config.vision_config.image_size)).save_pretrained(out)
    else:
        make_processor(preset.kind).save_pretrained(out)
    logger.info("wrote random-weight %s (%s's architecture) to %s", name, preset.hub_id, out)
    return out


def make_random_models(out_dir: str | Path, names: list[str], seed: int = 0) -> dict[str, Path]:
    """Write each preset of ``names`` to ``out_dir/NAME``; returns name -> folder."""
    for name in names:
        get_preset(name)  # fail before writing anything
    return {name: make_random_model(name, Path(out_dir) / name, seed=seed) for name in names}


def build_random_model(name: str, device: str = "cpu", seed: int = 0) -> Any:
    """Preset ``name`` with random weights, initialised directly on ``device`` (nothing written)."""
    import torch

    preset = get_preset(name)
    torch.manual_seed(seed)
    with torch.device(device):
        return _model_class(preset.kind)(preset.config()).eval()
