"""The one model table: every model a user can name, its hub id, model type and adapter.

Two tables, each written once:

- :data:`FAMILIES`: per ``model_type`` of a ``config.json``, the transformers class it loads as
  and the adapter class that runs it (:mod:`iapas.models.factory` chooses by it, the adapters
  check the loaded class against it);
- :data:`MODELS`: per hub checkpoint, its kind, model type, the names a user types
  (``--detector gdino-base``), the short names of earlier versions, and the real-size random
  preset that copies its architecture (:mod:`iapas.testing.presets`).

Every name resolves to a hub id, and every run records the resolved id, never the name, so two
runs with ``base`` and ``IDEA-Research/grounding-dino-base`` are the same run. Anything that is
not a name (a hub id, a local folder) passes through unchanged. Help texts are generated from
here (:func:`help_table`, :func:`family_list`, :func:`detector_names`, :func:`segmenter_names`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

KINDS: tuple[str, ...] = ("detector", "segmenter")


@dataclass(frozen=True)
class Family:
    """One model family: ``model_classes`` maps each ``model_type`` it covers to its transformers
    class; ``adapter`` is the ``"module:Class"`` that runs it (imported only when used);
    ``openvino``: its adapter runs ``--runtime openvino`` (see :mod:`iapas.models.ov`)."""

    name: str
    kind: str
    adapter: str
    model_classes: dict[str, str] = field(hash=False)
    openvino: bool = False


# In the order the help texts name them (``family_list``).
FAMILIES: tuple[Family, ...] = (
    Family("Grounding DINO", "detector", "iapas.models.detector:GroundingDinoDetector",
           {"grounding-dino": "GroundingDinoForObjectDetection"}, openvino=True),
    # LLMDet checkpoints load as MM-Grounding-DINO; same processor and outputs as Grounding DINO
    Family("MM-Grounding-DINO", "detector", "iapas.models.detector:GroundingDinoDetector",
           {"mm-grounding-dino": "MMGroundingDinoForObjectDetection"}, openvino=True),
    Family("OWLv2", "detector", "iapas.models.owlv2:Owlv2Detector", {"owlv2": "Owlv2ForObjectDetection"}),
    # joint: its detections bring their masks (see iapas.models.sam3)
    Family("SAM 3", "detector", "iapas.models.sam3:Sam3Detector", {"sam3": "Sam3Model"}),
    Family("SAM", "segmenter", "iapas.models.segmenter:SamSegmenter", {"sam": "SamModel"}, openvino=True),
    Family("SAM-HQ", "segmenter", "iapas.models.segmenter:SamSegmenter", {"sam_hq": "SamHQModel"}, openvino=True),
    # the hub's SAM 2.1 checkpoints are sam2_video models; they load as the image model Sam2Model
    Family("SAM 2.1", "segmenter", "iapas.models.sam2:Sam2Segmenter", {"sam2": "Sam2Model", "sam2_video": "Sam2Model"}),
)


@dataclass(frozen=True)
class HubModel:
    """One hub checkpoint: ``names`` are what a user types (listed in the help), ``aliases`` the
    short names of earlier versions (kept working), ``preset`` the real-size random preset of
    its architecture, ``gated`` whether the hub asks for an accepted licence before a download;
    ``family`` is shown in the README's table."""

    hub_id: str
    kind: str
    model_type: str
    family: str
    names: tuple[str, ...] = ()
    aliases: tuple[str, ...] = ()
    preset: str | None = None
    gated: bool = False


# Hub ids as spelled in the models' own documentation (transformers model docs and model cards).
# Gated: the hub asks for an accepted licence before a download (SAM 3: Meta's SAM licence form);
# the others are Apache-2.0 downloads without a licence form. The order is the help's.
MODELS: tuple[HubModel, ...] = (
    HubModel("IDEA-Research/grounding-dino-tiny", "detector", "grounding-dino", "Grounding DINO",
             ("gdino-tiny",), ("tiny",), "grounding-dino-tiny"),
    HubModel("IDEA-Research/grounding-dino-base", "detector", "grounding-dino", "Grounding DINO",
             ("gdino-base",), ("base",), "grounding-dino-base"),
    HubModel("openmmlab-community/mm_grounding_dino_tiny_o365v1_goldg_v3det", "detector", "mm-grounding-dino",
             "MM-Grounding-DINO", ("mm-gdino-tiny",), (), "mm-grounding-dino-tiny"),
    HubModel("iSEE-Laboratory/llmdet_tiny", "detector", "mm-grounding-dino", "LLMDet (MM-Grounding-DINO)",
             ("llmdet-tiny",), (), "llmdet-tiny"),
    HubModel("google/owlv2-base-patch16-ensemble", "detector", "owlv2", "OWLv2", ("owlv2-base",), (), "owlv2-base"),
    HubModel("google/owlv2-large-patch14-ensemble", "detector", "owlv2", "OWLv2", ("owlv2-large",), (), "owlv2-large"),
    HubModel("facebook/sam-vit-huge", "segmenter", "sam", "SAM", ("sam-vit-h",), ("huge",), "sam-vit-huge"),
    HubModel("facebook/sam-vit-large", "segmenter", "sam", "SAM", (), ("large",), "sam-vit-large"),
    HubModel("facebook/sam-vit-base", "segmenter", "sam", "SAM", ("sam-vit-b",), ("base",), "sam-vit-base"),
    HubModel("syscv-community/sam-hq-vit-huge", "segmenter", "sam_hq", "SAM-HQ", ("sam-hq-vit-h",), (), "sam-hq-vit-huge"),
    HubModel("facebook/sam2.1-hiera-large", "segmenter", "sam2_video", "SAM 2.1", ("sam2.1-large",), (), "sam2.1-large"),
    HubModel("facebook/sam2.1-hiera-tiny", "segmenter", "sam2_video", "SAM 2.1", ("sam2.1-tiny",), (), "sam2.1-tiny"),
    # a detector that segments too: with it no segmenter is loaded (see iapas.models.sam3)
    HubModel("facebook/sam3", "detector", "sam3", "SAM 3 (detector + segmenter)", ("sam3",), (), "sam3", gated=True),
)


