"""SAM 2.1 through ``transformers`` (``Sam2Model``): box prompts to masks, a lighter SAM.

The hub checkpoints (``facebook/sam2.1-hiera-tiny`` ... ``-large``) are saved as ``sam2_video``
models; ``transformers`` loads them as the image model ``Sam2Model`` (its mask-generation
mapping does), which is all that box prompts on still images need.

Preprocessing is done here, not by ``Sam2Processor``: its image processor needs torchvision,
which iapas does not depend on. It is the processor's recipe, read from the model's
``preprocessor_config.json``: resize to the model's square input (``size``, 1024 x 1024 for the
hub models; the aspect ratio is not kept), rescale by 1/255, normalise with its mean and std;
boxes scale by the same factors per axis; the low-resolution mask logits are upsampled
bilinearly to the original image and thresholded at 0 (``post_process_masks``). The resize is
PIL's bilinear on uint8, so pixel values may differ from the torchvision processor's by resize
rounding.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np

from iapas.models import registry
from iapas.models.base import Segmenter, check_finite
from iapas.models.segmenter import split_boxless
from iapas.models.loading import ModelLoadError, load_checked_model, load_pretrained, resolve_device, resolve_dtype

logger = logging.getLogger(__name__)

# config.json model types this adapter runs, and the transformers class each loads as.
SAM2_MODEL_TYPES = registry.model_classes("SAM 2.1")

# Sam2ImageProcessor's defaults (transformers 5.x), for keys a preprocessor_config.json leaves out.
_DEFAULT_PREPROCESSING: dict[str, Any] = {
    "size": {"height": 1024, "width": 1024},
    "image_mean": [0.485, 0.456, 0.406],
    "image_std": [0.229, 0.224, 0.225],
    "rescale_factor": 1 / 255,
    "do_resize": True,
    "do_rescale": True,
    "do_normalize": True,
}

# The float masks of one image upsampled at once stay under this many bytes (more boxes: chunks).
_UPSAMPLE_BYTES = 1 << 30


def load_preprocessing(name_or_path: str) -> dict[str, Any]:
    """The preprocessing settings of a SAM 2 folder or hub id (its ``preprocessor_config.json``),
    with ``Sam2ImageProcessor``'s defaults for what it leaves out."""
    from transformers.image_processing_base import ImageProcessingMixin

    def read(path: str, **kwargs: Any) -> dict[str, Any]:
        return ImageProcessingMixin.get_image_processor_dict(path, **kwargs)[0]

    found = load_pretrained(read, name_or_path, what="SAM 2 segmenter", expected_model_types=tuple(SAM2_MODEL_TYPES))
    settings = {**_DEFAULT_PREPROCESSING, **{k: v for k, v in found.items() if k in _DEFAULT_PREPROCESSING}}
    size = settings["size"]
    if not (isinstance(size, dict) and size.get("height") and size.get("width")):
        raise ModelLoadError(f"SAM 2 segmenter: {name_or_path}: preprocessor size {size!r} is not {{height, width}}")
    return settings


