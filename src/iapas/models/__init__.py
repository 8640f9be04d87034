"""Model adapters. The pipeline depends on :mod:`iapas.models.base` only."""

from iapas.models.base import Detector, ModelOutputError, Segmenter

__all__ = ["Detector", "ModelOutputError", "Segmenter"]
