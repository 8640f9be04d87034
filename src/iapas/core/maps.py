"""Anomaly maps as 16-bit PNG values, and the binary mask of a map (ground floor: imports nothing of iapas)."""

from __future__ import annotations

import numpy as np

# A map pixel value v is stored as round(v * MAP_SCALE) in a 16-bit PNG (so 1.0 -> 10000).
MAP_SCALE = 10000
MAP_MAX = 65535 / MAP_SCALE


def encode_map(anomaly_map: np.ndarray) -> np.ndarray:
    """Float map -> uint16 for a 16-bit PNG; values above MAP_MAX (6.5535) saturate."""
    return np.round(np.clip(anomaly_map, 0.0, MAP_MAX) * MAP_SCALE).astype(np.uint16)


def decode_map(encoded: np.ndarray) -> np.ndarray:
    """The inverse of :func:`encode_map` (to 1e-4)."""
    return np.asarray(encoded, dtype=np.float32) / MAP_SCALE


def binary_mask(anomaly_map: np.ndarray, threshold: float) -> np.ndarray:
    """``uint8`` mask, 255 where the map is >= threshold (and > 0), else 0."""
    on = (anomaly_map >= threshold) & (anomaly_map > 0)
    return np.where(on, 255, 0).astype(np.uint8)

