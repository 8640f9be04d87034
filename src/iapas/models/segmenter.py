"""SAM through ``transformers``: box prompts to masks."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np

from iapas.models.base import check_finite
from iapas.models.loading import load_pretrained, pil_processor_loader, resolve_device, resolve_dtype

logger = logging.getLogger(__name__)

DEFAULT_SEGMENTER = "facebook/sam-vit-huge"
SEGMENTER_CHOICES = {
    "huge": "facebook/sam-vit-huge",
    "large": "facebook/sam-vit-large",
    "base": "facebook/sam-vit-base",
}

# Boxes decoded per mask post-processing step: bounds the float masks upsampled at once.
_POSTPROCESS_CHUNK = 32


class SamSegmenter:
    """Adapter for ``SamModel`` behind :class:`iapas.models.Segmenter`.

    Per image: one image-encoder pass (images are encoded together in one batch), then one
    mask-decoder call with all of that image's boxes, single-mask output.
    """

    def __init__(self, model: Any, processor: Any, device: str, dtype: Any, name: str) -> None:
        self.model = model
        self.image_processor = getattr(processor, "image_processor", processor)
        self.device = device
        self.dtype = dtype
        self.name = name
        self.encoder_count = 0
        self.decoder_count = 0

    @classmethod
    def from_pretrained(cls, name_or_path: str = DEFAULT_SEGMENTER, device: str = "auto", dtype: str = "auto") -> SamSegmenter:
        from transformers import AutoProcessor, SamModel

        name_or_path = SEGMENTER_CHOICES.get(name_or_path, name_or_path)
        dev = resolve_device(device)
        torch_dtype = resolve_dtype(dtype, dev)
        what = "SAM segmenter"
        processor = load_pretrained(
            pil_processor_loader(AutoProcessor), name_or_path, what=what, expected_model_types=("sam",)
        )
        model = load_pretrained(
            SamModel.from_pretrained, name_or_path, what=what, expected_model_types=("sam",), dtype=torch_dtype
        )
        model = model.to(dev).eval()
        logger.info("loaded %s from %s on %s (%s)", what, name_or_path, dev, torch_dtype)
        return cls(model, processor, dev, torch_dtype, name_or_path)

    def segment(self, images: Sequence[np.ndarray], boxes: Sequence[np.ndarray]) -> list[np.ndarray]:
        import torch

        if len(images) != len(boxes):
            raise ValueError(f"{len(images)} images but {len(boxes)} box sets")
        out: list[np.ndarray | None] = [None] * len(images)
        todo = []
        for i, (image, b) in enumerate(zip(images, boxes)):
            b = np.asarray(b, dtype=np.float32).reshape(-1, 4)
            if len(b) == 0:
                out[i] = np.zeros((0, image.shape[0], image.shape[1]), dtype=bool)
            else:
                todo.append((i, b))
        if not todo:
            return out  # type: ignore[return-value]
        processed = self.image_processor(images=[images[i] for i, _ in todo], return_tensors="pt")
        pixel_values = processed["pixel_values"].to(self.device, self.dtype)
        original_sizes = processed["original_sizes"]
        reshaped_sizes = processed["reshaped_input_sizes"]
        with torch.inference_mode():
            embeddings = self.model.get_image_embeddings(pixel_values)
            self.encoder_count += 1
            for j, (i, b) in enumerate(todo):
                oh, ow = (int(v) for v in original_sizes[j])
                rh, rw = (int(v) for v in reshaped_sizes[j])
                scaled = b * np.array([rw / ow, rh / oh, rw / ow, rh / oh], dtype=np.float32)
                input_boxes = torch.from_numpy(scaled)[None].to(self.device)
                result = self.model(
                    image_embeddings=embeddings[j : j + 1],
                    input_boxes=input_boxes,
                    multimask_output=False,
                )
                self.decoder_count += 1
                low_res = result.pred_masks.float()  # (1, n, 1, h, w), upsampled on the device
                if not bool(torch.isfinite(low_res).all()):
                    check_finite("SAM", self.name, self.dtype, self.device, masks=low_res.cpu().numpy())
                parts = []
                for start in range(0, low_res.shape[1], _POSTPROCESS_CHUNK):
                    chunk = low_res[:, start : start + _POSTPROCESS_CHUNK]
                    masks = self.image_processor.post_process_masks(
                        chunk, original_sizes[j : j + 1], reshaped_sizes[j : j + 1]
                    )[0]
                    parts.append(masks[:, 0].cpu().numpy().astype(bool, copy=False))
                out[i] = np.concatenate(parts, axis=0)
        return out  # type: ignore[return-value]
