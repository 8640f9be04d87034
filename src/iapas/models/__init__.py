"""Model adapters. The pipeline depends on :mod:`iapas.models.base` only."""

from iapas.models.base import Detector, Segmenter

__all__ = ["Detector", "Segmenter"]
