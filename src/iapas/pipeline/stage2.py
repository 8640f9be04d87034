"""Stage 2 of IAP-AS: detections -> size filter -> SAM masks -> anomaly map.

The pipeline depends only on the :class:`~iapas.models.base.Detector` and
:class:`~iapas.models.base.Segmenter` interfaces; :meth:`Pipeline.from_config` builds the
default ``transformers`` adapters. A joint detector (SAM 3: ``returns_masks``) brings each
detection's mask itself; the pipeline then applies the same NMS, size filter and fusion to
them and calls no segmenter (:class:`NoSegmenter` stands in, recorded as ``none``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from iapas.core.images import high_bit_depth_to_uint8, read_image, to_rgb8
from iapas.models.base import Detector, Segmenter
from iapas.models.ov.cache import RUNTIMES
from iapas.models.registry import DEFAULT_DETECTOR, DEFAULT_SEGMENTER
from iapas.core.ops import DEFAULT_SIZE_THRESHOLD, apply_nms, clip_boxes, fuse_masks, size_filter, top_box
from iapas.core.caption import BASE_CAPTION, caption_phrases
from iapas.core.types import Detections, Prompt, SegmentationResult

logger = logging.getLogger(__name__)

Mode = Literal["iapas", "base"]
ImageInput = Any  # path, PIL image or (H, W[, C]) numpy array
ObjectInfo = tuple[np.ndarray | None, float | None, float, str]  # object box, its score, its size, the size's source


@dataclass
class PipelineConfig:
    """Stage 2 settings; the defaults are the paper's."""

    detector: str = DEFAULT_DETECTOR
    segmenter: str = DEFAULT_SEGMENTER
    device: str = "auto"
    dtype: str = "auto"
    mode: Mode = "iapas"
    box_threshold: float = 0.1
    text_threshold: float = 0.1
    nms_iou: float = 0.5
    size_threshold: float | None = None  # None: the profile's (0.8 by default)
    size_filter: bool = True  # False: keep every box (the paper's size-filter ablation); base mode never filters
    # Take the object box from the caption's forward (the caption ends with the object tag)
    # instead of a second detector forward. Not the paper's method: see the README.
    fuse_object_detection: bool = False
    base_caption: str = BASE_CAPTION  # mode 'base''s caption (evaluations under the paper protocol: REFERENCE_BASE_CAPTION)
    # torch.compile the two models' heavy sub-modules (see the README's speed table): slower
    # start, outputs equal to float rounding only.
    compile: bool = False
    # the fused map's precision: float64 is the reference code's fusion (evaluate --protocol paper)
    map_float64: bool = False
    # torch or openvino (the detector's and SAM's forwards as OpenVINO IR on the CPU, iapas.models.ov)
    runtime: str = "torch"
    ov_int8: bool = False  # with openvino: the detector's weights compressed to int8 (NNCF); outputs change

    def __post_init__(self) -> None:
        if self.mode not in ("iapas", "base"):
            raise ValueError(f"mode must be 'iapas' or 'base', got {self.mode!r}")
        if self.runtime not in RUNTIMES:
            raise ValueError(f"runtime must be {' or '.join(map(repr, RUNTIMES))}, got {self.runtime!r}")
        for name in ("box_threshold", "text_threshold", "nms_iou"):
            value = getattr(self, name)
            if not 0 <= value <= 1:
                raise ValueError(f"{name} must be in [0, 1], got {value}")
        if self.size_threshold is not None and not self.size_threshold > 0:
            raise ValueError(f"size_threshold must be > 0, got {self.size_threshold}")


def _clipped(dets: Detections, rgb: np.ndarray, keep_masks: bool = True) -> Detections:
    """``dets`` with the boxes clamped to the image ``rgb`` (and their masks, if ``keep_masks``)."""
    masks = dets.masks if keep_masks else None
    return Detections(clip_boxes(dets.boxes, rgb.shape[1], rgb.shape[0]), dets.scores, dets.phrases, masks=masks)


