"""iapas: zero-shot industrial anomaly segmentation with image-aware prompt generation (IAP-AS).

The public entry points are :class:`iapas.pipeline.stage2.Pipeline` and :class:`iapas.product.profile.Profile`;
they are imported lazily so that ``import iapas`` stays cheap (no torch import).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = ["Pipeline", "PipelineConfig", "Profile", "SegmentationResult", "Detections", "__version__"]

if TYPE_CHECKING:  # pragma: no cover
    from iapas.pipeline.stage2 import Pipeline, PipelineConfig
    from iapas.product.profile import Profile
    from iapas.core.types import Detections, SegmentationResult

_LAZY = {
    "Pipeline": "iapas.pipeline.stage2",
    "PipelineConfig": "iapas.pipeline.stage2",
    "Profile": "iapas.product.profile",
    "SegmentationResult": "iapas.core.types",
    "Detections": "iapas.core.types",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'iapas' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)
