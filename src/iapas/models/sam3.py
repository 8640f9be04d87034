"""SAM 3 through ``transformers``: a detector and a segmenter in one (text prompts -> instances).

IAP-AS as a joint model: each phrase of the caption is one text prompt, each instance SAM 3
finds for it is one detection (score ``s_i``, box, phrase = its prompt) that brings its own
mask ``m_i``. The pipeline then applies the same NMS, size filter and fusion as the cascade,
and skips the separate segmenter (:attr:`Sam3Detector.returns_masks`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from iapas.models.base import Detector, check_finite
from iapas.models import registry
from iapas.models.loading import ModelLoadError, load_checked_model, load_pretrained, one_line, resolve_device, resolve_dtype
from iapas.core.caption import caption_phrases
from iapas.core.types import Detections

logger = logging.getLogger(__name__)

# config.json model type this adapter runs, and its transformers class
SAM3_MODEL_TYPES = registry.model_classes("SAM 3")

# The processor's text window: Sam3Processor pads and truncates every prompt to 32 tokens.
SAM3_TEXT_TOKENS = 32

# Prompts of one image decoded together in one batch; more are split into several calls
# (each prompt runs SAM 3's DETR encoder, decoder and mask decoder on the image's features).
PROMPT_BATCH = 16

# Instances whose masks are upsampled to the image's size in one call.
MASK_CHUNK = 32


@dataclass(frozen=True)
class ImageSettings:
    """What ``Sam3ImageProcessor`` does to an image: a resize to ``height`` x ``width`` (no
    aspect ratio kept, no padding), rescale, normalise."""

    height: int = 1008
    width: int = 1008
    image_mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    image_std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    rescale_factor: float = 1 / 255
    resample: int = 2  # PIL bilinear

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ImageSettings:
        size = values.get("size") or {}
        default = cls()
        return cls(
            height=int(size.get("height", default.height)),
            width=int(size.get("width", default.width)),
            image_mean=tuple(float(v) for v in values.get("image_mean", default.image_mean)),  # type: ignore[arg-type]
            image_std=tuple(float(v) for v in values.get("image_std", default.image_std)),  # type: ignore[arg-type]
            rescale_factor=float(values.get("rescale_factor", default.rescale_factor)),
            resample=int(values.get("resample", default.resample)),
        )


def read_image_settings(name_or_path: str, what: str) -> ImageSettings:
    """The image processor settings of a folder or hub id, read from its ``processor_config.json``
    (``image_processor`` section) or ``preprocessor_config.json``.

    Read as JSON rather than through ``Sam3ImageProcessor``, which needs torchvision."""
    from transformers.utils import cached_file

    for filename in ("processor_config.json", "preprocessor_config.json"):
        try:
            path = cached_file(name_or_path, filename, _raise_exceptions_for_missing_entries=False)
        except OSError as exc:
            raise ModelLoadError(f"{what}: cannot read {filename} of {name_or_path}: {one_line(exc)}") from exc
        if path is None:
            continue
        try:
            values = json.loads(open(path, encoding="utf-8").read())
        except (OSError, ValueError) as exc:
            raise ModelLoadError(f"{what}: cannot read {path}: {exc}") from exc
        return ImageSettings.from_dict(values.get("image_processor", values))
    raise ModelLoadError(f"{what}: {name_or_path} has no processor_config.json or preprocessor_config.json")


class Sam3Detector(Detector):
    """Adapter for ``Sam3Model`` behind :class:`iapas.models.Detector`, returning masks too.

    Per batch of images: one vision encoder pass (all images are resized to the same square),
    whatever the number of prompts; then per image one call of SAM 3's prompt-dependent part
    with all prompts batched (the image's features shared, not copied, up to
    :data:`PROMPT_BATCH` prompts a call). The text encoder runs once per new phrase (cached).

    A detection's score is SAM 3's instance score (query probability times presence
    probability, as ``post_process_instance_segmentation``); ``box_threshold`` is its threshold;
    ``text_threshold`` has no meaning here (a detection's phrase is its prompt) and is ignored.
    Boxes are NOT clipped to the image (as the Grounding DINO adapter's); masks are the
    query's mask logits upsampled bilinearly to the image's size, then sigmoid > 0.5.
    """

    returns_masks = True
    # detect_with_object is the base's: each phrase is its own prompt, so the object's
    # instances are the same as a separate object detection's, for the work of detect_many
    fuses_object = True
    mask_threshold = 0.5

    def __init__(self, model: Any, tokenizer: Any, settings: ImageSettings, device: str, dtype: Any, name: str) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.settings = settings
        self.device = device
        self.dtype = dtype
        self.name = name
        self.vision_count = 0  # vision encoder passes (one per image batch)
        self.text_count = 0  # text encoder passes (new phrases only)
        self.decoder_count = 0  # calls of the prompt-dependent part (per image and prompt batch)
        self.prompt_batch = PROMPT_BATCH
        self._text_cache: dict[str, tuple[Any, Any]] = {}
        self.compiled = False

    @classmethod
    def from_pretrained(cls, name_or_path: str = "facebook/sam3", device: str = "auto", dtype: str = "auto") -> Sam3Detector:
        from transformers import AutoModel, AutoTokenizer

        name_or_path = registry.resolve("detector", name_or_path)
        dev = resolve_device(device)
        torch_dtype = resolve_dtype(dtype, dev)
        what = "SAM 3 detector"
        tokenizer = load_pretrained(
            AutoTokenizer.from_pretrained, name_or_path, what=what, expected_model_types=tuple(SAM3_MODEL_TYPES)
        )
        model = load_checked_model(
            AutoModel.from_pretrained, name_or_path, what=what, model_classes=SAM3_MODEL_TYPES, device=dev, dtype=torch_dtype
        )
        settings = read_image_settings(name_or_path, what)
        return cls(model, tokenizer, settings, dev, torch_dtype, name_or_path)

    def compile(self) -> None:
        """``torch.compile`` the vision encoder and the prompt-dependent modules in place."""
        for module in (self.model.vision_encoder, self.model.detr_encoder, self.model.detr_decoder, self.model.mask_decoder):
            module.compile()
        self.compiled = True

    # --- prompts -------------------------------------------------------------------------------

    @staticmethod
    def prompts(caption: str) -> list[str]:
        """The text prompts of a caption: its phrases (``'crack . hole .'`` -> crack, hole)."""
        return list(dict.fromkeys(caption_phrases(caption)))

    def check_caption(self, caption: str) -> None:
        """Raise ValueError when the caption has no phrase or a phrase longer than SAM 3's
        text window (each phrase is one prompt of at most 32 tokens)."""
        phrases = self.prompts(caption)
        if not phrases:
            raise ValueError(f"the caption {caption!r} has no phrase to prompt {self.name} with")
        for phrase in phrases:
            n = len(self.tokenizer(phrase)["input_ids"])
            if n > SAM3_TEXT_TOKENS:
                raise ValueError(
                    f"the phrase {phrase[:60]!r} is {n} tokens long but {self.name} reads at most "
                    f"{SAM3_TEXT_TOKENS} per prompt: shorten it in the profile's caption"
                )

    def _text(self, phrases: Sequence[str]) -> tuple[Any, Any]:
        """Projected text features ``(P, 32, D)`` and attention mask ``(P, 32)`` of ``phrases``;
        the text encoder runs once for all phrases not seen before."""
        import torch

        new = [p for p in dict.fromkeys(phrases) if p not in self._text_cache]
        if new:
            tokens = self.tokenizer(
                new, padding="max_length", max_length=SAM3_TEXT_TOKENS, truncation=True, return_tensors="pt"
            )
            ids, mask = tokens["input_ids"].to(self.device), tokens["attention_mask"].to(self.device)
            with torch.inference_mode():
                features = self.model.get_text_features(input_ids=ids, attention_mask=mask).pooler_output
            self.text_count += 1
            for i, phrase in enumerate(new):
                self._text_cache[phrase] = (features[i], mask[i])
        features = torch.stack([self._text_cache[p][0] for p in phrases])
        masks = torch.stack([self._text_cache[p][1] for p in phrases])
        return features, masks

    # --- images --------------------------------------------------------------------------------

    def _pixels(self, images: Sequence[np.ndarray]) -> Any:
        """``(B, 3, height, width)`` pixel values on the device: a PIL resize on uint8, then
        rescale and normalise there."""
        import torch
        from PIL import Image

        s = self.settings
        mean = torch.tensor(s.image_mean, dtype=torch.float32, device=self.device).view(3, 1, 1)
        std = torch.tensor(s.image_std, dtype=torch.float32, device=self.device).view(3, 1, 1)
        values = torch.empty((len(images), 3, s.height, s.width), dtype=torch.float32, device=self.device)
        for i, image in enumerate(images):
            if image.shape[:2] != (s.height, s.width):
                image = np.array(Image.fromarray(np.ascontiguousarray(image)).resize((s.width, s.height), s.resample))
            chw = torch.from_numpy(np.require(image, requirements=["C", "W"])).to(self.device).permute(2, 0, 1).float()
            values[i] = (chw * float(s.rescale_factor) - mean) / std
        return values.to(self.dtype)

    def _vision(self, images: Sequence[np.ndarray]) -> Any:
        """One vision encoder pass for the batch."""
        import torch

        with torch.inference_mode():
            out = self.model.get_vision_features(pixel_values=self._pixels(images))
        self.vision_count += 1
        return out

    @staticmethod
    def _image_features(vision: Any, j: int, n: int) -> Any:
        """Image ``j``'s vision features as a batch of ``n`` (views, no copies)."""
        from transformers.models.sam3.modeling_sam3 import Sam3VisionEncoderOutput

        def take(ts: Sequence[Any]) -> tuple[Any, ...]:
            return tuple(t[j : j + 1].expand(n, *t.shape[1:]) for t in ts)

        return Sam3VisionEncoderOutput(
            fpn_hidden_states=take(vision.fpn_hidden_states), fpn_position_encoding=take(vision.fpn_position_encoding)
        )

    def _instances(self, vision: Any, j: int, image: np.ndarray, prompts: Sequence[str], box_threshold: float) -> list[Detections]:
        """Detections with masks, one per prompt, on image ``j`` of the encoded batch."""
        import torch
        from transformers.modeling_outputs import BaseModelOutputWithPooling

        h, w = int(image.shape[0]), int(image.shape[1])
        out: list[Detections] = []
        for start in range(0, len(prompts), self.prompt_batch):
            chunk = list(prompts[start : start + self.prompt_batch])
            features, mask = self._text(chunk)
            with torch.inference_mode():
                result = self.model(
                    vision_embeds=self._image_features(vision, j, len(chunk)),
                    text_embeds=BaseModelOutputWithPooling(pooler_output=features),
                    attention_mask=mask,
                )
                self.decoder_count += 1
                scores = result.pred_logits.float().sigmoid()
                if result.presence_logits is not None:
                    scores = scores * result.presence_logits.float().sigmoid()
                boxes = result.pred_boxes.float()
                if not bool(torch.isfinite(result.pred_masks).all()):
                    check_finite("SAM 3", self.name, self.dtype, self.device, masks=result.pred_masks.float().cpu().numpy())
                check_finite(
                    "SAM 3", self.name, self.dtype, self.device, scores=scores.cpu().numpy(), boxes=boxes.cpu().numpy()
                )
                scale = torch.tensor([w, h, w, h], dtype=torch.float32, device=boxes.device)
                for p, phrase in enumerate(chunk):
                    keep = torch.nonzero(scores[p] > box_threshold).flatten()
                    masks = self._masks(result.pred_masks[p, keep], h, w)
                    out.append(
                        Detections(
                            (boxes[p, keep] * scale).cpu().numpy(),
                            scores[p, keep].cpu().numpy(),
                            (phrase,) * len(keep),
                            masks=masks,
                        )
                    )
        return out

    def _masks(self, logits: Any, h: int, w: int) -> np.ndarray:
        """``(n, h', w')`` mask logits -> ``(n, h, w)`` bool: bilinear upsampling to the image,
        then sigmoid > :attr:`mask_threshold` (as ``post_process_instance_segmentation``),
        :data:`MASK_CHUNK` instances at a time to bound the float masks held at once."""
        import torch

        out = np.zeros((len(logits), h, w), dtype=bool)
        for start in range(0, len(logits), MASK_CHUNK):
            part = logits[start : start + MASK_CHUNK].float()[None]
            up = torch.nn.functional.interpolate(part, size=(h, w), mode="bilinear", align_corners=False)[0]
            out[start : start + len(up)] = (up.sigmoid() > self.mask_threshold).cpu().numpy()
        return out

    # --- the Detector interface ---------------------------------------------------------------

    def detect_many(
        self, images: Sequence[np.ndarray], captions: Sequence[str], *, box_threshold: float = 0.1, text_threshold: float = 0.1
    ) -> list[list[Detections]]:
        """:meth:`detect` for several captions: one vision pass for the batch, and each phrase
        prompted once per image even when several captions have it."""
        if not images:
            return [[] for _ in captions]
        per_caption = [self.prompts(c) for c in captions]
        prompts = list(dict.fromkeys(p for ps in per_caption for p in ps))
        vision = self._vision(images)
        results: list[list[Detections]] = [[] for _ in captions]
        for j, image in enumerate(images):
            found = dict(zip(prompts, self._instances(vision, j, image, prompts, box_threshold)))
            for c, phrases in enumerate(per_caption):
                results[c].append(Detections.concat([found[p] for p in phrases], image.shape[:2]))
        return results
