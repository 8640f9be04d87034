"""The two small interfaces stage 2 needs; adapters own every model specific.

Images cross these interfaces as ``(H, W, 3)`` uint8 RGB numpy arrays.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np

from iapas.core.types import Detections


class ModelOutputError(RuntimeError):
    """A model returned NaN or infinite values (e.g. a half-precision overflow)."""


def check_finite(what: str, name: str, dtype: Any, device: str, **arrays: np.ndarray) -> None:
    """Raise :class:`ModelOutputError` when any of ``arrays`` holds NaN or infinity, so a numeric
    failure is reported instead of passing for an image without defects."""
    bad = [key for key, arr in arrays.items() if not np.isfinite(arr).all()]
    if bad:
        precision = str(dtype).replace("torch.", "")
        hint = " run with --dtype float32" if precision != "float32" else " check the model files"
        raise ModelOutputError(
            f"{what} {name} returned NaN/inf {' and '.join(bad)} ({precision} on {device}):{hint}"
        )


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

        One forward for the whole batch (for images of one size; an image's boxes must not
        depend on the other images of its batch). No NMS: that is the method's business.
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
