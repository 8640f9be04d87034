"""Benchmark datasets in their original layouts, and ground-truth masks.

``get_dataset(name, root).load(category, protocol=..., n_references=10, seed=0)`` returns a
:class:`Category`: normal reference images and test :class:`Sample` s. Masks are read with
:func:`load_mask` / :func:`sample_mask`.
"""

from iapas.data.base import (
    DEFAULT_PROTOCOL,
    DEFAULT_REFERENCES,
    DEFAULT_SEED,
    PROTOCOLS,
    Category,
    Dataset,
    DatasetBase,
    DatasetError,
    Sample,
    draw_references,
)
from iapas.data.masks import MaskError, binarize_mask, check_mask, load_mask, sample_mask
from iapas.data.registry import ALIASES, DATASETS, canonical_name, get_dataset

__all__ = [
    "ALIASES",
    "DATASETS",
    "DEFAULT_PROTOCOL",
    "DEFAULT_REFERENCES",
    "DEFAULT_SEED",
    "PROTOCOLS",
    "Category",
    "Dataset",
    "DatasetBase",
    "DatasetError",
    "MaskError",
    "Sample",
    "binarize_mask",
    "canonical_name",
    "check_mask",
    "draw_references",
    "get_dataset",
    "load_mask",
    "sample_mask",
]
