"""The one run signature: what identifies the models and settings a run folder's results were
made with, so that a resumed run with other ones is refused (:mod:`iapas.engine.runfolder`).

Built from a :class:`~iapas.pipeline.stage2.PipelineConfig` and :class:`RunModels` (the
models by content, see :mod:`iapas.models.fingerprint`, and the precision they run at), which
are known either from the loaded pipeline (:meth:`RunModels.loaded`) or, before any model
loads, from the names and paths a command line gives (:meth:`RunModels.named`): the same
function then says what the full check will say. ``segment`` (and the station's store, which
writes segment folders) records :func:`segment_signature`; ``evaluate`` records its settings'
signature followed by :func:`models_signature` (:mod:`iapas.evaluation.runfolder`).

Every field of the config enters the signature: the declared groups below by their own rule,
and any other field (``compile``, a new option) as ``name: value`` when it is not its
default, so that signatures recorded before it existed still match. A new config field is
therefore compared on resume without touching this module.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from iapas.models.fingerprint import KINDS, named_identity, pipeline_identity

# how each PipelineConfig field enters a signature (any other field: its value when not the default)
MODEL_FIELDS = ("detector", "segmenter")  # by fingerprint: RunModels.identity
PRECISION_FIELDS = ("device", "dtype")  # the loaded detector's: RunModels.precision
DETECTOR_FIELDS = ("box_threshold", "text_threshold", "nms_iou", "fuse_object_detection")
# segment: its own keys (the caption says the base caption); evaluate: its settings' signature
STAGE2_FIELDS = ("mode", "size_threshold", "size_filter", "base_caption")
EVALUATION_FIELDS = ("map_float64",)  # evaluate: set from its protocol (stage2_pipeline), in its settings
_SEGMENT_RULED = (*MODEL_FIELDS, *PRECISION_FIELDS, *DETECTOR_FIELDS, *STAGE2_FIELDS)
_EVALUATION_RULED = (*_SEGMENT_RULED, *EVALUATION_FIELDS)


def precision_signature(pipeline: Any) -> dict[str, str | None]:
    """The detector's dtype and device as text: float16 and float32 give different scores, so a
    resumed run must not mix them (part of every run signature; Ray workers must match it)."""
    values = {key: getattr(pipeline.detector, key, None) for key in ("dtype", "device")}
    return {key: None if value is None else str(value) for key, value in values.items()}


def named_models(detector: str, segmenter: str) -> dict[str, str]:
    """The identity of the models a command line names, before loading them, keeping only those
    known by content (a folder, a cached hub revision): what a hub id not in the cache loads is
    known once loaded (the full check compares it then). A model folder that does not exist
    raises :class:`~iapas.models.loading.ModelLoadError`."""
    identity = named_identity(detector, segmenter, strict=True)
    for kind in KINDS:
        if identity[f"{kind}_fingerprint"].startswith("name:"):
            del identity[kind], identity[f"{kind}_fingerprint"]
    return identity


@dataclass(frozen=True)
class RunModels:
    """The models of a run by content (names informative, fingerprints compared) and their precision."""

    identity: Mapping[str, str]
    precision: Mapping[str, str | None]

    @classmethod
    def loaded(cls, pipeline: Any) -> RunModels:
        """The models of a loaded pipeline."""
        return cls(pipeline_identity(pipeline), precision_signature(pipeline))

    @classmethod
    def named(cls, config: Any) -> RunModels:
        """What :meth:`loaded` will say once ``config``'s models are loaded (see :func:`named_models`);
        device and dtype resolved as loading resolves them."""
        from iapas.models.loading import resolve_device, resolve_dtype

        device = resolve_device(config.device)
        return cls(named_models(config.detector, config.segmenter), {"dtype": str(resolve_dtype(config.dtype, device)), "device": device})


def other_settings(config: Any, ruled: tuple[str, ...]) -> dict[str, Any]:
    """The config's fields not in ``ruled`` whose value is not their default (e.g. ``compile``:
    compiled models agree only to float rounding, a resumed run must not mix them)."""
    if not dataclasses.is_dataclass(config):
        return {}
    found: dict[str, Any] = {}
    for spec in dataclasses.fields(config):
        if spec.name in ruled:
            continue
        default = spec.default if spec.default_factory is dataclasses.MISSING else spec.default_factory()
        value = getattr(config, spec.name)
        if default is dataclasses.MISSING or value != default:
            found[spec.name] = value
    return found


def models_signature(config: Any, models: RunModels, *, evaluation: bool = False) -> dict[str, Any]:
    """The models, the detector settings, the precision and every other setting of ``config``
    (see the module docstring); ``evaluation``: the fields an evaluation's settings rule are left
    to them. Evaluate's signature holds this after its settings; :func:`segment_signature`
    holds it too."""
    return {
        **models.identity,
        "box_threshold": config.box_threshold,
        "text_threshold": config.text_threshold,
        "nms_iou": config.nms_iou,
        "fuse_object_detection": bool(getattr(config, "fuse_object_detection", False)),
        **models.precision,
        **other_settings(config, _EVALUATION_RULED if evaluation else _SEGMENT_RULED),
    }


def segment_signature(config: Any, models: RunModels, caption: str, profile: Any | None) -> dict[str, Any]:
    """A segment run's signature (``run.json``): the stage-2 settings, the caption and the
    profile's object, then :func:`models_signature` (in the order segment has always written)."""
    rest = models_signature(config, models)
    head = {key: rest.pop(key) for key in ("box_threshold", "text_threshold", "nms_iou")}
    fuse = rest.pop("fuse_object_detection")
    size_threshold = config.size_threshold if config.size_threshold is not None else (profile.size_threshold if profile else None)
    return {
        "mode": config.mode,
        "caption": caption,
        "object_tag": profile.object_tag if profile else None,
        "size_threshold": size_threshold,
        "object_size": profile.object_size if profile else None,
        **head,
        "size_filter": config.size_filter,
        "fuse_object_detection": fuse,
        **rest,
    }


def run_signature(pipeline: Any, profile: Any | None) -> dict[str, Any]:
    """:func:`segment_signature` of a loaded pipeline running ``profile`` (its stage-2 part)."""
    return segment_signature(pipeline.config, RunModels.loaded(pipeline), pipeline.caption_for(profile), profile)