class NoSegmenter(Segmenter):
    """The segmenter of a pipeline whose detector brings its own masks (SAM 3): never called,
    named ``none`` in run signatures and reports."""

    name = "none"

    def segment(self, images: Sequence[np.ndarray], boxes: Sequence[np.ndarray]) -> list[np.ndarray]:
        raise RuntimeError("NoSegmenter.segment called: the detector was expected to return masks")


def as_rgb(image: ImageInput) -> np.ndarray:
    """A path, PIL image or numpy array as ``(H, W, 3)`` uint8 RGB."""
    if isinstance(image, (str, Path)):
        return read_image(image).rgb
    if isinstance(image, np.ndarray):
        arr = image
        if arr.ndim == 2:
            arr = arr[..., None]
        if arr.ndim != 3 or arr.shape[2] not in (1, 3, 4):
            raise ValueError(f"expected an (H, W), (H, W, 1), (H, W, 3) or (H, W, 4) array, got shape {image.shape}")
        if arr.dtype == np.uint16:
            arr = high_bit_depth_to_uint8(arr)
        elif arr.dtype != np.uint8:
            raise ValueError(f"expected a uint8 or uint16 array, got {arr.dtype}")
        if arr.shape[2] == 1:
            arr = np.repeat(arr, 3, axis=2)
        if arr.shape[2] == 4:  # composited on black, as RGBA files are (io.to_rgb8)
            from PIL import Image

            return to_rgb8(Image.fromarray(np.ascontiguousarray(arr)))  # (H, W, 4) uint8 is RGBA
        return np.ascontiguousarray(arr)
    if hasattr(image, "mode") and hasattr(image, "convert"):
        return to_rgb8(image)
    raise TypeError(f"cannot use {type(image).__name__} as an image")


