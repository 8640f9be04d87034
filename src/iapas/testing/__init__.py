"""Tiny, randomly initialised models of the real architectures, for tests and offline checks.

They are the real ``transformers`` classes built from small configs and written with
``save_pretrained``, so loading them exercises exactly the code path that loads hub models.
Their outputs are meaningless; their shapes, types and file formats are real.
"""

from iapas.testing.tiny import (
    TINY_WORDS,
    make_tiny_grounding_dino,
    make_tiny_models,
    make_tiny_owlv2,
    make_tiny_sam,
    make_tiny_sam2,
    make_tiny_sam3,
)

__all__ = [
    "TINY_WORDS", "make_tiny_grounding_dino", "make_tiny_models", "make_tiny_owlv2", "make_tiny_sam",
    "make_tiny_sam2", "make_tiny_sam3",
]
