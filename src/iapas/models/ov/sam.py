"""SAM and SAM-HQ forwards through OpenVINO (``--runtime openvino``).

Two graphs are converted from the loaded transformers model (``SamModel`` or ``SamHQModel``)
and cached as IR by :func:`iapas.models.ov.cache.load_or_convert`:

- the **image encoder**: ``pixel_values (B, 3, S, S) -> image_embeddings (B, C, S/16, S/16)``
  (SAM-HQ: also the first global-attention block's hidden states ``(B, S/16, S/16, D)``, the
  only intermediate embedding the HQ decoder reads), with a dynamic batch ``B``;
- the **prompt encoder + mask decoder** for one image and ``N`` boxes:
  ``image_embeddings (1, C, h, w), input_boxes (1, N, 4) [, intermediate (1, h, w, D)] ->
  low-resolution mask logits (1, N, 1, 4h, 4w)``, single-mask output, with a dynamic ``N``
  (one call per image, as the eager adapter makes: measured faster than one call per box, see
  ``benchmarks/openvino_sam.py``). SAM-HQ's mask is its default (SAM's mask plus the HQ
  token's, ``hq_token_only=False``), fixed in the graph.

The encoder is traced with two of its blocks' forwards rewritten to less work for OpenVINO's CPU
plugin, the same functions of the same weights (:func:`_lighter_encoder`; with torch the
rewritten encoder's output is bit-for-bit eager's): the MLP's activation is applied between two
reshapes, so that the plugin runs ``lin1`` as a plain matrix product instead of one with the
activation fused in (a slower kernel on AVX2), and a windowed block projects ``qkv`` before the
window padding and ``proj`` after the crop instead of on the padded tokens (a padding token's
``qkv`` is the bias, whose value is padded in; its projected output was cropped). Measured on
sam-vit-huge: 7.5% less time per image, see ``benchmarks/README.md``.

Everything around the two forwards (the processor's resize, normalise and pad, box scaling,
upsampling and thresholding of the masks) stays the shared code of
:class:`iapas.models.segmenter.SamSegmenter`. The cache key is
:func:`iapas.models.ov.source.source_fingerprint` (the model's fingerprint, the transformers
version) with :data:`GRAPH_VERSION` (raised when the graphs below change), plus the openvino
version the cache adds.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import MethodType, SimpleNamespace
from typing import Any

import numpy as np

from iapas.models.ov.cache import compile as compile_model
from iapas.models.ov.cache import check_cpu_float32, entry_name, load_or_convert, require_openvino
from iapas.models.ov.source import source_fingerprint

logger = logging.getLogger(__name__)

GRAPH_VERSION = 2  # raise when the converted graphs change: old cache entries are then rebuilt
DECODE_CHUNK = 32  # boxes per decoder call: the decoder's buffers grow with the boxes (265 at once ran a 24 GB machine out of memory)
_EXAMPLE_BOXES = 3  # boxes in the tracing example (not 1: a size-1 axis may be traced as a constant)


def _mlp_forward(self: Any, hidden_states: Any) -> Any:
    """``lin1``, the activation over the tokens as rows, ``lin2``."""
    hidden = self.lin1(hidden_states)
    shape = hidden.shape
    return self.lin2(self.act(hidden.reshape(-1, shape[-1])).reshape(shape))


def _windowed_forward(self: Any, hidden_states: Any) -> Any:
    """A windowed vision block (SDPA attention with relative positions) as transformers runs it,
    with ``qkv`` on the unpadded tokens and ``proj`` on the cropped ones."""
    import torch
    import torch.nn.functional as F  # noqa: N812

    attn, size = self.attn, self.window_size
    normed = self.layer_norm1(hidden_states)
    batch, height, width, _ = normed.shape
    qkv = attn.qkv(normed)
    fill = attn.qkv.bias if attn.qkv.bias is not None else qkv.new_zeros(qkv.shape[-1])
    pad_h, pad_w = (size - height % size) % size, (size - width % size) % size
    if pad_w:  # a zero token's qkv is exactly the bias
        qkv = torch.cat([qkv, fill.expand(batch, height, pad_w, qkv.shape[-1])], dim=2)
    if pad_h:
        qkv = torch.cat([qkv, fill.expand(batch, pad_h, width + pad_w, qkv.shape[-1])], dim=1)
    windows, padded = self.window_partition(qkv, size)
    n, h, w, _ = windows.shape
    heads = attn.num_attention_heads
    query, key, value = windows.reshape(n, h * w, 3, heads, -1).permute(2, 0, 3, 1, 4).reshape(3, n * heads, h * w, -1).unbind(0)
    bias = attn.get_decomposed_rel_pos(query, attn.rel_pos_h, attn.rel_pos_w, (h, w), (h, w)).reshape(n, heads, h * w, h * w)
    query, key, value = (t.view(n, heads, h * w, -1) for t in (query, key, value))
    out = F.scaled_dot_product_attention(query, key, value, attn_mask=bias)
    out = out.view(n, heads, h, w, -1).permute(0, 2, 3, 1, 4).reshape(n, h, w, -1)
    hidden_states = hidden_states + attn.proj(self.window_unpartition(out, size, padded, (height, width)))
    return hidden_states + self.mlp(self.layer_norm2(hidden_states))


@contextmanager
def _lighter_encoder(model: Any) -> Iterator[None]:
    """Within the block, the vision blocks of ``model`` (SAM or SAM-HQ) run :func:`_mlp_forward`
    and, where windowed with SDPA attention and relative positions, :func:`_windowed_forward`
    (for tracing only: set on the instances, and what they had before is back after)."""
    patched: list[tuple[Any, Any]] = []  # (module, the instance's own forward it had, if any)

    def patch(module: Any, forward: Any) -> None:
        patched.append((module, module.__dict__.get("forward")))
        module.forward = MethodType(forward, module)

    for layer in model.vision_encoder.layers:
        patch(layer.mlp, _mlp_forward)
        if layer.window_size > 0 and type(layer.attn).__name__.endswith("VisionSdpaAttention") and layer.attn.use_rel_pos:
            patch(layer, _windowed_forward)
    try:
        yield
    finally:
        for module, own in patched:
            if own is None:
                del module.forward
            else:
                module.forward = own


def _encoder_module(model: Any, hq: bool) -> Any:
    """The image encoder as a module with tensor outputs only."""
    import torch

    class ImageEncoder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.sam = model

        def forward(self, pixel_values: torch.Tensor) -> Any:
            out = self.sam.vision_encoder(pixel_values)
            if hq:  # the HQ decoder reads the first global block's hidden states only
                return out[0], out[1][0]
            return out[0]

    return ImageEncoder().eval()


def _decoder_module(model: Any, hq: bool, hq_token_only: bool) -> Any:
    """Prompt encoder + mask decoder for one image's boxes, as ``SamModel.forward`` runs them
    with ``image_embeddings`` and ``input_boxes`` (``multimask_output=False``)."""
    import torch

    class MaskDecoder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.sam = model

        def forward(self, image_embeddings: torch.Tensor, input_boxes: torch.Tensor, *intermediate: torch.Tensor) -> torch.Tensor:
            positional = self.sam.get_image_wide_positional_embeddings()
            sparse, dense = self.sam.prompt_encoder(
                input_points=None, input_labels=None, input_boxes=input_boxes, input_masks=None
            )
            extra = {"hq_token_only": hq_token_only, "intermediate_embeddings": list(intermediate)} if hq else {}
            masks, _ = self.sam.mask_decoder(
                image_embeddings=image_embeddings,
                image_positional_embeddings=positional,
                sparse_prompt_embeddings=sparse,
                dense_prompt_embeddings=dense,
                multimask_output=False,
                **extra,
            )
            return masks

    return MaskDecoder().eval()


def _shapes(model: Any) -> tuple[int, int, int, int]:
    """``(S, C, h, D)``: input size, embedding channels, embedding side, ViT width."""
    vision = model.config.vision_config
    side = int(model.config.prompt_encoder_config.image_embedding_size)
    return int(vision.image_size), int(vision.output_channels), side, int(vision.hidden_size)


def convert_encoder(model: Any, hq: bool) -> Any:
    """The image encoder as an ``openvino.Model`` with a dynamic batch."""
    import torch

    ov = require_openvino()
    size = _shapes(model)[0]
    example = torch.zeros((1, 3, size, size), dtype=torch.float32)
    with torch.no_grad(), _lighter_encoder(model):
        return ov.convert_model(
            _encoder_module(model, hq), example_input=(example,), input=[ov.PartialShape([-1, 3, size, size])]
        )


def convert_decoder(model: Any, hq: bool, hq_token_only: bool = False) -> Any:
    """Prompt encoder + mask decoder as an ``openvino.Model`` with a dynamic number of boxes."""
    import torch

    ov = require_openvino()
    _, channels, side, width = _shapes(model)
    size = _shapes(model)[0]
    example = [
        torch.zeros((1, channels, side, side)),
        torch.tensor([[[0.1, 0.2, 0.6, 0.7]]]).repeat(1, _EXAMPLE_BOXES, 1) * size,
    ]
    shapes = [ov.PartialShape([1, channels, side, side]), ov.PartialShape([1, -1, 4])]
    if hq:
        example.append(torch.zeros((1, side, side, width)))
        shapes.append(ov.PartialShape([1, side, side, width]))
    with torch.no_grad():
        return ov.convert_model(_decoder_module(model, hq, hq_token_only), example_input=tuple(example), input=shapes)


@dataclass
class OvSam:
    """The compiled encoder and decoder of one SAM (``hq``: SAM-HQ) with the adapter's two
    calls, :meth:`embed` and :meth:`decode`, in the eager model's types."""

    encoder: Any
    decoder: Any
    hq: bool
    decode_chunk: int = DECODE_CHUNK

    def __post_init__(self) -> None:
        self._lock = threading.Lock()  # one infer request per graph: calls take turns
        self._encode_request = self.encoder.create_infer_request()
        self._decode_request = self.decoder.create_infer_request()

    def embed(self, pixel_values: Any) -> Any:
        """``get_image_embeddings``'s result: the embeddings tensor (SAM-HQ: with the list of
        intermediate embeddings the HQ decoder reads)."""
        import torch

        values = np.ascontiguousarray(pixel_values.detach().cpu().numpy(), dtype=np.float32)
        with self._lock:
            result = self._encode_request.infer([values])
        outputs = [torch.from_numpy(np.array(result[out])) for out in self.encoder.outputs]
        return (outputs[0], outputs[1:]) if self.hq else outputs[0]

    def decode(self, embedded: Any, j: int, input_boxes: Any) -> Any:
        """The decoder's ``(1, N, 1, h, w)`` mask logits for image ``j``'s boxes ``(1, N, 4)``
        (scaled to the resized image), as ``pred_masks`` of an output object."""
        import torch

        if self.hq:
            embeddings, intermediate = embedded
            inputs = [embeddings[j : j + 1], input_boxes, intermediate[0][j : j + 1]]
        else:
            inputs = [embedded[j : j + 1], input_boxes]
        arrays = [np.ascontiguousarray(t.detach().cpu().numpy(), dtype=np.float32) for t in inputs]
        boxes, chunks = arrays[1], []
        for start in range(0, max(boxes.shape[1], 1), self.decode_chunk):  # each box's mask is its own
            arrays[1] = boxes[:, start : start + self.decode_chunk]
            with self._lock:
                chunks.append(np.array(self._decode_request.infer(arrays)[self.decoder.outputs[0]]))
        return SimpleNamespace(pred_masks=torch.from_numpy(np.concatenate(chunks, axis=1)))