class Sam2Segmenter(Segmenter):
    """Adapter for ``Sam2Model`` behind :class:`iapas.models.Segmenter`.

    Per call: one image-encoder pass for all images that have boxes (they are resized to one
    square size, so they batch), then per image one mask-decoder call with all of its boxes,
    single-mask output (``multimask_output=False``); masks at the image's own resolution. An
    image without boxes costs nothing and gives a ``(0, H, W)`` array.
    """

    def __init__(self, model: Any, preprocessing: dict[str, Any], device: str, dtype: Any, name: str) -> None:
        self.model = model
        self.preprocessing = preprocessing
        self.device = device
        self.dtype = dtype
        self.name = name
        self.encoder_count = 0
        self.decoder_count = 0
        self.compiled = False

    @classmethod
    def from_pretrained(cls, name_or_path: str, device: str = "auto", dtype: str = "auto") -> Sam2Segmenter:
        from transformers import AutoModelForMaskGeneration

        name_or_path = registry.resolve("segmenter", name_or_path)
        dev = resolve_device(device)
        torch_dtype = resolve_dtype(dtype, dev)
        preprocessing = load_preprocessing(name_or_path)
        model = load_checked_model(
            AutoModelForMaskGeneration.from_pretrained, name_or_path, what="SAM 2 segmenter",
            model_classes=SAM2_MODEL_TYPES, device=dev, dtype=torch_dtype,
        )
        return cls(model, preprocessing, dev, torch_dtype, name_or_path)

    def compile(self) -> None:
        """``torch.compile`` the image encoder and the mask decoder in place."""
        for module in (self.model.vision_encoder, self.model.mask_decoder):
            module.compile()
        self.compiled = True

    @property
    def input_size(self) -> tuple[int, int]:
        """The model's (height, width) input."""
        size = self.preprocessing["size"]
        return int(size["height"]), int(size["width"])

    def _pixels(self, images: Sequence[np.ndarray]) -> Any:
        """``(B, 3, h, w)`` pixel values on the device: PIL bilinear resize on uint8 to the input
        size, then rescale and normalise there."""
        import torch
        from PIL import Image

        p = self.preprocessing
        h, w = self.input_size
        mean = torch.tensor(p["image_mean"], dtype=torch.float32, device=self.device).view(3, 1, 1)
        std = torch.tensor(p["image_std"], dtype=torch.float32, device=self.device).view(3, 1, 1)
        values = torch.empty((len(images), 3, h, w), dtype=torch.float32, device=self.device)
        for i, image in enumerate(images):
            if p["do_resize"] and image.shape[:2] != (h, w):
                image = np.asarray(Image.fromarray(np.ascontiguousarray(image)).resize((w, h), Image.Resampling.BILINEAR))
            chw = torch.from_numpy(np.require(image, requirements=["C", "W"])).to(self.device).permute(2, 0, 1).float()
            if p["do_rescale"]:
                chw = chw * float(p["rescale_factor"])
            values[i] = (chw - mean) / std if p["do_normalize"] else chw
        return values.to(self.dtype)

    def _masks(self, low_res: Any, original: tuple[int, int]) -> np.ndarray:
        """``(1, n, 1, h, w)`` mask logits -> ``(n, H, W)`` bool masks at ``original`` (bilinear,
        threshold 0: ``post_process_masks``), in chunks that bound the float upsampled masks."""
        import torch
        import torch.nn.functional as F

        logits = low_res[0].float()  # (n, 1, h, w)
        step = max(1, _UPSAMPLE_BYTES // (4 * original[0] * original[1]))
        parts = [
            F.interpolate(logits[s : s + step], original, mode="bilinear", align_corners=False)[:, 0] > 0
            for s in range(0, logits.shape[0], step)
        ]
        return torch.cat(parts).cpu().numpy()

    def segment(self, images: Sequence[np.ndarray], boxes: Sequence[np.ndarray]) -> list[np.ndarray]:
        import torch

        out, todo = split_boxless(images, boxes)
        if not todo:
            return out  # type: ignore[return-value]
        h, w = self.input_size
        with torch.inference_mode():
            embedded = self.model.get_image_embeddings(self._pixels([images[i] for i, _ in todo]))
            self.encoder_count += 1
            for j, (i, b) in enumerate(todo):
                oh, ow = int(images[i].shape[0]), int(images[i].shape[1])
                scaled = b * np.array([w / ow, h / oh, w / ow, h / oh], dtype=np.float32)
                result = self.model(
                    image_embeddings=[e[j : j + 1] for e in embedded],
                    input_boxes=torch.from_numpy(scaled)[None].to(self.device),
                    multimask_output=False,
                )
                self.decoder_count += 1
                low_res = result.pred_masks
                if not bool(torch.isfinite(low_res).all()):
                    check_finite("SAM 2", self.name, self.dtype, self.device, masks=low_res.float().cpu().numpy())
                out[i] = self._masks(low_res, (oh, ow))
        return out  # type: ignore[return-value]
