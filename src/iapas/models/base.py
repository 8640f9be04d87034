"""The detector and segmenter contracts; adapters own every model specific.

Images cross these interfaces as ``(H, W, 3)`` uint8 RGB numpy arrays. A new detector or
segmenter subclasses :class:`Detector` or :class:`Segmenter` and gets a row in the model table
(:mod:`iapas.models.registry`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from iapas.core.caption import TextBudget, estimated_text_budget
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


def tokenizer_text_budget(tokenizer: Any, max_tokens: int) -> TextBudget:
    """The exact budget of a detector whose ``tokenizer`` reads the whole caption: its token
    count (special tokens included) against ``max_tokens``."""
    return TextBudget(lambda caption: len(tokenizer(caption)["input_ids"]), max_tokens, "detector tokenizer")


class Detector:
    """An open-vocabulary detector: boxes for a text caption. The whole contract stage 1 and
    stage 2 rely on; an adapter overrides :meth:`detect` and what its model does better than the
    defaults (nothing is probed with ``hasattr``).

    Class attributes: ``returns_masks`` (a joint model such as SAM 3: each detection brings its
    mask and no segmenter runs), ``fuses_object`` (it can answer :meth:`detect_with_object`, ``--fuse-object-detection``).
    ``name`` is the model's hub id or folder; ``device`` and ``dtype`` where it runs (None for
    detectors that are not torch models).
    """

    name: str
    device: Any = None
    dtype: Any = None
    returns_masks: bool = False
    fuses_object: bool = False
    compiled: bool = False

    def detect(
        self, images: Sequence[np.ndarray], caption: str, *, box_threshold: float = 0.1, text_threshold: float = 0.1
    ) -> list[Detections]:
        """Detections per image, boxes in that image's pixels (not clipped to it).

        One forward for the whole batch (for images of one size; an image's boxes must not
        depend on the other images of its batch). No NMS: that is the method's business.
        An adapter overrides this or :meth:`detect_many` (this default asks the latter).
        """
        if type(self).detect_many is Detector.detect_many:
            raise NotImplementedError(f"{type(self).__name__} overrides neither detect nor detect_many")
        return self.detect_many(images, [caption], box_threshold=box_threshold, text_threshold=text_threshold)[0]

    def detect_many(
        self, images: Sequence[np.ndarray], captions: Sequence[str], *, box_threshold: float = 0.1, text_threshold: float = 0.1
    ) -> list[list[Detections]]:
        """:meth:`detect` for several captions on the same images, one list per caption (the
        default: one :meth:`detect` per caption, in order; adapters share the image work)."""
        return [
            self.detect(images, caption, box_threshold=box_threshold, text_threshold=text_threshold)
            for caption in captions
        ]

    def detect_with_object(
        self, images: Sequence[np.ndarray], caption: str, object_phrase: str, *, box_threshold: float = 0.1,
        text_threshold: float = 0.1,
    ) -> tuple[list[Detections], list[Detections]]:
        """The caption's detections and the object phrase's (a phrase of the caption) from one
        pass (``--fuse-object-detection``); only where :attr:`fuses_object`. The default, for
        detectors whose phrases do not interact (OWLv2, SAM 3): :meth:`detect_many` of both,
        which gives exactly what a separate object detection gives."""
        if not self.fuses_object:
            raise ValueError(f"detector {self.name} cannot fuse object detection")
        objects, anomalies = self.detect_many(
            images, [object_phrase, caption], box_threshold=box_threshold, text_threshold=text_threshold
        )
        return anomalies, objects

    def caption_budget(self) -> TextBudget:
        """How stage 1 counts a caption's tokens and how many the detector reads (the default:
        :func:`~iapas.core.caption.estimate_token_count` against Grounding DINO's 256)."""
        return estimated_text_budget()

    def check_caption(self, caption: str) -> None:
        """Raise ValueError when ``caption`` does not fit the model's text window (the default
        checks nothing)."""

    def compile(self) -> None:
        """``torch.compile`` the heavy sub-modules in place (the default compiles nothing)."""


class Segmenter:
    """A box-promptable segmenter. ``name``, ``device`` and ``dtype`` as :class:`Detector`'s."""

    name: str
    device: Any = None
    dtype: Any = None
    compiled: bool = False

    def segment(self, images: Sequence[np.ndarray], boxes: Sequence[np.ndarray]) -> list[np.ndarray]:
        """For each image, ``(N, H, W)`` bool masks, one per box of ``(N, 4)`` xyxy pixels.

        One image-encoder pass per image and one batched decoder call for all its boxes; an
        image with no boxes costs nothing and gives a ``(0, H, W)`` array.
        """
        raise NotImplementedError

    def compile(self) -> None:
        """``torch.compile`` the heavy sub-modules in place (the default compiles nothing)."""
