"""The paper's metric set for one category: pixel and image metrics from one sort of each."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from iapas.metrics.pro import _aupro_from_sorted, _positives_with_regions
from iapas.metrics.ranking import RankingMetrics, _ranking_from_sorted
from iapas.metrics.sorting import _as_labels, _as_scores, _check_fpr_limit, _check_no_nan, _sorted_selection, _split_sorted
from iapas.metrics.thresholds import _as_thresholds, _f1_at_thresholds_from_sorted


@dataclass(frozen=True)
class CategoryMetrics:
    """The paper's metric set for one category (all values in [0, 1], nan when undefined)."""

    pixel_ap: float
    pixel_f1_max: float
    pixel_auroc: float
    pixel_aupro: float  # integrated to fpr_limit and divided by it
    image_auroc: float
    image_ap: float
    image_f1_max: float
    pixel_f1_max_100: float  # the reference code's 100-threshold F1-max on min-max normalised maps
    pixel_f1_threshold: float
    image_f1_threshold: float
    fpr_limit: float
    n_images: int
    n_anomalous_images: int
    n_pixels: int
    n_anomalous_pixels: int
    n_regions: int
    # the reference code's 100-threshold F1-max of the image scores (see category_metrics)
    image_f1_max_100: float = float("nan")
    n_pixel_excluded: int = 0  # images left out of the pixel metrics (kept in the image metrics)

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)


def _pixel_metrics(
    maps: np.ndarray, masks: np.ndarray, limit: float, thresholds: np.ndarray
) -> tuple[RankingMetrics, float, float, int]:
    """Exact pixel metrics, AUPRO, the fixed-threshold F1-max and the region count, from one sort."""
    pos, pro_from, n_regions = _positives_with_regions(maps, masks)
    _check_no_nan((pos,), "maps")
    neg = _sorted_selection(maps, masks, False, "maps")
    pixel = _ranking_from_sorted(pos, neg)
    pixel_aupro = _aupro_from_sorted(pos, pro_from, neg, limit)
    del pro_from
    return pixel, pixel_aupro, _f1_at_thresholds_from_sorted(pos, neg, thresholds, normalize=True), n_regions


def _image_metrics(
    maps: np.ndarray,
    masks: np.ndarray,
    image_scores: np.ndarray | None,
    image_labels: np.ndarray | None,
    thresholds: np.ndarray,
    normalize_image_scores: bool | None,
) -> tuple[RankingMetrics, float, np.ndarray]:
    """The image metrics of :func:`category_metrics`, its 100-threshold image F1-max and the
    image labels (given, or ``mask.any()``); the image scores default to each map's maximum."""
    n_img = maps.shape[0]
    if image_scores is None:
        img_scores = maps.reshape(n_img, -1).max(axis=1)
    else:
        img_scores = _as_scores(image_scores, "image_scores").reshape(-1)
        if img_scores.size != n_img:
            raise ValueError(f"image_scores has {img_scores.size} values for {n_img} maps")
    if image_labels is None:
        img_labels = masks.reshape(n_img, -1).any(axis=1)
    else:
        img_labels = _as_labels(np.asarray(image_labels).reshape(-1), (n_img,), "image_labels")
    img_pos, img_neg = _split_sorted(img_scores, img_labels)
    image = _ranking_from_sorted(img_pos, img_neg)
    normalize = image_scores is not None if normalize_image_scores is None else normalize_image_scores
    return image, _f1_at_thresholds_from_sorted(img_pos, img_neg, thresholds, normalize=normalize), img_labels


def category_metrics(
    maps: np.ndarray,
    masks: np.ndarray,
    image_scores: np.ndarray | None = None,
    image_labels: np.ndarray | None = None,
    *,
    fpr_limit: float = 0.3,
    thresholds: np.ndarray | None = None,
    pixel_images: np.ndarray | None = None,
    normalize_image_scores: bool | None = None,
) -> CategoryMetrics:
    """The paper's metric set for one category's stack of ``(N, H, W)`` maps and masks.

    Pixel AP, F1-max, AUROC and AUPRO (to ``fpr_limit``) are exact and share one sort of the
    pixels; ``pixel_f1_max_100`` is :func:`f1_max_at_thresholds` with ``thresholds`` (default
    the reference code's 100) on the stack min-max normalised as a whole. Image scores default
    to each map's maximum (the reference code's image score when ``maps`` is its normalised
    stack), image labels to ``mask.any()``. ``image_f1_max_100`` is the 100-threshold F1-max of
    the image scores: as they are when ``normalize_image_scores`` is False (the reference scans
    its image scores, maxima of the normalised stack, without normalising them again), min-max
    normalised first when True; the default (None) is False for the default image scores and
    True for given ones. ``pixel_images`` (bool, one per map; default all) chooses the images
    whose pixels enter the pixel metrics (e.g. leave out defective images that have no mask);
    every image enters the image metrics. Needs scipy (AUPRO).
    """
    limit = _check_fpr_limit(fpr_limit)
    thr = _as_thresholds(thresholds)
    maps_a = _as_scores(maps, "maps")
    if maps_a.ndim != 3:
        raise ValueError(f"maps must be (N, H, W), got shape {maps_a.shape}")
    masks_a = _as_labels(masks, maps_a.shape, "masks")
    n_img = maps_a.shape[0]
    image, image_f1_100, img_labels = _image_metrics(
        maps_a, masks_a, image_scores, image_labels, thr, normalize_image_scores
    )

    n_excluded = 0
    if pixel_images is not None:
        chosen = _as_labels(np.asarray(pixel_images).reshape(-1), (n_img,), "pixel_images")
        n_excluded = int(n_img - np.count_nonzero(chosen))
        if n_excluded:
            maps_a, masks_a = maps_a[chosen], masks_a[chosen]

    if maps_a.shape[0] == 0:  # every image left out: the pixel metrics are undefined
        nan = float("nan")
        pixel = RankingMetrics(nan, nan, nan, nan, 0, 0)
        pixel_aupro = pixel_f1_100 = nan
        n_regions = n_pixels = n_anomalous_pixels = 0
    else:
        pixel, pixel_aupro, pixel_f1_100, n_regions = _pixel_metrics(maps_a, masks_a, limit, thr)
        n_pixels, n_anomalous_pixels = int(maps_a.size), pixel.n_positive

    return CategoryMetrics(
        pixel_ap=pixel.average_precision,
        pixel_f1_max=pixel.f1_max,
        pixel_auroc=pixel.auroc,
        pixel_aupro=pixel_aupro,
        image_auroc=image.auroc,
        image_ap=image.average_precision,
        image_f1_max=image.f1_max,
        pixel_f1_max_100=pixel_f1_100,
        pixel_f1_threshold=pixel.f1_threshold,
        image_f1_threshold=image.f1_threshold,
        fpr_limit=limit,
        n_images=n_img,
        n_anomalous_images=int(img_labels.sum()),
        n_pixels=n_pixels,
        n_anomalous_pixels=n_anomalous_pixels,
        n_regions=n_regions,
        image_f1_max_100=image_f1_100,
        n_pixel_excluded=n_excluded,
    )

