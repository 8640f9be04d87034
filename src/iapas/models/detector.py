"""Grounding DINO through ``transformers``: the default open-vocabulary detector."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from contextlib import ExitStack
from typing import Any

import numpy as np

from iapas.core.caption import GROUNDING_DINO_MAX_TEXT_LEN, TextBudget
from iapas.models import registry
from iapas.models.base import Detector, check_finite, tokenizer_text_budget
from iapas.models.caching import ForwardMemo, shared_forward
from iapas.models.loading import load_checked_model, load_pretrained, pil_processor_loader, resolve_device, resolve_dtype
from iapas.core.types import Detections

logger = logging.getLogger(__name__)

DEFAULT_DETECTOR = registry.DEFAULT_DETECTOR
DETECTOR_CHOICES = registry.names("detector")  # name -> hub id (see iapas.models.registry)


def caption_too_long(caption: str, tokens: int, model: str, max_tokens: int, words: int = 8) -> str:
    """The one-line refusal of a caption over ``model``'s text window: its first ``words`` words
    and its token count, not the whole caption (which may be kilobytes long)."""
    parts = caption.split()
    shown = " ".join(parts[:words]) + (f" ... ({len(parts)} words)" if len(parts) > words else "")
    return (
        f"the caption {shown!r} is {tokens} tokens long but {model} reads at most {max_tokens}: "
        "remove phrases from the profile's caption"
    )


def check_caption_length(caption: str, name_or_path: str) -> None:
    """Before loading a detector: raise ValueError (:func:`caption_too_long`) when ``caption``
    does not fit the text window of the Grounding DINO ``name_or_path``, counted with its
    tokenizer and config alone (small files; a hub id is looked up in the local cache first).
    When they cannot be had, nothing is checked here: loading the model reports that, and
    :meth:`GroundingDinoDetector.check_caption` checks the caption once it is loaded."""
    name = registry.resolve("detector", name_or_path)

    def cached_first(load: Any) -> Any:
        try:
            return load(name, local_files_only=True)
        except OSError:
            return load(name)

    try:
        from transformers import AutoConfig, AutoTokenizer

        config = cached_first(AutoConfig.from_pretrained)
        if getattr(config, "model_type", None) not in DETECTOR_MODEL_TYPES:
            return  # another family's limit (OWLv2: per phrase) is its adapter's check_caption
        tokenizer = cached_first(AutoTokenizer.from_pretrained)  # only for Grounding DINO's window
    except Exception as exc:  # noqa: BLE001 - the model load that follows says what is wrong
        logger.debug("caption not checked before loading %s: %s", name, exc)
        return
    max_tokens = int(getattr(config, "max_text_len", GROUNDING_DINO_MAX_TEXT_LEN))
    tokens = len(tokenizer(GroundingDinoDetector.normalize_caption(caption))["input_ids"])
    if tokens > max_tokens:
        raise ValueError(caption_too_long(caption, tokens, name, max_tokens))


def original_resized_shape(height: int, width: int, size: int, max_size: int) -> tuple[int, int]:
    """(height, width) after the original Grounding DINO's resize (``RandomResize([size],
    max_size)`` in its ``datasets/transforms.py``, its training and inference preprocessing): the
    short side becomes ``size``, lowered to ``int(round(max_size * short / long))`` when the long
    side would pass ``max_size``; the long side is then truncated from that rounded short side.
    transformers' helper computes the long side from the unrounded short side, which differs by
    one pixel for many capped shapes (250x700: 476x1332 here, 476x1333 there)."""
    short, long = float(min(height, width)), float(max(height, width))
    if long / short * size > max_size:
        size = int(round(max_size * short / long))
    if (width <= height and width == size) or (height <= width and height == size):
        return height, width
    if width < height:
        return int(size * height / width), size
    return size, int(size * width / height)


# config.json model types this adapter runs, and their transformers classes (same processor,
# same outputs): Grounding DINO, and MM-Grounding-DINO (LLMDet checkpoints load as the latter).
DETECTOR_MODEL_TYPES = registry.model_classes("Grounding DINO", "MM-Grounding-DINO")


class GroundingDinoDetector(Detector):
    """Adapter for ``GroundingDinoForObjectDetection`` and ``MMGroundingDinoForObjectDetection``
    (see :data:`DETECTOR_MODEL_TYPES`) behind :class:`iapas.models.Detector`.

    Images are resized by the original Grounding DINO's rule (:func:`original_resized_shape`)
    with the processor's edges (shortest side 800, longest at most 1333 for the hub models), then
    normalised as the processor does; box scores are the maximum token probability; boxes are NOT clipped to the image
    (a box may reach past its edges, as in the reference code, whose NMS, object size and size
    filter see the unclipped boxes; the pipeline clamps them only as SAM prompts).
    The caption's tokenisation is computed once per caption and reused across batches.

    Exact savings (bitwise the same outputs; switch off to measure them): ``share_backbone``
    runs the image backbone once for all captions of one image batch (it never sees the text);
    ``cache_text_features`` reuses BERT's output for the same caption tokens across batches.
    """

    fuses_object = True

    def __init__(self, model: Any, processor: Any, device: str, dtype: Any, name: str, ov: Any = None) -> None:
        self.model = model
        self.ov = ov  # an iapas.models.ov.gdino.OvGroundingDino: --runtime openvino runs the forward
        self.processor = processor
        self.device = device
        self.dtype = dtype
        self.name = name
        self._text_cache: dict[str, dict[str, Any]] = {}
        self.forward_count = 0
        self.share_backbone = True
        self.cache_text_features = True
        self.text_memo = ForwardMemo(maxsize=8)
        self.compiled = False

    def compile(self) -> None:
        """``torch.compile`` the heavy sub-modules in place (Swin, deformable encoder, decoder);
        the first forward at each new input size pays the compilation. Outputs change within
        float rounding (fused kernels), not bitwise. Nothing to do on the openvino runtime."""
        if self.ov is not None:
            logger.info("detector %s runs on OpenVINO: torch.compile skipped", self.name)
            return
        inner = self.model.model
        for module in (inner.backbone.conv_encoder, inner.encoder, inner.decoder):
            module.compile()
        self.compiled = True

    @classmethod
    def from_pretrained(
        cls, name_or_path: str = DEFAULT_DETECTOR, device: str = "auto", dtype: str = "auto", *,
        runtime: str = "torch", ov_cache: Any = None, ov_int8: bool = False,
    ) -> GroundingDinoDetector:
        """``runtime="openvino"``: the forward runs as OpenVINO IR on the CPU (converted on first
        use per image shape, cached in ``ov_cache``; ``ov_int8``: int8 weights), the rest as on torch."""
        from transformers import AutoModelForZeroShotObjectDetection, AutoProcessor

        name_or_path = registry.resolve("detector", name_or_path)
        if runtime == "openvino":  # the same refusals as SamSegmenter's, before anything loads
            from iapas.models.ov.cache import check_cpu_float32

            check_cpu_float32(f"detector {name_or_path}", device, dtype)
        dev = "cpu" if runtime == "openvino" else resolve_device(device)
        torch_dtype = resolve_dtype(dtype, dev)
        what = "Grounding DINO detector"
        types = tuple(DETECTOR_MODEL_TYPES)
        processor = load_pretrained(
            pil_processor_loader(AutoProcessor), name_or_path, what=what, expected_model_types=types
        )
        model = load_checked_model(
            AutoModelForZeroShotObjectDetection.from_pretrained, name_or_path, what=what,
            model_classes=DETECTOR_MODEL_TYPES, device=dev, dtype=torch_dtype,
        )
        ov = None
        if runtime == "openvino":
            from iapas.models.ov.gdino import OvGroundingDino

            ov = OvGroundingDino(model, name_or_path, ov_cache, int8=ov_int8)
        return cls(model, processor, dev, torch_dtype, name_or_path, ov)

    @staticmethod
    def normalize_caption(caption: str) -> str:
        """Grounding DINO expects lowercase text ending with ' .'."""
        caption = " ".join(caption.lower().split())
        if not caption.endswith("."):
            caption += " ."
        return caption

    @property
    def max_text_tokens(self) -> int:
        """How many text tokens (with [CLS] and [SEP]) the model reads: 256 for the hub models."""
        max_len = getattr(self.model.config, "max_text_len", None)
        return int(max_len) if isinstance(max_len, int) and max_len > 0 else GROUNDING_DINO_MAX_TEXT_LEN

    def caption_budget(self) -> TextBudget:
        """Exact: the model's tokenizer against its text window (stage 1 fits the caption to it)."""
        return tokenizer_text_budget(self.processor.tokenizer, self.max_text_tokens)

    def check_caption(self, caption: str) -> None:
        """Raise ValueError if the caption does not fit the model's text window."""
        n = len(self.processor.tokenizer(self.normalize_caption(caption))["input_ids"])
        if n > self.max_text_tokens:
            raise ValueError(caption_too_long(caption, n, self.name, self.max_text_tokens))

    def _text_inputs(self, caption: str) -> dict[str, Any]:
        cached = self._text_cache.get(caption)
        if cached is None:
            cached = dict(self.processor.tokenizer([caption], return_tensors="pt", padding="longest"))
            cached = {k: v.to(self.device) for k, v in cached.items()}
            self._text_cache[caption] = cached
        return cached

    def _phrase_token_mask(self, ids: np.ndarray, width: int) -> np.ndarray:
        """Which text positions can name a phrase: real tokens that are not specials or '.'."""
        tok = self.processor.tokenizer
        skip = set(tok.all_special_ids) | set(tok.convert_tokens_to_ids(["."]))
        ok = np.zeros(width, dtype=bool)
        n = min(len(ids), width)
        ok[:n] = [int(i) not in skip for i in ids[:n]]
        return ok

    def _phrase(self, prob: np.ndarray, ids: np.ndarray, ok: np.ndarray, text_threshold: float) -> str:
        """The caption tokens above ``text_threshold`` for one box, decoded (as the reference
        code does); when none passes, the phrase of the single most probable token."""
        hit = np.flatnonzero(ok & (prob > text_threshold))
        if hit.size == 0:
            candidates = np.flatnonzero(ok)
            if candidates.size == 0:
                return ""
            hit = candidates[[int(np.argmax(prob[candidates]))]]
        return str(self.processor.tokenizer.decode([int(ids[i]) for i in hit])).strip()

    def _pixels(self, images: Sequence[np.ndarray]) -> dict[str, Any]:
        """The processor's resize/normalise/pad, on the device (shared by every caption)."""
        if self._fast_preprocessing():
            return self._pixels_fast(images)
        ip = self.processor.image_processor
        size = getattr(ip, "size", None)
        explicit: dict[str, Any] = {}
        if getattr(size, "shortest_edge", None) and getattr(size, "longest_edge", None):
            h, w = self._resized_shape(images[0])  # one shape per call (see :meth:`_shape_groups`)
            explicit["size"] = {"height": h, "width": w}  # the original's rule, not transformers'
        pixel = ip(images=list(images), return_tensors="pt", **explicit)
        return {
            "pixel_values": pixel["pixel_values"].to(self.device, self.dtype),
            "pixel_mask": pixel["pixel_mask"].to(self.device),
        }

    def _fast_preprocessing(self) -> bool:
        """Whether the processor is the standard Grounding DINO one, which :meth:`_pixels_fast`
        reproduces (resize with PIL on uint8 as it does, then rescale/normalise on the device)."""
        from PIL import Image

        ip = self.processor.image_processor
        size = getattr(ip, "size", None)
        return (
            type(ip).__name__.startswith("GroundingDinoImageProcessor")
            and bool(getattr(size, "shortest_edge", None)) and bool(getattr(size, "longest_edge", None))
            and ip.do_resize and ip.do_rescale and ip.do_normalize and ip.do_pad
            and getattr(ip, "pad_size", None) is None
            and int(ip.resample) == int(Image.Resampling.BILINEAR)
        )

    def _pixels_fast(self, images: Sequence[np.ndarray]) -> dict[str, Any]:
        """Same values as the processor (to float32 rounding): uint8 resize with PIL, uint8 copy
        to the device, then rescale and normalise there, zero padding bottom/right."""
        import torch
        from PIL import Image

        ip = self.processor.image_processor
        resized = []
        for image in images:
            h, w = self._resized_shape(image)
            if (h, w) != image.shape[:2]:
                image = np.array(Image.fromarray(image).resize((w, h), Image.Resampling.BILINEAR))
            resized.append(np.require(image, requirements=["C", "W"]))
        height = max(im.shape[0] for im in resized)
        width = max(im.shape[1] for im in resized)
        mean = torch.tensor(ip.image_mean, dtype=torch.float32, device=self.device).view(3, 1, 1)
        std = torch.tensor(ip.image_std, dtype=torch.float32, device=self.device).view(3, 1, 1)
        values = torch.zeros((len(resized), 3, height, width), dtype=torch.float32, device=self.device)
        mask = torch.zeros((len(resized), height, width), dtype=torch.long, device=self.device)
        for i, im in enumerate(resized):
            h, w = im.shape[:2]
            chw = torch.from_numpy(im).to(self.device).permute(2, 0, 1).float()
            values[i, :, :h, :w] = (chw * float(ip.rescale_factor) - mean) / std
            mask[i, :h, :w] = 1
        return {"pixel_values": values.to(self.dtype), "pixel_mask": mask}

    def _forward(self, pixels: dict[str, Any], caption: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One batched forward: token probabilities (B, queries, text_len), normalised cxcywh
        boxes (B, queries, 4) and the caption's token ids."""
        import torch

        text = self._text_inputs(self.normalize_caption(caption))
        batch = pixels["pixel_values"].shape[0]
        inputs = dict(pixels)
        for key, value in text.items():
            inputs[key] = value.expand(batch, -1)
        if self.ov is not None:  # the whole forward is one OpenVINO graph (converted outside inference mode)
            outputs = self.ov(**inputs)
        else:
            with torch.inference_mode(), ExitStack() as stack:
                if self.cache_text_features:
                    stack.enter_context(self.text_memo.active(self.model.model.text_backbone))
                outputs = self.model(**inputs)
        self.forward_count += 1
        probs = outputs.logits.float().sigmoid().cpu().numpy()
        boxes = outputs.pred_boxes.float().cpu().numpy()
        check_finite("Grounding DINO", self.name, self.dtype, self.device, logits=probs, boxes=boxes)
        return probs, boxes, text["input_ids"][0].cpu().numpy()

    @staticmethod
    def _boxes(box: np.ndarray, keep: np.ndarray, w: int, h: int) -> np.ndarray:
        cx, cy, bw, bh = (box[keep, i] for i in range(4))
        xyxy = np.stack([(cx - bw / 2) * w, (cy - bh / 2) * h, (cx + bw / 2) * w, (cy + bh / 2) * h], axis=-1)
        return xyxy.astype(np.float32).reshape(-1, 4)  # unclipped: see the class docstring

    def _decode(
        self, images: Sequence[np.ndarray], probs: np.ndarray, boxes: np.ndarray, ids: np.ndarray,
        box_threshold: float, text_threshold: float,
    ) -> list[Detections]:
        phrase_ok = self._phrase_token_mask(ids, probs.shape[-1])
        results = []
        for image, prob, box in zip(images, probs, boxes):
            h, w = int(image.shape[0]), int(image.shape[1])
            scores = prob.max(axis=-1)  # a box's score is its maximum token probability
            keep = np.flatnonzero(scores > box_threshold)
            phrases = tuple(self._phrase(prob[q], ids, phrase_ok, text_threshold) for q in keep)
            results.append(Detections(self._boxes(box, keep, w, h), scores[keep], phrases))
        return results

    def _resized_shape(self, image: np.ndarray) -> tuple[int, int]:
        """The (height, width) ``image`` is resized to: the original Grounding DINO's rule
        (:func:`original_resized_shape`) with the processor's shortest/longest edge; its own
        shape when the processor has none."""
        size = getattr(self.processor.image_processor, "size", None)
        shortest, longest = getattr(size, "shortest_edge", None), getattr(size, "longest_edge", None)
        if not (shortest and longest):
            return int(image.shape[0]), int(image.shape[1])
        return original_resized_shape(int(image.shape[0]), int(image.shape[1]), int(shortest), int(longest))

    def _shape_groups(self, images: Sequence[np.ndarray]) -> list[list[int]]:
        """Indices of ``images`` grouped by resized shape, in first-seen order.

        A batch is zero-padded to its largest image, and Grounding DINO's backbone sees the
        padding (the pixel mask does not cancel it), so an image's boxes would depend on the
        other images of its batch. Each group is one forward without padding: a batch gives the
        same boxes as images one by one, and same-sized images (a camera's) stay one forward.
        """
        groups: dict[tuple[int, int], list[int]] = {}
        for i, image in enumerate(images):
            groups.setdefault(self._resized_shape(image), []).append(i)
        return list(groups.values())

    def _grouped(
        self, images: Sequence[np.ndarray], run: Any, n_outputs: int
    ) -> list[list[Detections]]:
        """Call ``run(group_images)`` (which returns ``n_outputs`` lists of Detections) per shape
        group and put the results back in image order."""
        out: list[list[Detections | None]] = [[None] * len(images) for _ in range(n_outputs)]
        for idx in self._shape_groups(images):
            parts = run([images[i] for i in idx])
            for k in range(n_outputs):
                for i, det in zip(idx, parts[k]):
                    out[k][i] = det
        return out  # type: ignore[return-value]

    def detect_many(
        self, images: Sequence[np.ndarray], captions: Sequence[str], *, box_threshold: float = 0.1, text_threshold: float = 0.1
    ) -> list[list[Detections]]:
        """:meth:`detect` for several captions on the same images: the images are preprocessed
        once, then one forward per caption. Returns one list of Detections per caption."""
        if not images:
            return [[] for _ in captions]

        def run(group: list[np.ndarray]) -> list[list[Detections]]:
            pixels = self._pixels(group)
            out = []
            with ExitStack() as stack:
                # keyed on these very pixel tensors; never around an OpenVINO conversion (a replayed
                # output would be traced as a constant)
                if self.share_backbone and len(captions) > 1 and self.ov is None:
                    stack.enter_context(shared_forward(self.model.model.backbone))
                for caption in captions:
                    probs, boxes, ids = self._forward(pixels, caption)
                    out.append(self._decode(group, probs, boxes, ids, box_threshold, text_threshold))
            return out

        return self._grouped(images, run, len(captions))

    def _phrase_positions(self, ids: np.ndarray, phrase: str) -> np.ndarray:
        """Token positions of ``phrase`` in the caption ids (its last occurrence)."""
        tok = self.processor.tokenizer
        target = [int(t) for t in tok(phrase.lower().strip(), add_special_tokens=False)["input_ids"]]
        seq = [int(t) for t in ids]
        for start in range(len(seq) - len(target), -1, -1):
            if target and seq[start : start + len(target)] == target:
                return np.arange(start, start + len(target))
        return np.zeros((0,), dtype=np.int64)

    def detect_with_object(
        self, images: Sequence[np.ndarray], caption: str, object_phrase: str, *, box_threshold: float = 0.1,
        text_threshold: float = 0.1,
    ) -> tuple[list[Detections], list[Detections]]:
        """One forward for both: the caption's detections, and the object's detections scored by
        the object phrase's own tokens within the caption (so the object phrase must be in the
        caption). This replaces the separate object forward (``--fuse-object-detection``)."""
        if not images:
            return [], []

        def run(group: list[np.ndarray]) -> list[list[Detections]]:
            probs, boxes, ids = self._forward(self._pixels(group), caption)
            anomalies = self._decode(group, probs, boxes, ids, box_threshold, text_threshold)
            positions = self._phrase_positions(ids, object_phrase)
            if positions.size == 0:
                raise ValueError(
                    f"object tag {object_phrase!r} is not in the caption {caption!r}; cannot fuse object detection"
                )
            objects = []
            for image, prob, box in zip(group, probs, boxes):
                h, w = int(image.shape[0]), int(image.shape[1])
                scores = prob[:, positions].max(axis=-1)
                keep = np.flatnonzero(scores > box_threshold)
                objects.append(Detections(self._boxes(box, keep, w, h), scores[keep], (object_phrase,) * len(keep)))
            return [anomalies, objects]

        anomalies, objects = self._grouped(images, run, 2)
        return anomalies, objects
