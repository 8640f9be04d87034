"""Tiny random stage-1 models: a CLIP tagger and a Llama chat LLM (see :mod:`iapas.testing`).

Built from small configs of the real classes and saved with ``save_pretrained``, so they load
through exactly the code that loads ``openai/clip-vit-large-patch14`` and
``meta-llama/Meta-Llama-3-8B-Instruct``. Their tokenizers are built offline. Their outputs are
random: the LLM's replies are garbage, which is what the reply parser and the knowledge
fallback must survive.
"""

from __future__ import annotations

import logging
from pathlib import Path

from iapas.testing.clip_tokens import char_clip_tokenizer

logger = logging.getLogger(__name__)

# Words the tiny LLM can say, besides its special tokens: list punctuation, anomaly nouns and
# the chatter real chat models add, so random replies mix all of them.
TINY_LLM_WORDS: tuple[str, ...] = (
    ",", ".", ":", "-", "*", "1", "2", "3", "here", "are", "the", "some", "nouns", "of", "a",
    "word", "none", "part", "scratch", "crack", "hole", "stain", "dent", "burn", "fray", "rust",
    "chip", "bubble", "contamination", "scratched", "cracks", "bottle", "leather", "metal",
    "system", "user", "assistant", "and", "sure",
)

_LLAMA_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "<|start_header_id|>{{ message['role'] }}<|end_header_id|> {{ message['content'] }}<|eot_id|>"
    "{% endfor %}{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>{% endif %}"
)


def make_tiny_clip(out_dir: str | Path, seed: int = 0) -> Path:
    """Write a tiny random ``CLIPModel`` with a ``CLIPProcessor`` (character-level BPE) to ``out_dir``."""
    import torch
    from transformers import CLIPConfig, CLIPModel, CLIPProcessor, CLIPTextConfig, CLIPVisionConfig
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil


    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = char_clip_tokenizer()  # eos has the highest id: CLIP pools the text at eos
    vocab = tokenizer.get_vocab()
    text = CLIPTextConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        max_position_embeddings=77,
        projection_dim=16,
        bos_token_id=vocab["<|startoftext|>"],
        eos_token_id=vocab["<|endoftext|>"],
        pad_token_id=vocab["<|endoftext|>"],
    )
    vision = CLIPVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=32, patch_size=8,
        projection_dim=16,
    )
    config = CLIPConfig(text_config=text.to_dict(), vision_config=vision.to_dict(), projection_dim=16)
    torch.manual_seed(seed)
    model = CLIPModel(config).eval()
    image_processor = CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    processor = CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    logger.info("wrote tiny CLIP to %s", out)
    return out


def make_tiny_llm(out_dir: str | Path, seed: int = 0) -> Path:
    """Write a tiny random ``LlamaForCausalLM`` with a word-level tokenizer and a chat template."""
    import torch
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    specials = ["<unk>", "<pad>", "<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
    vocab = {tok: i for i, tok in enumerate(specials + list(dict.fromkeys(TINY_LLM_WORDS)))}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.decoder = decoders.WordPiece(prefix="##", cleanup=True)  # joins words with spaces, ' ,' -> ','
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<|begin_of_text|>",
        eos_token="<|eot_id|>",
        pad_token="<pad>",
        unk_token="<unk>",
        chat_template=_LLAMA_CHAT_TEMPLATE,
    )
    config = LlamaConfig(
        vocab_size=len(vocab),
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=1024,
        bos_token_id=vocab["<|begin_of_text|>"],
        eos_token_id=vocab["<|eot_id|>"],
        pad_token_id=vocab["<pad>"],
        tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).eval()
    model.generation_config = GenerationConfig(
        bos_token_id=config.bos_token_id, eos_token_id=config.eos_token_id, pad_token_id=config.pad_token_id
    )
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    logger.info("wrote tiny Llama chat LLM to %s", out)
    return out


def make_tiny_stage1_models(out_dir: str | Path, seed: int = 0) -> dict[str, Path]:
    """Write the tiny stage-1 models under ``out_dir``: ``{"clip": DIR/clip, "llm": DIR/llm}``."""
    out = Path(out_dir)
    return {
        "clip": make_tiny_clip(out / "clip", seed=seed),
        "llm": make_tiny_llm(out / "llm", seed=seed),
    }
