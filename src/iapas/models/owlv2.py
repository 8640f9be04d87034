"""OWLv2 through ``transformers``: an open-vocabulary detector that reads a list of text queries.

OWLv2 scores every image patch against each text query on its own (a query's logits do not
depend on the other queries), so the caption's phrases (``'crack . hole .'`` -> ``['crack',
'hole']``, as :func:`iapas.core.caption.caption_phrases` splits them) are its queries; a box's
score is its best query's probability (the sigmoid of the logit, as the processor's
``post_process_object_detection`` does) and its phrase is that query. There is no per-token text
threshold: ``text_threshold`` is accepted for the :class:`iapas.models.Detector` protocol and
ignored. NMS, the box threshold's use and the size filter stay the pipeline's.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np

from iapas.models import registry
from iapas.models.base import Detector, check_finite, tokenizer_text_budget
from iapas.models.loading import load_checked_model, load_pretrained, pil_processor_loader, resolve_device, resolve_dtype
from iapas.core.caption import GROUNDING_DINO_MAX_TEXT_LEN, TextBudget, caption_phrases
from iapas.core.types import Detections

logger = logging.getLogger(__name__)

# config.json model type this adapter runs, and its transformers class.
OWLV2_MODEL_TYPES = registry.model_classes("OWLv2")
# Phrases whose text embeddings are kept (a profile's caption has tens).
_TEXT_CACHE_SIZE = 1024


class Owlv2Detector(Detector):
    """Adapter for ``Owlv2ForObjectDetection`` behind :class:`iapas.models.Detector`.

    Work per batch of images, whatever the number of captions (:meth:`detect_many`): one
    preprocessing and one vision-encoder pass for the batch (OWLv2 pads each image to a square and
    resizes it to the model's input, so any mix of sizes is one batch and no image's boxes depend
    on another's), one text-encoder pass for the phrases of all captions not seen before (the text
    embeddings are cached per phrase), then the class head per caption. Boxes are in the
    original image's pixels: the processor pads at the bottom and right, so a normalised box
    scales by ``max(height, width)`` on both axes (what ``post_process_object_detection`` does
    with ``target_sizes``); they are not clipped (the pipeline clamps them as SAM prompts, as for
    Grounding DINO).
    """

    fuses_object = True

    def __init__(self, model: Any, processor: Any, device: str, dtype: Any, name: str) -> None:
        self.model = model
        self.processor = processor
        self.device = device
        self.dtype = dtype
        self.name = name
        self.vision_count = 0  # vision-encoder passes (one per detect/detect_many call)
        self.text_count = 0  # text-encoder passes (one per new list of phrases)
        self._text_cache: dict[str, tuple[Any, bool]] = {}  # phrase -> (embedding, real query)
        self.compiled = False

    @classmethod
    def from_pretrained(cls, name_or_path: str, device: str = "auto", dtype: str = "auto") -> Owlv2Detector:
        from transformers import AutoModelForZeroShotObjectDetection, AutoProcessor

        name_or_path = registry.resolve("detector", name_or_path)
        dev = resolve_device(device)
        torch_dtype = resolve_dtype(dtype, dev)
        what = "OWLv2 detector"
        processor = load_pretrained(
            pil_processor_loader(AutoProcessor), name_or_path, what=what, expected_model_types=tuple(OWLV2_MODEL_TYPES)
        )
        model = load_checked_model(
            AutoModelForZeroShotObjectDetection.from_pretrained, name_or_path, what=what,
            model_classes=OWLV2_MODEL_TYPES, device=dev, dtype=torch_dtype,
        )
        return cls(model, processor, dev, torch_dtype, name_or_path)

    def compile(self) -> None:
        """``torch.compile`` the vision encoder in place (the bulk of the work)."""
        self.model.owlv2.vision_model.compile()
        self.compiled = True

    # --- text ------------------------------------------------------------------------------------

    @property
    def max_query_tokens(self) -> int:
        """Tokens per query, start and end tokens included: 16 for the hub models."""
        return int(self.model.config.text_config.max_position_embeddings)

    @staticmethod
    def phrases(caption: str) -> list[str]:
        """The caption's phrases, OWLv2's text queries."""
        return caption_phrases(caption)

    def _too_long(self, phrases: Sequence[str]) -> str | None:
        tok = self.processor.tokenizer
        for phrase in phrases:
            n = len(tok(phrase)["input_ids"])
            if n > self.max_query_tokens:
                return (
                    f"the caption phrase {phrase!r} is {n} tokens long but {self.name} reads at most "
                    f"{self.max_query_tokens} per query: shorten it in the profile's caption"
                )
        return None

    def caption_budget(self) -> TextBudget:
        """Stage 1's caption budget: OWLv2's tokenizer over the whole caption against Grounding
        DINO's 256 (each phrase's own window is :meth:`check_caption`'s)."""
        return tokenizer_text_budget(self.processor.tokenizer, GROUNDING_DINO_MAX_TEXT_LEN)

    def check_caption(self, caption: str) -> None:
        """Raise ValueError if a phrase of the caption does not fit OWLv2's query window."""
        problem = self._too_long(self.phrases(caption))
        if problem:
            raise ValueError(problem)

    def _query_embeds(self, phrases: tuple[str, ...]) -> tuple[Any, Any]:
        """``(Q, D)`` normalised text embeddings and the ``(Q,)`` query mask of ``phrases``, as
        ``Owlv2ForObjectDetection.forward`` computes them (padded to the query window). Each
        phrase is encoded once per detector (the phrases not seen before in one text pass), so a
        phrase's embedding does not depend on the other phrases asked for with it."""
        import torch

        new = [p for p in dict.fromkeys(phrases) if p not in self._text_cache]
        if new and len(self._text_cache) + len(new) > _TEXT_CACHE_SIZE:
            # bound the cache before encoding, so that every phrase of this call is in it after
            self._text_cache.clear()
            new = list(dict.fromkeys(phrases))
        if new:
            problem = self._too_long(new)
            if problem:
                raise ValueError(problem)
            tokens = self.processor.tokenizer(
                new, padding="max_length", max_length=self.max_query_tokens, return_tensors="pt"
            )
            input_ids = tokens["input_ids"].to(self.device)
            with torch.inference_mode():
                text = self.model.owlv2.get_text_features(
                    input_ids=input_ids, attention_mask=tokens["attention_mask"].to(self.device)
                ).pooler_output
                text = text / torch.linalg.norm(text, ord=2, dim=-1, keepdim=True)
            self.text_count += 1
            for i, phrase in enumerate(new):
                self._text_cache[phrase] = (text[i], bool(input_ids[i, 0] > 0))  # first token 0: padding
        rows = [self._text_cache[p] for p in phrases]
        embeds = torch.stack([r[0] for r in rows])
        mask = torch.tensor([r[1] for r in rows], device=embeds.device)
        return embeds, mask

    # --- images ----------------------------------------------------------------------------------

    def _image_features(self, images: Sequence[np.ndarray]) -> tuple[Any, np.ndarray]:
        """One preprocessing and one vision-encoder pass for ``images``: the per-patch features
        ``(B, P, D)`` and the normalised cxcywh boxes ``(B, P, 4)``."""
        import torch

        pixels = self.processor.image_processor(images=list(images), return_tensors="pt")["pixel_values"]
        with torch.inference_mode():
            feature_map, _ = self.model.image_embedder(pixel_values=pixels.to(self.device, self.dtype))
            b, h, w, d = feature_map.shape
            feats = feature_map.reshape(b, h * w, d)
            boxes = self.model.box_predictor(feats, feature_map).float().cpu().numpy()
        self.vision_count += 1
        return feats, boxes

    def _logits(self, feats: Any, phrases: tuple[str, ...]) -> np.ndarray:
        """``(B, P, Q)`` query logits of every patch for ``phrases``."""
        import torch

        text, mask = self._query_embeds(phrases)
        batch = feats.shape[0]
        with torch.inference_mode():
            logits, _ = self.model.class_predictor(
                feats, text[None].expand(batch, -1, -1).to(feats.dtype), mask[None].expand(batch, -1)
            )
        return logits.float().cpu().numpy()

    @staticmethod
    def _xyxy(box: np.ndarray, keep: np.ndarray, image: np.ndarray) -> np.ndarray:
        side = float(max(image.shape[0], image.shape[1]))  # padded to a square at the bottom/right
        cx, cy, bw, bh = (box[keep, i] for i in range(4))
        xyxy = np.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], axis=-1) * side
        return xyxy.astype(np.float32).reshape(-1, 4)

    def _decode(
        self, images: Sequence[np.ndarray], logits: np.ndarray, boxes: np.ndarray, columns: list[int],
        labels: list[str], box_threshold: float,
    ) -> list[Detections]:
        import torch

        out = []
        for image, logit, box in zip(images, logits, boxes):
            if not columns:
                out.append(Detections.empty())
                continue
            chosen = logit[:, columns]
            best = chosen.argmax(axis=-1)  # on the logits: saturated probabilities would tie
            # a box's score is its best query's probability (sigmoid of the best logit)
            scores = torch.from_numpy(chosen.max(axis=-1)).sigmoid().numpy()
            keep = np.flatnonzero(scores > box_threshold)
            out.append(Detections(self._xyxy(box, keep, image), scores[keep].astype(np.float32),
                                  tuple(labels[int(best[q])] for q in keep)))
        return out

    # --- the Detector protocol -------------------------------------------------------------------

    def detect_many(
        self, images: Sequence[np.ndarray], captions: Sequence[str], *, box_threshold: float = 0.1, text_threshold: float = 0.1
    ) -> list[list[Detections]]:
        """:meth:`detect` for several captions: one vision pass and one class-head call for the
        phrases of all captions, each caption's boxes scored by its own phrases only (the same
        numbers as one caption at a time). ``text_threshold`` is ignored."""
        del text_threshold  # OWLv2 has no token-level threshold
        if not images:
            return [[] for _ in captions]
        per_caption = [self.phrases(c) for c in captions]
        union = tuple(dict.fromkeys(p for phrases in per_caption for p in phrases))
        feats, boxes = self._image_features(images)
        logits = self._logits(feats, union) if union else np.zeros(boxes.shape[:2] + (0,), np.float32)
        check_finite("OWLv2", self.name, self.dtype, self.device, logits=logits, boxes=boxes)
        index = {p: i for i, p in enumerate(union)}
        results = []
        for phrases in per_caption:
            labels = list(dict.fromkeys(phrases))
            results.append(self._decode(images, logits, boxes, [index[p] for p in labels], labels, box_threshold))
        return results

    def detect_with_object(
        self, images: Sequence[np.ndarray], caption: str, object_phrase: str, *, box_threshold: float = 0.1,
        text_threshold: float = 0.1,
    ) -> tuple[list[Detections], list[Detections]]:
        """The caption's detections and the object's (``--fuse-object-detection``): the object
        phrase must be one of the caption's phrases; its boxes are scored by that query alone,
        which for OWLv2 is exactly what a separate object detection gives (queries do not interact):
        fusing changes no number and costs what :meth:`detect_many` with both captions costs."""
        phrase = object_phrase.strip().lower()
        if phrase not in self.phrases(caption):
            raise ValueError(f"object tag {object_phrase!r} is not in the caption {caption!r}; cannot fuse object detection")
        return super().detect_with_object(images, caption, phrase, box_threshold=box_threshold, text_threshold=text_threshold)
