"""Model adapters. The pipeline depends on :mod:`iapas.models.base` (the contract) and
:mod:`iapas.models.registry` (the model table) only."""

from iapas.models.base import Detector, ModelOutputError, Segmenter

__all__ = ["Detector", "ModelOutputError", "Segmenter"]
