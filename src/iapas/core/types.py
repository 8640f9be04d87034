"""Plain data passed between the stages: detections in, masks and maps out.

Everything here is numpy and dataclasses so that results never carry framework objects.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import numpy as np

from iapas.core.rle import encode_mask


class Prompt(Protocol):
    """What stage 2 reads of a category: the caption, the object tag, the size threshold and the
    object size (the profile's median, the fallback when no object is found). A
    :class:`iapas.product.profile.Profile` is one; so is any object with these attributes."""

    caption: str
    object_tag: str
    size_threshold: float
    object_size: float | None


@dataclass(frozen=True)
class Detections:
    """Boxes found on one image.

    ``boxes`` are ``(N, 4)`` float32 ``x0, y0, x1, y1`` in absolute pixels of the image they
    were found on, ``scores`` are ``(N,)`` float32 in [0, 1] (for Grounding DINO: the maximum
    token probability of the box), ``phrases`` the text each box was matched to.

    ``masks`` is ``(N, H, W)`` bool at the image's resolution when the detector segments too (a
    joint model such as SAM 3; the pipeline then uses them instead of calling a segmenter), else
    None. It follows the boxes through :meth:`select`.
    """

    boxes: np.ndarray
    scores: np.ndarray
    phrases: tuple[str, ...] = ()
    masks: np.ndarray | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        boxes = np.asarray(self.boxes, dtype=np.float32).reshape(-1, 4)
        scores = np.asarray(self.scores, dtype=np.float32).reshape(-1)
        phrases = tuple(self.phrases) if self.phrases else ("",) * len(scores)
        if not (len(boxes) == len(scores) == len(phrases)):
            raise ValueError(
                f"Detections: {len(boxes)} boxes, {len(scores)} scores and {len(phrases)} phrases differ"
            )
        if self.masks is not None:
            masks = np.asarray(self.masks, dtype=bool)
            if masks.ndim != 3 or len(masks) != len(scores):
                raise ValueError(f"Detections: masks of shape {masks.shape} for {len(scores)} boxes; expected (N, H, W)")
            object.__setattr__(self, "masks", masks)
        object.__setattr__(self, "boxes", boxes)
        object.__setattr__(self, "scores", scores)
        object.__setattr__(self, "phrases", phrases)

    @classmethod
    def empty(cls) -> Detections:
        return cls(np.zeros((0, 4), np.float32), np.zeros((0,), np.float32), ())

    def __len__(self) -> int:
        return len(self.scores)

    def select(self, index: np.ndarray | list[int] | list[bool]) -> Detections:
        """A subset by integer indices or a boolean mask, in the order given."""
        idx = np.asarray(index)
        if idx.dtype == bool:
            idx = np.flatnonzero(idx)
        idx = idx.astype(np.int64).reshape(-1)
        masks = None if self.masks is None else self.masks[idx]
        return Detections(self.boxes[idx], self.scores[idx], tuple(self.phrases[i] for i in idx), masks=masks)

    @classmethod
    def concat(cls, parts: list[Detections], shape: tuple[int, int]) -> Detections:
        """``parts`` one after the other; their masks (``shape`` = the image's (H, W)) are kept
        when every part has them."""
        with_masks = all(p.masks is not None for p in parts)
        return cls(
            np.concatenate([p.boxes for p in parts]) if parts else np.zeros((0, 4), np.float32),
            np.concatenate([p.scores for p in parts]) if parts else np.zeros((0,), np.float32),
            tuple(ph for p in parts for ph in p.phrases),
            masks=np.concatenate([p.masks for p in parts]) if parts and with_masks  # type: ignore[misc]
            else (np.zeros((0, *shape), bool) if with_masks else None),
        )

    def to_records(self) -> list[dict[str, Any]]:
        return [
            {"box": [round(float(v), 2) for v in b], "score": round(float(s), 5), "phrase": p}
            for b, s, p in zip(self.boxes, self.scores, self.phrases)
        ]


@dataclass
class SegmentationResult:
    """What stage 2 gives for one image.

    ``anomaly_map`` is ``(H, W)`` float32 (float64 with ``PipelineConfig.map_float64``) at the input image's own resolution:
    ``sum_i s_i * m_i`` over the kept boxes. ``masks`` is ``(N_kept, H, W)`` bool, one per
    kept box in the order of ``kept``.
    """

    anomaly_map: np.ndarray
    kept: Detections
    dropped: Detections
    masks: np.ndarray
    object_box: np.ndarray | None
    object_score: float | None
    object_size: float
    object_size_source: str  # "detected", "profile", or "default"
    timings: dict[str, float] = field(default_factory=dict)
    # the kept masks as COCO RLE, once :meth:`without_masks` has let the masks go (else None)
    mask_rles: list[dict[str, Any]] | None = field(default=None, compare=False, repr=False)

    def instance_rles(self) -> list[dict[str, Any]]:
        """Each kept box's mask (``masks``, the very masks the map sums) as COCO RLE
        (:func:`iapas.core.rle.encode_mask`), in the order of ``kept``."""
        if self.mask_rles is not None:
            return self.mask_rles
        return [encode_mask(mask) for mask in self.masks]

    def without_masks(self) -> SegmentationResult:
        """This result with its ``(N, H, W)`` masks freed and kept as RLE (a writer needs the
        map, the boxes and :meth:`instance_rles`, not the masks themselves)."""
        return replace(self, masks=np.zeros((0, *self.anomaly_map.shape), dtype=bool), mask_rles=self.instance_rles())

    @property
    def decision(self) -> Any:
        """Stage 2 gives maps and boxes, no verdict: say where the verdict is."""
        raise AttributeError(
            "a SegmentationResult has no decision: stage 2 gives maps and boxes; the OK/NG verdict is "
            "profile.judge(result) (iapas.product.decision.judge(result, decision))"
        )

    @property
    def image_score(self) -> float:
        """Image-level anomaly score: the maximum of the map (0.0 for an empty map)."""
        return float(self.anomaly_map.max()) if self.anomaly_map.size else 0.0

    def to_record(self) -> dict[str, Any]:
        """The JSON-ready summary written per image: image score, object, boxes kept and
        dropped, each kept box's mask as COCO RLE (``kept_masks``, in the order of ``kept``:
        :func:`iapas.core.rle.encode_mask`), timings (the map goes to a file, not here)."""
        return {
            "image_score": round(self.image_score, 6),
            "object": {
                "box": None if self.object_box is None else [round(float(v), 2) for v in self.object_box],
                "score": None if self.object_score is None else round(self.object_score, 5),
                "size": round(self.object_size, 6),
                "source": self.object_size_source,
            },
            "kept": self.kept.to_records(),
            "dropped": self.dropped.to_records(),
            "kept_masks": self.instance_rles(),
            "timings": {k: round(v, 5) for k, v in self.timings.items()},
        }
