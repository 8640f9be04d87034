"""An evaluation's per-image files: the prediction records (``predictions/CATEGORY.jsonl``), the
400x400 maps (``maps/CATEGORY/KEY.npz``), and the metrics computed from them."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from iapas.data import Category, Sample
from iapas.evaluation.protocol import PR_POINTS, normalize_image, normalize_stack, pr_curve
from iapas.evaluation.settings import IMAGE_SCORES
from iapas.core.images import LoadedImage
from iapas.core.files import atomic_path, file_stamp
from iapas.metrics import CategoryMetrics, category_metrics
from iapas.core.names import path_inside
from iapas.engine.runfolder import assign_keys
from iapas.core.types import SegmentationResult

PREDICTIONS_DIR = "predictions"
MAPS_DIR = "maps"
FULL_MAPS_DIR = "full_maps"


# --- per-image files -----------------------------------------------------------------------------------


def predictions_path(out_dir: Path, category: str) -> Path:
    return path_inside(Path(out_dir) / PREDICTIONS_DIR, f"{category}.jsonl")


def map_relpath(category: str, key: str) -> str:
    """``maps/CATEGORY/KEY.npz``; write it through :func:`iapas.core.names.path_inside` (a key is a
    relative path: ``good/004``)."""
    return f"{MAPS_DIR}/{category}/{key}.npz"


def full_map_relpath(category: str, key: str) -> str:
    return f"{FULL_MAPS_DIR}/{category}/{key}.npz"


def _map_dtype(anomaly_map: np.ndarray) -> type:
    return np.float64 if anomaly_map.dtype == np.float64 else np.float32


def save_map_file(path: Path, anomaly_map: np.ndarray, mask: np.ndarray | None = None) -> None:
    """Write ``map`` (float64 stays float64, the paper protocol's; anything else float32) and
    ``mask`` (bool, when given) into a compressed ``.npz``, atomically."""
    arrays = {"map": anomaly_map.astype(_map_dtype(anomaly_map), copy=False)}
    if mask is not None:
        arrays["mask"] = mask.astype(bool, copy=False)
    with atomic_path(path) as tmp:  # synced to disk before the rename
        with open(tmp, "wb") as fh:
            np.savez_compressed(fh, **arrays)


def load_map_file(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """``(map, mask)`` of a stored prediction (the map float64 or float32, as stored)."""
    with np.load(path) as data:
        amap = np.asarray(data["map"])
        return amap.astype(_map_dtype(amap), copy=False), np.asarray(data["mask"], dtype=bool)


def is_done(record: Mapping[str, Any] | None, out_dir: Path, sample: Sample, *, full_map: bool = False) -> bool:
    """Whether ``record`` is a finished prediction of this very file (same path, size and mtime),
    with its full-resolution map file too when ``full_map`` (``--save-full-maps``)."""
    if not record or record.get("status") != "ok":
        return False
    if record.get("image") != str(sample.path) or record.get("file") != file_stamp(sample.path):
        return False
    if "map_min" not in record or "map_max" not in record:  # made before the raw range was recorded
        return False
    if full_map and not (out_dir / str(record.get("full_map", ""))).is_file():
        return False
    return (out_dir / str(record.get("map", ""))).is_file()


def prediction_record(
    key: str, sample: Sample, image: LoadedImage, result: SegmentationResult, map_eval: np.ndarray, mask_eval: np.ndarray, map_file: str,
    *, image_normalized: bool = False, full_map: str | None = None,
) -> dict[str, Any]:
    """The JSON line of one evaluated image.

    ``map_min`` and ``map_max`` are the raw full-resolution map's range at full precision: the
    per-image normalisation and the image score (``map_max``; ``image_score`` is the same,
    rounded) come from them. ``score`` is the resized map's maximum (bicubic overshoot included),
    kept for information: it feeds no metric. ``image_normalized``: the stored map was min-max
    normalised per image before it was resized (the paper protocol's order); ``full_map``: the
    full-resolution map's file, when kept.
    """
    raw = result.anomaly_map
    return {
        "key": key,
        "image": str(sample.path),
        "file": file_stamp(sample.path),
        "mask": str(sample.mask_path) if sample.mask_path is not None else None,
        "label": int(sample.label),
        "defect_type": sample.defect_type,
        "status": "ok",
        "width": image.width,
        "height": image.height,
        **result.to_record(),
        "map_min": float(raw.min()) if raw.size else 0.0,
        "map_max": float(raw.max()) if raw.size else 0.0,
        "score": float(map_eval.max()),  # max of the resized map, before normalisation: not a metric input
        "anomalous_pixels": int(mask_eval.sum()),
        "map": map_file,
        **({"image_normalized": True} if image_normalized else {}),
        **({"full_map": full_map} if full_map is not None else {}),
    }


def failure_record(key: str, sample: Sample, error: str) -> dict[str, Any]:
    return {
        "key": key,
        "image": str(sample.path),
        "mask": str(sample.mask_path) if sample.mask_path is not None else None,
        "label": int(sample.label),
        "defect_type": sample.defect_type,
        "status": "failed",
        "error": error,
    }


def sample_keys(category: Category) -> dict[Path, str]:
    """A stable output name per test image of the category (before any --limit): relative to the
    folder that holds all of them (``good/004``, ``crack/000``), so every key names its defect type."""
    paths = [s.path for s in category.test]
    if not paths:
        return {}
    common = os.path.commonpath([os.path.dirname(os.path.abspath(p)) for p in paths])
    return dict(zip(paths, assign_keys(paths, [Path(common)] * len(paths))))


# --- metrics from stored predictions -------------------------------------------------------------------


def raw_range(record: Mapping[str, Any]) -> tuple[float, float]:
    """The raw full-resolution map's ``(min, max)`` stored in a prediction record."""
    try:
        return float(record["map_min"]), float(record["map_max"])
    except (KeyError, TypeError, ValueError):
        raise ValueError(
            f"prediction {record.get('key')!r} has no raw map range (made by an older iapas): run the evaluation "
            "again to segment it anew"
        ) from None


def evaluated_map(anomaly_map: np.ndarray, record: Mapping[str, Any], image_norm: bool) -> np.ndarray:
    """A stored 400x400 map as the metrics see it before the stack normalisation: per-image
    normalised with the record's raw range when ``image_norm``, else as stored; a map that was
    normalised before it was resized (the paper protocol's, ``image_normalized``) as stored."""
    if not image_norm or record.get("image_normalized"):
        return anomaly_map
    lo, hi = raw_range(record)
    return normalize_image(anomaly_map, lo, hi)


def has_pixel_truth(record: Mapping[str, Any]) -> bool:
    """Whether a prediction's mask is ground truth for its pixels: False for a defective image
    without a mask file (its pixels are unknown, not normal). A record without the ``mask``
    field (made by hand) counts as having one."""
    return not (int(record.get("label", 0)) == 1 and "mask" in record and record["mask"] is None)


def metrics_from_predictions(
    out_dir: Path,
    records: Sequence[Mapping[str, Any]],
    *,
    image_norm: bool = True,
    image_score: str = "paper",
    pr_points: int = PR_POINTS,
) -> tuple[CategoryMetrics, tuple[float, float], dict[str, list[float]]]:
    """The paper's metrics of one category from its stored 400x400 maps and masks.

    ``records`` are the ``ok`` prediction lines in test order. With ``image_norm`` (the paper's
    protocol) each map is first min-max normalised with its raw full-resolution range
    (:func:`evaluated_map`); the maps are then stacked, min-max normalised over the stack
    (:func:`~iapas.evaluation.protocol.normalize_stack`) and passed to
    :func:`iapas.metrics.category_metrics` with the images' labels (a defective image whose mask
    is empty, as 4 of MTD's, still counts as anomalous at image level). Defective images without
    a mask file (:func:`has_pixel_truth`) are left out of the pixel metrics and kept in the image
    metrics. Image scores: ``image_score`` 'paper' takes each image's maximum of the normalised
    stack (the reference code's ``np_scores.reshape(N, -1).max(axis=1)``), 'raw' the raw
    full-resolution map's maximum (``map_max``). Returns the metrics, the ``(min, max)`` of the
    stack the stack normalisation used, and the PR curve on the normalised maps (over the
    images with pixel ground truth).
    """
    if not records:
        raise ValueError("no evaluated image")
    if image_score not in IMAGE_SCORES:
        raise ValueError(f"image_score must be one of {', '.join(IMAGE_SCORES)}, got {image_score!r}")
    first_map, first_mask = load_map_file(Path(out_dir) / records[0]["map"])
    shape = first_map.shape
    maps = np.empty((len(records), *shape), dtype=first_map.dtype)  # float64 under the paper protocol
    masks = np.empty((len(records), *shape), dtype=bool)
    for i, rec in enumerate(records):
        m, g = (first_map, first_mask) if i == 0 else load_map_file(Path(out_dir) / rec["map"])
        if m.shape != shape or g.shape != shape:
            raise ValueError(f"{rec['map']}: map {m.shape} / mask {g.shape} differ from the first map's {shape}")
        maps[i] = evaluated_map(m, rec, image_norm)
        masks[i] = g
    labels = np.array([int(rec["label"]) for rec in records], dtype=bool)
    truth = np.array([has_pixel_truth(rec) for rec in records], dtype=bool)
    maps, lo, hi = normalize_stack(maps, in_place=True)
    if image_score == "raw":
        image_scores: np.ndarray | None = np.array([raw_range(rec)[1] for rec in records], dtype=np.float64)
    else:
        image_scores = None  # the maxima of the normalised stack
    metrics = category_metrics(
        maps, masks, image_scores=image_scores, image_labels=labels, pixel_images=None if truth.all() else truth
    )
    if not truth.all():
        maps, masks = maps[truth], masks[truth]
    if not truth.any():  # no pixel ground truth at all: an empty curve
        maps, masks = np.zeros((1, 1, 1), dtype=np.float32), np.zeros((1, 1, 1), dtype=bool)
    thresholds, precision, recall = pr_curve(maps, masks, pr_points)
    curve = {
        "thresholds": [round(float(t), 6) for t in thresholds],
        "precision": [float(p) for p in precision],
        "recall": [float(r) for r in recall],
    }
    return metrics, (lo, hi), curve