def load_ov_sam(
    model: Any,
    name: str,
    *,
    hq: bool = False,
    hq_token_only: bool = False,
    cache_dir: Path | None = None,
    threads: int | None = None,
) -> OvSam:
    """The OpenVINO encoder and decoder of the loaded ``model`` (named ``name``: its folder or
    hub id, fingerprinted for the cache), read from the IR cache or converted once into it,
    compiled for the CPU with ``threads`` inference threads (torch's count when None)."""
    check_cpu_float32(f"segmenter {name}", dtype=model.dtype)
    fingerprint = source_fingerprint(name, model, f"sam-graph={GRAPH_VERSION}")
    started = time.perf_counter()
    kind = "sam-hq" if hq else "sam"
    encoder = load_or_convert(entry_name(name, f"{kind}-image-encoder"), fingerprint, lambda: convert_encoder(model, hq), cache_dir)
    decoder_part = f"{kind}-mask-decoder" + ("-hq-only" if hq and hq_token_only else "")
    decoder = load_or_convert(
        entry_name(name, decoder_part), fingerprint, lambda: convert_decoder(model, hq, hq_token_only), cache_dir
    )
    runtime = OvSam(compile_model(encoder, threads), compile_model(decoder, threads), hq)
    logger.info("OpenVINO SAM for %s ready in %.1f s", name, time.perf_counter() - started)
    return runtime
