"""The two small interfaces stage 2 needs; adapters own every model specific.

Images cross these interfaces as ``(H, W, 3)`` uint8 RGB numpy arrays.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import numpy as np

from iapas.types import Detections


@runtime_checkable
class Detector(Protocol):
    """An open-vocabulary detector: boxes for a text caption."""

    name: str

    def detect(
        self,
        images: Sequence[np.ndarray],
        caption: str,
        *,
        box_threshold: float,
        text_threshold: float,
    ) -> list[Detections]:
        """Detections per image, boxes in that image's pixels and clipped to it.

        One forward for the whole batch. No NMS: that is the method's business.
        """
        ...


@runtime_checkable
class Segmenter(Protocol):
    """A box-promptable segmenter."""

    name: str

    def segment(self, images: Sequence[np.ndarray], boxes: Sequence[np.ndarray]) -> list[np.ndarray]:
        """For each image, ``(N, H, W)`` bool masks, one per box of ``(N, 4)`` xyxy pixels.

        One image-encoder pass per image and one batched decoder call for all its boxes; an
        image with no boxes costs nothing and gives a ``(0, H, W)`` array.
        """
        ...
