"""SAM through ``transformers``: box prompts to masks."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from iapas.models import registry
from iapas.models.base import Segmenter, check_finite
from iapas.models.loading import ModelLoadError, load_pretrained, pil_processor_loader, resolve_device, resolve_dtype

logger = logging.getLogger(__name__)

DEFAULT_SEGMENTER = registry.DEFAULT_SEGMENTER
SEGMENTER_CHOICES = registry.names("segmenter")  # name -> hub id (see iapas.models.registry)

# config.json model types the adapters run, and their transformers classes.
SEGMENTER_MODEL_TYPES = registry.model_classes("SAM", "SAM-HQ")

# Boxes decoded per mask post-processing step on the unbatched path: bounds the float masks
# upsampled at once.
_POSTPROCESS_CHUNK = 32
# The batched path upsamples all of an image's boxes in one call while their float masks (at the
# padded and at the original size) fit in this many bytes, else in as few calls as fit.
_POSTPROCESS_BYTES = 1 << 30


def split_boxless(
    images: Sequence[np.ndarray], boxes: Sequence[np.ndarray]
) -> tuple[list[np.ndarray | None], list[tuple[int, np.ndarray]]]:
    """Per image, its ``(0, H, W)`` result when it has no boxes (else None), and the
    ``(index, (N, 4) float32 boxes)`` of the images a segmenter has to run."""
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
    return out, todo


class SamSegmenter(Segmenter):
    """Adapter for ``SamModel`` behind :class:`iapas.models.Segmenter`.

    Per image: one image-encoder pass (images are encoded together in one batch), then one
    mask-decoder call with all of that image's boxes, single-mask output.

    ``fast_preprocessing``: the processor's resize with PIL on uint8, then rescale, normalise and
    pad on the device (equal to the processor's values to float32 rounding, see
    :meth:`_pixels_fast`). ``batched_postprocess``: all of an image's boxes upsampled and
    thresholded in one call (bitwise the chunked result). Switch them off to measure them.
    """

    def __init__(
        self, model: Any, processor: Any, device: str, dtype: Any, name: str,
        runtime: str = "torch", ov_cache: Path | None = None, ov_threads: int | None = None,
    ) -> None:
        self.model = model
        self.image_processor = getattr(processor, "image_processor", processor)
        self.device = device
        self.dtype = dtype
        self.name = name
        self.encoder_count = 0
        self.decoder_count = 0
        self.fast_preprocessing = True
        self.batched_postprocess = True
        self.compiled = False
        self.runtime = runtime
        self.ov = None  # the OpenVINO encoder and decoder (iapas.models.ov.sam.OvSam) when runtime is openvino
        if runtime == "openvino":
            from iapas.models.ov.cache import check_cpu_float32
            from iapas.models.ov.sam import load_ov_sam

            check_cpu_float32(f"segmenter {name}", device=device)

            self.ov = load_ov_sam(
                model, name, hq=self.hq_model, hq_token_only=self.hq_token_only, cache_dir=ov_cache, threads=ov_threads
            )
        else:
            from iapas.models.ov.cache import check_runtime

            try:
                check_runtime(runtime)
            except ValueError as exc:
                raise ValueError(f"segmenter {name}: {exc}") from None

    hq_model = False  # SamHQSegmenter: True
    hq_token_only = False

    def compile(self) -> None:
        """``torch.compile`` the image encoder and the mask decoder in place; the first call at
        each new shape pays the compilation. Outputs change within float rounding, not bitwise.
        Nothing to do on the openvino runtime (its graphs are compiled when loaded)."""
        if self.ov is not None:
            logger.info("segmenter %s runs on OpenVINO: torch.compile skipped", self.name)
            return
        for module in (self.model.vision_encoder, self.model.mask_decoder):
            module.compile()
        self.compiled = True

    def _standard_processor(self) -> bool:
        """Whether the image processor is the standard SAM one :meth:`_pixels_fast` reproduces."""
        from PIL import Image

        ip = self.image_processor
        size, pad = getattr(ip, "size", None), getattr(ip, "pad_size", None)
        return (
            type(ip).__name__.startswith("SamImageProcessor")
            and bool(getattr(size, "longest_edge", None))
            and pad is not None and bool(getattr(pad, "height", None)) and bool(getattr(pad, "width", None))
            and ip.do_resize and ip.do_rescale and ip.do_normalize and ip.do_pad
            and not getattr(ip, "do_center_crop", False)
            and int(ip.resample) == int(Image.Resampling.BILINEAR)
        )

    def _pixels(self, images: Sequence[np.ndarray]) -> tuple[Any, list[tuple[int, int]], list[tuple[int, int]]]:
        """Pixel values on the device, original and resized (height, width) per image."""
        if self.fast_preprocessing and self._standard_processor():
            return self._pixels_fast(images)
        processed = self.image_processor(images=list(images), return_tensors="pt")
        original = [tuple(int(v) for v in s) for s in processed["original_sizes"]]
        reshaped = [tuple(int(v) for v in s) for s in processed["reshaped_input_sizes"]]
        return processed["pixel_values"].to(self.device, self.dtype), original, reshaped  # type: ignore[return-value]

    def _pixels_fast(self, images: Sequence[np.ndarray]) -> tuple[Any, list[tuple[int, int]], list[tuple[int, int]]]:
        """The processor's values to float32 rounding (max abs difference below 1e-5 on values
        of magnitude <= 2.7; the test pins it): the longest edge resized with PIL bilinear on uint8
        as the processor does, the uint8 copied to the device, rescaled and normalised there and
        zero-padded bottom/right to the pad size."""
        import torch
        from PIL import Image

        ip = self.image_processor
        longest = int(ip.size.longest_edge)
        pad_h, pad_w = int(ip.pad_size.height), int(ip.pad_size.width)
        mean = torch.tensor(ip.image_mean, dtype=torch.float32, device=self.device).view(3, 1, 1)
        std = torch.tensor(ip.image_std, dtype=torch.float32, device=self.device).view(3, 1, 1)
        values = torch.zeros((len(images), 3, pad_h, pad_w), dtype=torch.float32, device=self.device)
        original, reshaped = [], []
        for i, image in enumerate(images):
            oh, ow = int(image.shape[0]), int(image.shape[1])
            h, w = ip._get_preprocess_shape((oh, ow), longest)
            if (h, w) != (oh, ow):
                image = np.array(Image.fromarray(np.ascontiguousarray(image)).resize((w, h), Image.Resampling.BILINEAR))
            chw = torch.from_numpy(np.require(image, requirements=["C", "W"])).to(self.device).permute(2, 0, 1).float()
            values[i, :, :h, :w] = (chw * float(ip.rescale_factor) - mean) / std
            original.append((oh, ow))
            reshaped.append((int(h), int(w)))
        return values.to(self.dtype), original, reshaped

    def _masks(self, low_res: Any, original: tuple[int, int], reshaped: tuple[int, int]) -> np.ndarray:
        """``(1, n, 1, h, w)`` low-resolution logits -> ``(n, H, W)`` bool masks at ``original``."""
        n = low_res.shape[1]
        if self.batched_postprocess:
            pad = self.image_processor.pad_size
            per_box = 4 * (int(pad.height) * int(pad.width) + original[0] * original[1])
            step = max(1, min(n, _POSTPROCESS_BYTES // per_box))
        else:
            step = _POSTPROCESS_CHUNK
        parts = []
        for start in range(0, n, step):
            masks = self.image_processor.post_process_masks(
                low_res[:, start : start + step], [original], [reshaped]
            )[0]
            parts.append(masks[:, 0])
        if len(parts) == 1:
            return parts[0].cpu().numpy()
        if self.batched_postprocess:
            import torch

            return torch.cat(parts).cpu().numpy()  # one transfer
        return np.concatenate([p.cpu().numpy() for p in parts], axis=0)

    @classmethod
    def from_pretrained(
        cls, name_or_path: str = DEFAULT_SEGMENTER, device: str = "auto", dtype: str = "auto",
        runtime: str = "torch", ov_cache: Path | None = None,
    ) -> SamSegmenter:
        """Load SAM or SAM-HQ: the adapter is chosen by the loaded model's type (a
        :class:`SamHQSegmenter` for ``sam_hq``), any other model type is refused. ``runtime``
        ``openvino``: the forwards run as OpenVINO IR (cached in ``ov_cache``), on the CPU
        (``device`` ``auto`` means the CPU then)."""
        from transformers import AutoModel, AutoProcessor

        name_or_path = registry.resolve("segmenter", name_or_path)
        dev = resolve_device("cpu" if runtime == "openvino" and device == "auto" else device)
        torch_dtype = resolve_dtype(dtype, dev)
        what = "SAM segmenter"
        types = tuple(SEGMENTER_MODEL_TYPES)
        processor = load_pretrained(
            pil_processor_loader(AutoProcessor), name_or_path, what=what, expected_model_types=types
        )
        model = load_pretrained(
            AutoModel.from_pretrained, name_or_path, what=what, expected_model_types=types, dtype=torch_dtype
        )
        model_type = getattr(model.config, "model_type", None)
        adapter = {"sam": SamSegmenter, "sam_hq": SamHQSegmenter}.get(model_type)
        if adapter is None or SEGMENTER_MODEL_TYPES[model_type] != type(model).__name__:
            raise ModelLoadError(
                f"{what}: {name_or_path!r} is a {model_type!r} model ({type(model).__name__}); "
                f"expected {' or '.join(types)}"
            )
        model = model.to(dev).eval()
        logger.info("loaded %s (%s) from %s on %s (%s)", what, model_type, name_or_path, dev, torch_dtype)
        return adapter(model, processor, dev, torch_dtype, name_or_path, runtime=runtime, ov_cache=ov_cache)

    def _embed(self, pixel_values: Any) -> Any:
        """One image-encoder pass for the batch: what :meth:`_decode_boxes` needs per image
        (SAM-HQ: the embeddings and the list of intermediate embeddings)."""
        if self.ov is not None:
            return self.ov.embed(pixel_values)
        return self.model.get_image_embeddings(pixel_values)

    def _decode_boxes(self, embedded: Any, j: int, input_boxes: Any) -> Any:
        """One mask-decoder call with all boxes ``(1, n, 4)`` of image ``j`` of the batch."""
        if self.ov is not None:
            return self.ov.decode(embedded, j, input_boxes)
        return self.model(image_embeddings=embedded[j : j + 1], input_boxes=input_boxes, multimask_output=False)

    def segment(self, images: Sequence[np.ndarray], boxes: Sequence[np.ndarray]) -> list[np.ndarray]:
        import torch

        out, todo = split_boxless(images, boxes)
        if not todo:
            return out  # type: ignore[return-value]
        pixel_values, original_sizes, reshaped_sizes = self._pixels([images[i] for i, _ in todo])
        with torch.inference_mode():
            embedded = self._embed(pixel_values)
            self.encoder_count += 1
            for j, (i, b) in enumerate(todo):
                oh, ow = original_sizes[j]
                rh, rw = reshaped_sizes[j]
                scaled = b * np.array([rw / ow, rh / oh, rw / ow, rh / oh], dtype=np.float32)
                input_boxes = torch.from_numpy(scaled)[None].to(self.device)
                result = self._decode_boxes(embedded, j, input_boxes)
                self.decoder_count += 1
                low_res = result.pred_masks.float()  # (1, n, 1, h, w), upsampled on the device
                if not bool(torch.isfinite(low_res).all()):
                    check_finite("SAM", self.name, self.dtype, self.device, masks=low_res.cpu().numpy())
                out[i] = self._masks(low_res, original_sizes[j], reshaped_sizes[j]).astype(bool, copy=False)
        return out  # type: ignore[return-value]


class SamHQSegmenter(SamSegmenter):
    """Adapter for ``SamHQModel`` (SAM-HQ): SAM's box prompts, plus the image encoder's
    intermediate embeddings passed to the HQ mask decoder; the mask is SAM-HQ's default (the HQ
    token's output added to SAM's, ``hq_token_only=False`` as in the reference predictor).
    Same work per image as SAM: one encoder pass per batch, one decoder call per image."""

    hq_model = True
    hq_token_only = False

    def _decode_boxes(self, embedded: Any, j: int, input_boxes: Any) -> Any:
        if self.ov is not None:
            return self.ov.decode(embedded, j, input_boxes)
        embeddings, intermediate = embedded
        return self.model(
            image_embeddings=embeddings[j : j + 1],
            intermediate_embeddings=[t[j : j + 1] for t in intermediate],
            input_boxes=input_boxes,
            multimask_output=False,
            hq_token_only=self.hq_token_only,
        )
