"""iapas: zero-shot industrial anomaly segmentation with image-aware prompt generation (IAP-AS).

The public entry points are :class:`iapas.pipeline.Pipeline` and :class:`iapas.profile.Profile`;
they are imported lazily so that ``import iapas`` stays cheap (no torch import).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = ["Pipeline", "PipelineConfig", "Profile", "SegmentationResult", "Detections", "__version__"]

if TYPE_CHECKING:  # pragma: no cover
    from iapas.pipeline import Pipeline, PipelineConfig
    from iapas.profile import Profile
    from iapas.types import Detections, SegmentationResult

_LAZY = {
    "Pipeline": "iapas.pipeline",
    "PipelineConfig": "iapas.pipeline",
    "Profile": "iapas.profile",
    "SegmentationResult": "iapas.types",
    "Detections": "iapas.types",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'iapas' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)