class Pipeline:
    """IAP-AS stage 2: maps and boxes, no verdict (the OK/NG verdict is
    ``profile.judge(result)``, see :func:`iapas.product.decision.judge`).

    The ``profile`` it takes is any :class:`~iapas.core.types.Prompt` (caption, object tag, size
    threshold, object size): an :class:`iapas.product.profile.Profile` is one.

    >>> pipe = Pipeline.from_config(PipelineConfig(detector="tiny-models/grounding-dino",
    ...                                            segmenter="tiny-models/sam", device="cpu"))
    >>> result = pipe("image.png", Profile.load("bottle.yaml"))  # doctest: +SKIP
    >>> result.anomaly_map.shape, result.image_score  # doctest: +SKIP
    >>> profile.judge(result)  # doctest: +SKIP
    """

    def __init__(self, detector: Detector, segmenter: Segmenter | None, config: PipelineConfig | None = None) -> None:
        if not isinstance(detector, Detector):
            raise TypeError(f"the detector must be an iapas.models.Detector, got {type(detector).__name__}")
        self.detector = detector
        if detector.returns_masks:  # a joint model: a segmenter given (bench's default column's) is unused
            if segmenter is not None and not isinstance(segmenter, NoSegmenter):
                logger.info("detector %s returns its own masks: segmenter %s unused", detector.name, segmenter.name)
            segmenter = NoSegmenter()
        elif segmenter is None:
            raise ValueError(f"detector {detector.name} returns no masks: a segmenter is needed")
        self.segmenter = segmenter
        self.config = config or PipelineConfig()
        self._warned_unfused = False
        self._checked: set[tuple[str, str | None]] = set()

    @classmethod
    def from_config(cls, config: PipelineConfig | None = None, **overrides: Any) -> Pipeline:
        """Load the detector and segmenter named in ``config`` (names, hub ids or folders; the
        adapter is chosen by the model's type, see :mod:`iapas.models.factory`)."""
        from iapas.models.factory import load_detector, load_segmenter

        config = config or PipelineConfig(**overrides)
        detector = load_detector(config.detector, device=config.device, dtype=config.dtype, runtime=config.runtime,
                                 ov_int8=config.ov_int8)
        segmenter: Segmenter | None = None
        if detector.returns_masks:  # SAM 3: detector and segmenter in one, no SAM loaded
            say = logger.info if config.segmenter == DEFAULT_SEGMENTER else logger.warning
            say("detector %s returns its own masks: no segmenter loaded (segmenter %s unused)", detector.name, config.segmenter)
        else:
            segmenter = load_segmenter(config.segmenter, device=config.device, dtype=config.dtype, runtime=config.runtime)
        if config.compile:
            detector.compile()
            if segmenter is not None:
                segmenter.compile()
        return cls(detector, segmenter, config)

    def caption_for(self, profile: Prompt | None) -> str:
        if self.config.mode == "base":
            return self.config.base_caption
        if profile is None:
            raise ValueError("mode 'iapas' needs a profile (object tag and caption); use mode 'base' without one")
        return profile.caption

    def check(self, profile: Prompt | None) -> None:
        """Fail early (ValueError) for a profile this pipeline cannot run: no profile in iapas mode,
        a caption longer than the detector's text window, or fusion the detector cannot do."""
        self.detector.check_caption(self.caption_for(profile))
        if self.config.mode == "iapas" and self.config.fuse_object_detection and not self.detector.fuses_object:
            raise ValueError(f"detector {self.detector.name} cannot fuse object detection")

    def __call__(self, image: ImageInput, profile: Prompt | None = None) -> SegmentationResult:
        return self.run([image], profile)[0]

    def run(self, images: Sequence[ImageInput], profile: Prompt | None = None) -> list[SegmentationResult]:
        """Segment a batch of images of one category; one detector forward per caption per batch.

        Maps and boxes only: a profile's ``decision`` section is not read here (the verdict on a
        result is ``profile.judge(result)``)."""
        cfg = self.config
        rgbs = [as_rgb(im) for im in images]
        if not rgbs:
            return []
        caption = self.caption_for(profile)
        checked = (caption, profile.object_tag if profile else None)
        if checked not in self._checked:
            self.check(profile)
            self._checked.add(checked)
        n = len(rgbs)
        timings: dict[str, float] = {}

        # 1. object size (iapas mode only: the size filter is off in base mode), 2. anomaly boxes
        object_info: list[ObjectInfo]
        t0 = time.perf_counter()
        if cfg.mode == "iapas":
            assert profile is not None
            if self._can_fuse(caption, profile.object_tag):
                raw, object_dets = self.detector.detect_with_object(
                    rgbs, caption, profile.object_tag, box_threshold=cfg.box_threshold, text_threshold=cfg.text_threshold
                )
            else:  # one preprocessing for both captions where the detector can share it
                object_dets, raw = self.detector.detect_many(
                    rgbs, [profile.object_tag, caption], box_threshold=cfg.box_threshold, text_threshold=cfg.text_threshold
                )
            object_info = [self._object_size(rgb, dets, profile) for rgb, dets in zip(rgbs, object_dets)]
        else:
            raw = self.detector.detect(rgbs, caption, box_threshold=cfg.box_threshold, text_threshold=cfg.text_threshold)
            object_info = [(None, None, 1.0, "default")] * n
        timings["detection"] = (time.perf_counter() - t0) / n
        # class-agnostic NMS
        dets = [apply_nms(d, cfg.nms_iou) for d in raw]

        # 3. size filter, then the boxes clamped to the image
        kept, dropped, object_info = self._size_filtered(rgbs, dets, object_info, profile)

        # 4. SAM masks, one encoder pass per image and one decoder call per image; a joint
        # detector's detections brought theirs (its timing is in "detection")
        if all(k.masks is not None for k in kept):
            masks = [k.masks for k in kept]
        else:
            t0 = time.perf_counter()
            masks = self.segmenter.segment(rgbs, [k.boxes for k in kept])
            timings["segmentation"] = (time.perf_counter() - t0) / n

        # 5. fusion
        return self._fused(rgbs, kept, dropped, masks, object_info, timings)

    def _size_filtered(
        self, rgbs: list[np.ndarray], dets: list[Detections], object_info: list[ObjectInfo], profile: Prompt | None
    ) -> tuple[list[Detections], list[Detections], list[ObjectInfo]]:
        """The boxes kept and dropped by the size filter (iapas mode), then clamped to the image."""
        cfg = self.config
        kept: list[Detections] = []
        dropped: list[Detections] = []
        ratio = cfg.size_threshold if cfg.size_threshold is not None else (profile.size_threshold if profile else DEFAULT_SIZE_THRESHOLD)
        for rgb, d, (_, _, obj_size, _) in zip(rgbs, dets, object_info):
            if cfg.mode == "iapas" and cfg.size_filter:
                k, dr = size_filter(d, rgb.shape[1], rgb.shape[0], obj_size, ratio)
            else:
                k, dr = d, Detections.empty()
            kept.append(k)
            dropped.append(dr)

        # Boxes stay unclipped for the object size, NMS and the size filter above (the reference
        # code's arithmetic); from here on they are clamped to the image: as SAM prompts (as the
        # reference does) and in the result, so records and overlays show the clipped boxes.
        kept = [_clipped(k, rgb) for k, rgb in zip(kept, rgbs)]
        dropped = [_clipped(d, rgb, keep_masks=False) for d, rgb in zip(dropped, rgbs)]  # their masks are unused
        object_info = [
            (None if obox is None else clip_boxes(obox, rgb.shape[1], rgb.shape[0])[0], oscore, osize, osource)
            for (obox, oscore, osize, osource), rgb in zip(object_info, rgbs)
        ]
        return kept, dropped, object_info

    def _fused(
        self, rgbs: list[np.ndarray], kept: list[Detections], dropped: list[Detections], masks: list[np.ndarray],
        object_info: list[ObjectInfo], timings: dict[str, float],
    ) -> list[SegmentationResult]:
        """Each image's anomaly map (its masks weighted by their boxes' scores) and result."""
        results = []
        for rgb, k, dr, m, (obox, oscore, osize, osource) in zip(rgbs, kept, dropped, masks, object_info):
            t0 = time.perf_counter()
            amap = fuse_masks(m, k.scores, rgb.shape[:2], np.float64 if self.config.map_float64 else np.float32)
            t = dict(timings, fusion=time.perf_counter() - t0)
            results.append(
                SegmentationResult(
                    anomaly_map=amap,
                    kept=k,
                    dropped=dr,
                    masks=m,
                    object_box=obox,
                    object_score=oscore,
                    object_size=osize,
                    object_size_source=osource,
                    timings=t,
                )
            )
        return results

    def _can_fuse(self, caption: str, object_tag: str) -> bool:
        if not self.config.fuse_object_detection or not self.detector.fuses_object:
            return False
        if object_tag.strip().lower() not in caption_phrases(caption):
            if not self._warned_unfused:
                logger.warning(
                    "object tag %r is not a phrase of the caption %r: using a separate object forward", object_tag, caption
                )
                self._warned_unfused = True
            return False
        return True

    @staticmethod
    def _object_size(
        rgb: np.ndarray, dets: Detections, profile: Prompt
    ) -> ObjectInfo:
        """Top object box and its normalised area, else the profile's median, else 1.0."""
        found = top_box(dets, rgb.shape[1], rgb.shape[0])
        if found is not None:
            top, area = found
            return dets.boxes[top], float(dets.scores[top]), area, "detected"
        if profile.object_size is not None:
            return None, None, float(profile.object_size), "profile"
        return None, None, 1.0, "default"
