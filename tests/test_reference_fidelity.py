"""Where the paper protocol follows the reference code (issue 9): the baseline's caption and
normalisation, the LLM prompt styles and stop tokens, and the caption's object join."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest

from iapas.evaluation.core import EvalSettings, category_signature, stage2_pipeline
from iapas.models.detector import GroundingDinoDetector
from iapas.pipeline import Pipeline, PipelineConfig
from iapas.prompts.caption import BASE_CAPTION, REFERENCE_BASE_CAPTION
from iapas.types import Detections


class RecordingDetector:
    name = "recording"

    def __init__(self) -> None:
        self.captions: list[str] = []

    def detect(self, images: Sequence[np.ndarray], caption: str, *, box_threshold: float, text_threshold: float) -> list[Detections]:
        self.captions.append(caption)
        return [Detections.empty() for _ in images]


class NoSegmenter:
    name = "none"

    def segment(self, images: Sequence[np.ndarray], boxes: Sequence[np.ndarray]) -> list[np.ndarray]:
        return [np.zeros((len(b), *im.shape[:2]), bool) for im, b in zip(images, boxes)]


# --- item 8: the baseline ----------------------------------------------------------------------------


def test_base_mode_under_the_paper_protocol_sends_the_reference_caption():
    det = RecordingDetector()
    pipe = Pipeline(det, NoSegmenter(), PipelineConfig())
    image = np.zeros((8, 8, 3), np.uint8)
    stage2_pipeline(pipe, EvalSettings(mode="base", protocol="paper"))(image)
    stage2_pipeline(pipe, EvalSettings(mode="base", protocol="full"))(image)
    assert det.captions == ["defect, abnormal.", "defect . abnormal ."]
    assert REFERENCE_BASE_CAPTION == "defect, abnormal." and BASE_CAPTION == "defect . abnormal ."
    # the run's resume signature names the caption used
    assert category_signature(pipe, None, EvalSettings(mode="base"))["caption"] == "defect, abnormal."
    # the detector passes it on as written: one phrase, final '.' already there
    assert GroundingDinoDetector.normalize_caption(REFERENCE_BASE_CAPTION) == "defect, abnormal."


def test_base_mode_under_the_paper_protocol_skips_the_per_image_normalisation():
    assert EvalSettings(mode="base", protocol="paper").image_norm is False
    assert EvalSettings(mode="base", protocol="full").image_norm is True
    assert EvalSettings(mode="iapas", protocol="paper").image_norm is True
    assert EvalSettings(mode="base", protocol="paper", image_norm=True).image_norm is True  # asked for: kept
