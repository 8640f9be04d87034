"""What an evaluation does besides the models (:class:`EvalSettings`), and the stage-2 pipeline,
profile and per-category signature those settings give (the run's signature:
:func:`iapas.evaluation.runfolder.run_signature`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np

from iapas.data import DEFAULT_PROTOCOL
from iapas.evaluation.cvresize import resize_map_cubic, resize_mask_nearest
from iapas.evaluation.protocol import EVAL_SIZE, resize_map, resize_mask
from iapas.core.images import DEFAULT_MAX_PIXELS
from iapas.pipeline.stage2 import Pipeline
from iapas.product.profile import Profile
from iapas.core.caption import BASE_CAPTION, REFERENCE_BASE_CAPTION
from iapas.core.ops import DEFAULT_SIZE_THRESHOLD

MODES = ("iapas", "base")
PROTOCOLS = ("paper", "full")
IMAGE_SCORES = ("paper", "raw")


@dataclass
class EvalSettings:
    """What an evaluation does, besides the models.

    ``protocol``: 'paper' (the test images the paper's reference code used) or 'full' (the whole
    test split); both evaluate 400x400 maps (``eval_size``) normalised over each category's stack.
    ``image_norm``: min-max normalise each image's map with its raw full-resolution range before
    the stack normalisation (see :mod:`~iapas.evaluation.protocol`); a metric-time option, not
    part of the resume signature. None (the default): on, as the paper's reference code does,
    except for mode 'base' under the paper protocol, where the reference skips it (off).
    ``mode``: 'iapas' (the profile's caption and the size filter) or 'base' (the paper's baseline:
    no size filter; caption 'defect, abnormal.', one phrase as in the reference code, under the
    paper protocol, else 'defect . abnormal .'). ``size_threshold`` overrides the profile's (None:
    the profile's, 0.8 by default); ``size_filter=False`` keeps every box (ablation).
    ``caption`` replaces the profile's caption in mode 'iapas' (the fixed-prompt ablation keeps
    the object tag and the size filter). ``limit``: at most this many test images per category,
    drawn with ``seed`` and stratified by label (quick checks; the report says so; see
    :func:`~iapas.evaluation.protocol.limit_samples`).
    ``image_score``: 'paper' (the reference code's: each image's maximum of the normalised
    400x400 stack the pixel metrics see) or 'raw' (the raw full-resolution map's maximum);
    None: 'paper' under the paper protocol, 'raw' under 'full'. A metric-time option like
    ``image_norm``. The 400x400 resizing follows the protocol: OpenCV's ``INTER_CUBIC`` /
    ``INTER_NEAREST`` arithmetic under 'paper' (the reference code's, see
    :mod:`~iapas.evaluation.cvresize`), PIL's antialiased bicubic / nearest under 'full'.
    ``test_pool_references``: when set, each category's test images are those left after
    drawing this many references (with ``seed``), whatever ``n_references`` is, so runs with
    different reference counts score the same images (the bench sets it to its largest count).
    ``calibration_images``: per category, segment this many normal images held out from the
    references and the test set and calibrate a conformal OK/NG threshold on them for the target
    ``false_alarm_rate`` (see :mod:`~iapas.evaluation.decisions`); 0 (the default): none. Without
    a normal training split they are drawn from the normal test images, which they then leave,
    under 'full' or with ``calibration_from_test``; under 'paper' calibration never takes test
    images (the reference tests them all): no threshold then, and the notes say why. With
    ``limit``, at most ``limit`` calibration images too (a quick check bounds the whole run).
    ``save_full_maps``: also keep each test image's full-resolution fused map (float64, before
    any normalisation) as ``full_maps/CATEGORY/KEY.npz``, so that anyone can recompute the
    metrics with their own tools.

    Under 'paper' the evaluation is the reference code's arithmetic to the bit: the fused map in
    float64, min-max normalised per image in float64 (when ``image_norm``) BEFORE the OpenCV
    cubic resize of the float64 map, the stack normalisation in float64; the per-image
    normalisation is then baked into the stored maps and part of the resume signature. Under
    'full' the 400x400 map is resized from the float32 map and stored raw (normalised when the
    metrics are computed).
    """

    protocol: str = DEFAULT_PROTOCOL
    mode: str = "iapas"
    size_threshold: float | None = None
    size_filter: bool = True
    caption: str | None = None
    n_references: int = 10
    seed: int = 0
    eval_size: int = EVAL_SIZE
    limit: int | None = None
    batch_size: int = 1
    max_pixels: int = DEFAULT_MAX_PIXELS
    image_norm: bool | None = None
    image_score: str | None = None
    test_pool_references: int | None = None
    calibration_images: int = 0
    false_alarm_rate: float = 0.01
    save_full_maps: bool = False
    calibration_from_test: bool = False

    def __post_init__(self) -> None:
        if self.image_norm is None:  # the reference code's baseline skips the per-image normalisation
            self.image_norm = not (self.mode == "base" and self.protocol == "paper")
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"protocol must be one of {', '.join(PROTOCOLS)}, got {self.protocol!r}")
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if self.size_threshold is not None and not self.size_threshold > 0:
            raise ValueError(f"size_threshold must be > 0, got {self.size_threshold}")
        if self.n_references < 0:
            raise ValueError(f"n_references must be >= 0, got {self.n_references}")
        if self.eval_size < 8:
            raise ValueError(f"eval_size must be >= 8 pixels, got {self.eval_size}")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"limit must be >= 1, got {self.limit}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.caption is not None and not self.caption.strip():
            raise ValueError("caption must not be empty")
        if self.image_score is not None and self.image_score not in IMAGE_SCORES:
            raise ValueError(f"image_score must be one of {', '.join(IMAGE_SCORES)}, got {self.image_score!r}")
        if self.test_pool_references is not None and self.test_pool_references < self.n_references:
            raise ValueError(
                f"test_pool_references ({self.test_pool_references}) must be >= n_references ({self.n_references})"
            )
        if self.calibration_images < 0:
            raise ValueError(f"calibration_images must be >= 0, got {self.calibration_images}")
        if not 0 < self.false_alarm_rate < 1:
            raise ValueError(f"false_alarm_rate must be in (0, 1), got {self.false_alarm_rate}")
        if self.mode == "base" and self.caption is not None:
            raise ValueError("a fixed caption is for mode 'iapas' (mode 'base' has its own fixed caption)")

    def signature(self) -> dict[str, Any]:
        """The settings that decide the predictions (compared when resuming)."""
        return {
            "protocol": self.protocol,
            "mode": self.mode,
            "size_filter": self.size_filter if self.mode == "iapas" else False,
            "size_threshold_override": self.size_threshold if self.mode == "iapas" and self.size_filter else None,
            "caption_override": self.caption,
            "n_references": self.n_references,
            "seed": self.seed,
            "eval_size": self.eval_size,
            "resize": self.resize_method,
            # the paper's maps are normalised per image before resizing (baked into the stored maps)
            **({"map_dtype": "float64", "image_norm": self.image_norm} if self.paper_arithmetic else {}),
            # a pool equal to the references drawn changes nothing: the same signature as without one
            "test_pool_references": None if self.test_pool_references == self.n_references else self.test_pool_references,
        }

    @property
    def image_score_method(self) -> str:
        """'paper' or 'raw' (see the class docstring)."""
        if self.image_score is not None:
            return self.image_score
        return "paper" if self.protocol == "paper" else "raw"

    @property
    def calibration_takes_test(self) -> bool:
        """Whether calibration may draw normal test images (where there is no training split)."""
        return self.protocol == "full" or self.calibration_from_test

    @property
    def n_calibration(self) -> int:
        """Calibration images to draw: ``calibration_images``, at most ``limit``."""
        return self.calibration_images if self.limit is None else min(self.calibration_images, self.limit)

    @property
    def paper_arithmetic(self) -> bool:
        """Whether maps are the reference code's float64 chain (normalise, then resize): under 'paper'."""
        return self.protocol == "paper"

    @property
    def resize_method(self) -> str:
        """'opencv' (the paper protocol's) or 'pil' (the full protocol's)."""
        return "opencv" if self.protocol == "paper" else "pil"

    def resizers(self) -> tuple[Callable[[np.ndarray, int], np.ndarray], Callable[[np.ndarray, int], np.ndarray]]:
        """``(resize_map, resize_mask)`` of :attr:`resize_method`."""
        if self.resize_method == "opencv":
            return resize_map_cubic, resize_mask_nearest
        return resize_map, resize_mask

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

