"""Grounding DINO's forward through OpenVINO (MM-Grounding DINO and LLMDet too: same class).

The transformers module is converted with ``ov.convert_model`` as it is, but for two things the
converter cannot take, handled at conversion time only:

- the text self-attention masks and position ids (built with ``cummax``, ``cummin`` and
  ``isin`` from the caption's token ids) are computed outside the graph, by transformers' own
  function, and fed to it as two more inputs;
- ``torch.special.logit`` is written as ``log(x / (1 - x))`` after the same clamp.

The caption's length is a dynamic dimension of the graph. The image's size is not: Swin's
window padding and the deformable attention's level shapes are traced as constants, so one
graph serves one resized image shape. :class:`OvGroundingDino` therefore keeps one IR per shape
in the cache (:mod:`iapas.models.ov.cache`, converted on first use) and the last
:data:`MAX_SHAPES` compiled shapes in memory. A camera's images share one shape; MVTec's all
resize to 800x800. The cache key is :func:`iapas.models.ov.source.source_fingerprint` (the
model's fingerprint, the transformers version) with :data:`GRAPH_VERSION`.
"""

from __future__ import annotations

import logging
import sys
import threading
import warnings
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from iapas.models.ov.cache import compile as compile_ir
from iapas.models.ov.cache import INSTALL_HINT, OpenVinoMissingError, entry_name, load_or_convert, require_openvino
from iapas.models.ov.source import source_fingerprint

logger = logging.getLogger(__name__)

GRAPH_VERSION = 1  # raise when the converted graph changes: old cache entries are then rebuilt
MAX_SHAPES = 4  # compiled image shapes kept in memory (each holds its own copy of the weights)
INPUTS = ("pixel_values", "pixel_mask", "input_ids", "token_type_ids", "attention_mask",
          "text_self_attention_masks", "position_ids")


@dataclass
class OvOutputs:
    """What the detector's post-processing reads of transformers' outputs (torch tensors)."""

    logits: Any
    pred_boxes: Any


def _logit(x: Any, eps: float | None = None) -> Any:
    """``torch.special.logit`` with ``log`` (the converter has no logit)."""
    import torch

    if eps is not None:
        x = x.clamp(eps, 1.0 - eps)
    return torch.log(x / (1.0 - x))


@contextmanager
def _convertible() -> Iterator[None]:
    """Within the block, ``torch.special.logit`` is :func:`_logit` (for tracing only)."""
    import torch

    original = torch.special.logit
    torch.special.logit = _logit
    try:
        yield
    finally:
        torch.special.logit = original