@dataclass(frozen=True)
class ModelName:
    """One name a user can type: ``kind`` ``detector`` or ``segmenter``, the hub id it stands
    for, its family and whether the hub model is gated (a row of :data:`MODEL_NAMES`)."""

    name: str
    kind: str
    hub_id: str
    family: str
    gated: bool = False


# The names of the help's table, derived from MODELS (read at call time: tests may replace it).
MODEL_NAMES: tuple[ModelName, ...] = tuple(
    ModelName(name, m.kind, m.hub_id, m.family, m.gated) for m in MODELS for name in m.names
)

# The short names of earlier versions, kept working (derived from MODELS).
ALIASES: dict[str, dict[str, str]] = {
    kind: {alias: m.hub_id for m in MODELS if m.kind == kind for alias in m.aliases} for kind in KINDS
}

def _check_kind(kind: str) -> str:
    if kind not in KINDS:
        raise ValueError(f"unknown model kind {kind!r}; expected detector or segmenter")
    return kind


def names(kind: str) -> dict[str, str]:
    """Every name of ``kind`` (table names and short aliases) -> its hub id."""
    _check_kind(kind)
    table = {m.name: m.hub_id for m in MODEL_NAMES if m.kind == kind}
    return {**table, **ALIASES[kind]}


def resolve(kind: str, name_or_path: str) -> str:
    """The hub id of a name of ``kind``; a hub id or folder is returned as it is."""
    return names(kind).get(name_or_path, name_or_path)


# The defaults: the paper's Grounding DINO tiny and SAM ViT-H.
DEFAULT_DETECTOR = resolve("detector", "gdino-tiny")
DEFAULT_SEGMENTER = resolve("segmenter", "sam-vit-h")


def detector_names() -> tuple[str, ...]:
    """The detector names of the table, in its order (for help texts)."""
    return tuple(m.name for m in MODEL_NAMES if m.kind == "detector")


def segmenter_names() -> tuple[str, ...]:
    """The segmenter names of the table, in its order (for help texts)."""
    return tuple(m.name for m in MODEL_NAMES if m.kind == "segmenter")


def family_list(kind: str) -> str:
    """The families of ``kind`` as a help text says them: 'Grounding DINO, MM-Grounding-DINO,
    OWLv2 or SAM 3' (detectors), 'SAM, SAM-HQ or SAM 2.1' (segmenters)."""
    found = [f.name for f in FAMILIES if f.kind == _check_kind(kind)]
    return f"{', '.join(found[:-1])} or {found[-1]}" if len(found) > 1 else "".join(found)


def adapters(kind: str) -> dict[str, str]:
    """``model_type -> "module:Class"`` of the adapters of ``kind``."""
    _check_kind(kind)
    return {t: f.adapter for f in FAMILIES if f.kind == kind for t in f.model_classes}


def openvino_families() -> tuple[str, ...]:
    """The families that run ``--runtime openvino``, in the table's order."""
    return tuple(f.name for f in FAMILIES if f.openvino)


def runs_openvino(model_type: str) -> bool:
    """Whether the adapter of ``model_type`` runs ``--runtime openvino``."""
    return any(model_type in f.model_classes and f.openvino for f in FAMILIES)


def model_classes(*families: str) -> dict[str, str]:
    """``model_type -> transformers class name`` of the named families (an adapter's)."""
    out = {t: c for f in FAMILIES if f.name in families for t, c in f.model_classes.items()}
    if not out:
        raise ValueError(f"no family named {', '.join(families)}")
    return out


def model_class(model_type: str) -> str:
    """The transformers class name a ``model_type`` loads as."""
    for f in FAMILIES:
        if model_type in f.model_classes:
            return f.model_classes[model_type]
    raise ValueError(f"unknown model type {model_type!r}")


def help_table(kind: str | None = None) -> str:
    """The table as plain lines for ``--help`` (each at most 76 characters, click indents by
    2), preceded by click's no-rewrap marker so the columns stay."""
    rows = [m for m in MODEL_NAMES if kind is None or m.kind == kind]
    width = max(len(m.name) for m in rows)
    gated = any(m.gated for m in rows)
    which = "--detector, --segmenter" if kind is None else f"--{kind}"
    lines = ["\b", f"Model names ({which}" + ("):" if gated else "; none is gated):")]
    lines += [f"{m.name:<{width}}  {m.hub_id}" + (" (gated)" if m.gated else "") for m in rows]
    if gated:
        lines.append("(gated): accept its licence on the hub, then log in, before a download.")
    if any(m.name == "sam3" for m in rows):
        lines.append("sam3 detects and segments: with it no segmenter is loaded.")
    aliases = "; ".join(f"{', '.join(v)} (--{k})" for k, v in ALIASES.items() if kind is None or k == kind)
    lines.append(f"Also: {aliases}.")
    return "\n".join(lines)