@dataclass
class ProgressHooks:
    """Optional callbacks for progress displays (the CLI's rich bars)."""

    on_category: Callable[[str, int], None] | None = None  # (category, images to evaluate)
    on_image: Callable[[str, str, str], None] | None = None  # (category, key, 'ok' | 'failed' | 'skipped')
    on_stage1: Callable[[str, str, int, int], None] | None = None  # (category, step, done, total)

# --- the stage-2 pipeline an evaluation uses ------------------------------------------------------


def stage2_pipeline(pipeline: Pipeline, settings: EvalSettings) -> Pipeline:
    """``pipeline``'s models with the mode and size threshold of ``settings``."""
    config = replace(
        pipeline.config,
        mode=settings.mode,
        size_threshold=None if settings.mode == "base" else settings.size_threshold,
        size_filter=settings.size_filter,
        base_caption=REFERENCE_BASE_CAPTION if settings.protocol == "paper" else BASE_CAPTION,
        map_float64=settings.paper_arithmetic,
    )
    return Pipeline(pipeline.detector, pipeline.segmenter, config)


def stage2_profile(profile: Profile | None, settings: EvalSettings) -> Profile | None:
    """The profile with the fixed caption of ``settings`` when there is one."""
    if profile is None or settings.caption is None or settings.mode != "iapas":
        return profile
    return replace(profile, caption=settings.caption.strip())


def effective_size_threshold(settings: EvalSettings, profile: Profile | None) -> float | None:
    """The size threshold stage 2 applies (None: no size filter)."""
    if settings.mode == "base" or not settings.size_filter:
        return None
    if settings.size_threshold is not None:
        return settings.size_threshold
    return profile.size_threshold if profile is not None else DEFAULT_SIZE_THRESHOLD


def category_signature(pipeline: Pipeline, profile: Profile | None, settings: EvalSettings) -> dict[str, Any]:
    """What decides one category's predictions beyond the run-wide settings."""
    used = stage2_profile(profile, settings)
    iapas = settings.mode == "iapas"
    return {
        "caption": stage2_pipeline(pipeline, settings).caption_for(used),
        "object_tag": used.object_tag if iapas and used is not None else None,
        "object_size": used.object_size if iapas and used is not None else None,
        "size_threshold": effective_size_threshold(settings, used),
    }