def _graph_module(model: Any) -> Any:
    """``model`` as a module whose forward takes the text masks and position ids as inputs and
    returns (logits, pred_boxes)."""
    import torch

    home = sys.modules[type(model.model).__module__]  # grounding_dino's or mm_grounding_dino's

    class Graph(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.detector = model

        def forward(self, pixel_values: Any, pixel_mask: Any, input_ids: Any, token_type_ids: Any,
                    attention_mask: Any, text_self_attention_masks: Any, position_ids: Any) -> Any:
            name = "generate_masks_with_special_tokens_and_transfer_map"
            original = getattr(home, name)
            setattr(home, name, lambda *a, **k: (text_self_attention_masks, position_ids))
            try:
                out = self.detector(pixel_values=pixel_values, pixel_mask=pixel_mask, input_ids=input_ids,
                                    token_type_ids=token_type_ids, attention_mask=attention_mask)
            finally:
                setattr(home, name, original)
            return out.logits, out.pred_boxes

    return Graph().eval()


def text_structure(model: Any, input_ids: Any) -> tuple[Any, Any]:
    """The text self-attention masks and position ids transformers builds from the token ids
    (its own function, outside the graph)."""
    home = sys.modules[type(model.model).__module__]
    return home.generate_masks_with_special_tokens_and_transfer_map(input_ids, special_tokens=model.model.special_tokens)


def convert(model: Any, example: dict[str, Any], int8: bool = False) -> Any:
    """The ``openvino.Model`` of the transformers detector ``model`` for ``example``'s image shape
    (a dict of :data:`INPUTS` tensors); ``int8``: NNCF int8 weight compression."""
    import torch

    ov = require_openvino()
    graph = _graph_module(model)
    with torch.no_grad(), _convertible(), warnings.catch_warnings():
        # the tracer's warnings name the very constants (image-shape branches) that make a graph per shape
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        converted = ov.convert_model(graph, example_input={k: example[k] for k in INPUTS})
    if int8:
        converted = compress_int8(converted)
    return converted


def require_nncf() -> Any:
    """The ``nncf`` module (``--ov-int8``); a one-line error naming the extra when it is missing."""
    try:
        import nncf
    except ImportError:
        raise OpenVinoMissingError(f"--ov-int8 needs nncf: {INSTALL_HINT}") from None
    return nncf


def compress_int8(model: Any) -> Any:
    """NNCF's int8 weight compression of an ``openvino.Model`` (the ``openvino`` extra's nncf)."""
    return require_nncf().compress_weights(model)


class OvGroundingDino:
    """Called as the detector's transformers model is (``self(**inputs)`` with pixel values,
    pixel mask and the caption's token tensors), runs the converted graph of the input's image
    shape and returns :class:`OvOutputs`. ``name``: the model's folder or hub id (fingerprinted
    for the cache); ``cache_dir``: the IR cache (its default when None); ``threads``:
    OpenVINO's inference threads (torch's count when None); ``int8``: nncf's int8 weights
    (nncf's version joins the key). Calls from several threads take turns."""

    def __init__(self, model: Any, name: str, cache_dir: Path | None = None,
                 threads: int | None = None, int8: bool = False) -> None:
        graph = f"gdino-graph={GRAPH_VERSION}"
        if int8:  # refused now, not after each conversion
            graph += f";nncf={require_nncf().__version__}"
        self.model = model
        self.name = name
        self.fingerprint = source_fingerprint(name, model, graph)
        self._lock = threading.Lock()  # one compiled model's infer request per call, the shape cache
        self.cache_dir = cache_dir
        self.threads = threads
        self.int8 = int8
        self.core = require_openvino().Core()
        self.compiled: OrderedDict[tuple[int, int], Any] = OrderedDict()
        self.conversions = 0  # for tests: graphs converted by this object (not read from the cache)

    def _entry(self, height: int, width: int) -> str:
        """The cache entry's name of one image shape."""
        return entry_name(self.name, f"gdino-{height}x{width}" + ("-int8" if self.int8 else ""))

    def _compiled_for(self, inputs: dict[str, Any]) -> Any:
        height, width = (int(s) for s in inputs["pixel_values"].shape[-2:])
        key = (height, width)
        if key in self.compiled:
            self.compiled.move_to_end(key)
            return self.compiled[key]

        def make() -> Any:
            self.conversions += 1
            return convert(self.model, inputs, self.int8)

        ir = load_or_convert(self._entry(height, width), self.fingerprint, make, self.cache_dir)
        self.compiled[key] = compile_ir(ir, self.threads, self.core)
        while len(self.compiled) > MAX_SHAPES:
            self.compiled.popitem(last=False)
        return self.compiled[key]

    def __call__(self, **inputs: Any) -> OvOutputs:
        import torch

        masks, position_ids = text_structure(self.model, inputs["input_ids"])
        full = {**inputs, "text_self_attention_masks": masks, "position_ids": position_ids}
        with self._lock:  # CompiledModel.__call__ reuses one infer request: two threads would share it
            compiled = self._compiled_for(full)
            result = compiled([full[k].numpy() for k in INPUTS])  # outputs copied out (share_outputs=False)
        return OvOutputs(torch.from_numpy(result[0]), torch.from_numpy(result[1]))
