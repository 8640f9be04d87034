"""Stage 2: boxes, SAM masks and the fused anomaly map of an image (no verdict: see iapas.product.decision)."""

from iapas.pipeline.stage2 import NoSegmenter, Pipeline, PipelineConfig

__all__ = ["NoSegmenter", "Pipeline", "PipelineConfig"]
