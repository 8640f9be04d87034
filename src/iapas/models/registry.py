"""The model names a user can type (``--detector gdino-base``), resolved in one table.

Every name resolves to a hub id, and every run records the resolved id, never the name, so two
runs with ``base`` and ``IDEA-Research/grounding-dino-base`` are the same run. Anything that is
not a name (a hub id, a local folder) passes through unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ModelName:
    """One row of the table: ``name`` is what a user types, ``kind`` ``detector`` or
    ``segmenter``, ``gated`` whether the hub asks for an accepted licence before a download."""

    name: str
    kind: str
    hub_id: str
    family: str
    gated: bool = False


# Hub ids as spelled in the models' own documentation (transformers model docs and model cards).
# Gated: the hub asks for an accepted licence before a download (SAM 3: Meta's SAM licence form);
# the others are Apache-2.0 downloads without a licence form.
MODEL_NAMES: tuple[ModelName, ...] = (
    ModelName("gdino-tiny", "detector", "IDEA-Research/grounding-dino-tiny", "Grounding DINO"),
    ModelName("gdino-base", "detector", "IDEA-Research/grounding-dino-base", "Grounding DINO"),
    ModelName(
        "mm-gdino-tiny", "detector", "openmmlab-community/mm_grounding_dino_tiny_o365v1_goldg_v3det",
        "MM-Grounding-DINO",
    ),
    ModelName("llmdet-tiny", "detector", "iSEE-Laboratory/llmdet_tiny", "LLMDet (MM-Grounding-DINO)"),
    ModelName("owlv2-base", "detector", "google/owlv2-base-patch16-ensemble", "OWLv2"),
    ModelName("owlv2-large", "detector", "google/owlv2-large-patch14-ensemble", "OWLv2"),
    ModelName("sam-vit-h", "segmenter", "facebook/sam-vit-huge", "SAM"),
    ModelName("sam-vit-b", "segmenter", "facebook/sam-vit-base", "SAM"),
    ModelName("sam-hq-vit-h", "segmenter", "syscv-community/sam-hq-vit-huge", "SAM-HQ"),
    ModelName("sam2.1-large", "segmenter", "facebook/sam2.1-hiera-large", "SAM 2.1"),
    ModelName("sam2.1-tiny", "segmenter", "facebook/sam2.1-hiera-tiny", "SAM 2.1"),
    # a detector that segments too: with it no segmenter is loaded (see iapas.models.sam3)
    ModelName("sam3", "detector", "facebook/sam3", "SAM 3 (detector + segmenter)", gated=True),
)

# The short names of earlier versions, kept working.
ALIASES: dict[str, dict[str, str]] = {
    "detector": {"tiny": "IDEA-Research/grounding-dino-tiny", "base": "IDEA-Research/grounding-dino-base"},
    "segmenter": {
        "huge": "facebook/sam-vit-huge",
        "large": "facebook/sam-vit-large",
        "base": "facebook/sam-vit-base",
    },
}


def names(kind: str) -> dict[str, str]:
    """Every name of ``kind`` (table names and short aliases) -> its hub id."""
    if kind not in ALIASES:
        raise ValueError(f"unknown model kind {kind!r}; expected detector or segmenter")
    table = {m.name: m.hub_id for m in MODEL_NAMES if m.kind == kind}
    return {**table, **ALIASES[kind]}


def resolve(kind: str, name_or_path: str) -> str:
    """The hub id of a name of ``kind``; a hub id or folder is returned as it is."""
    return names(kind).get(name_or_path, name_or_path)


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
