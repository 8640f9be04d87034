"""The bench's columns: the default evaluation and the paper's ablations, each a :class:`Variant`.

A :class:`Variant` says how one column differs from the default evaluation (its settings, its
stage-1 profiles folder, its stage-2 models); :func:`ablation_variants` turns the ``--ablation``
names into the columns. :mod:`~iapas.evaluation.bench` runs them.

Variants (``default`` is always run, first):

=============  =====================================================================================
ablation       variants
=============  =====================================================================================
references     ``references-1``: stage 1 from 1 reference image instead of 10
prompt         ``prompt-fixed``: the fixed caption instead of the LLM's, with the object tag and the
               size filter kept (only the prompt changes); under the paper protocol the reference
               code's one phrase 'defect, abnormal.' (test_ablation.py), else 'defect . abnormal .'
size-filter    ``size-filter-off``: every box kept
size-sweep     ``size-0.5`` ... ``size-1.5``: size thresholds (the default column is 0.8)
wrong-tag      ``wrong-tag``: stage 1 run with each category's object tag replaced by another
               category's (never the category itself or its true tag; else an unrelated everyday
               object such as 'banana'), to see how gracefully it fails
prompt-style   ``prompt-inspector`` (or ``prompt-reference`` when the default column uses the
               inspector style): stage 1 asks the LLM with the other prompt style's messages
prompt-        ``prompt-transfer``: each category segmented with the stage-1 profile (object tag,
transfer       object size, caption) of every other category, reported as a matrix (rows: the
               category segmented, columns: whose profile) next to the own-profile column; on
               MVTec AD over textures and objects (carpet, leather, bottle, screw) where present
detector=NAME  ``detector-<name>``: stage 2 with another detector (a table name of
               :mod:`iapas.models.registry`, a hub id or a folder), the default column's profiles
segmenter=     ``segmenter-<name>``: the same with another segmenter; both are repeatable, each
NAME           model loaded once for every dataset and recorded by its resolved id
=============  =====================================================================================
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from iapas.evaluation.settings import EvalSettings
from iapas.core.caption import fixed_caption
from iapas.prompts.llm import DEFAULT_PROMPT_STYLE, PROMPT_STYLES
from iapas.core.ops import DEFAULT_SIZE_THRESHOLD

ABLATIONS: tuple[str, ...] = (
    "references", "prompt", "size-filter", "size-sweep", "wrong-tag", "prompt-style", "prompt-transfer"
)
# ``--ablation detector=NAME`` / ``segmenter=NAME``: a column per model, the rest as the default's
MODEL_ABLATIONS: tuple[str, ...] = ("detector", "segmenter")
SIZE_SWEEP: tuple[float, ...] = tuple(round(0.5 + 0.1 * i, 1) for i in range(11))  # 0.5, 0.6, ..., 1.5


@dataclass(frozen=True)
class Variant:
    """One column of the bench: how it differs from the default evaluation."""

    name: str  # folder name
    label: str  # column label
    n_references: int | None = None
    caption: str | None = None
    size_filter: bool = True
    size_threshold: float | None = None
    wrong_tag: bool = False
    prompt_style: str | None = None  # stage 1's LLM prompt style, when not the default column's
    transfer: bool = False
    detector: str | None = None  # stage 2's detector (resolved hub id or folder), when not the default's
    segmenter: str | None = None  # stage 2's segmenter, when not the default's

    def settings(self, base: EvalSettings) -> EvalSettings:
        return replace(
            base,
            n_references=self.n_references if self.n_references is not None else base.n_references,
            caption=self.caption if self.caption is not None else base.caption,
            size_filter=self.size_filter and base.size_filter,
            size_threshold=self.size_threshold if self.size_threshold is not None else base.size_threshold,
        )

    def profiles_dir_name(self) -> str:
        if self.wrong_tag:
            return "profiles-wrong-tag"
        if self.prompt_style is not None:
            return f"profiles-prompt-{self.prompt_style}"
        if self.n_references is not None:
            return f"profiles-references-{self.n_references}"
        return "profiles"


DEFAULT_VARIANT = Variant("default", "IAP-AS")


def is_ablation(ablation: str) -> bool:
    """Whether ``ablation`` is one of :data:`ABLATIONS` or ``detector=NAME`` / ``segmenter=NAME``."""
    kind, sep, value = ablation.partition("=")
    return ablation in ABLATIONS or (bool(sep) and kind in MODEL_ABLATIONS and bool(value.strip()))


def _model_variant(kind: str, value: str, taken: set[str]) -> Variant:
    """The column of ``--ablation kind=value``: its model by resolved id, its folder and label by
    the name typed (a folder's or hub id's last part), made unique among ``taken``."""
    from iapas.models.registry import resolve

    value = value.strip()
    resolved = resolve(kind, value)
    short = re.sub(r"[^A-Za-z0-9._-]+", "-", Path(value.rstrip("/\\")).name or value).strip("-.") or kind
    name, i = f"{kind}-{short}", 2
    while name in taken:
        name, i = f"{kind}-{short}-{i}", i + 1
    return Variant(name, f"{kind} {short}" + (f" ({i - 1})" if i > 2 else ""), **{kind: resolved})


def ablation_variants(
    ablations: Sequence[str], base: EvalSettings, sizes: Sequence[float] = SIZE_SWEEP, *,
    prompt_style: str = DEFAULT_PROMPT_STYLE,
) -> list[Variant]:
    """The variants of ``ablations`` (see the module docstring), the default first;
    ``prompt_style`` is the default column's (the prompt-style variant takes the other one)."""
    unknown = [a for a in ablations if not is_ablation(a)]
    if unknown:
        raise ValueError(
            f"unknown ablation {', '.join(unknown)}; choose from {', '.join(ABLATIONS)}, detector=NAME or segmenter=NAME"
        )
    if ablations and base.mode != "iapas":
        raise ValueError("the ablations vary IAP-AS (profiles, prompt, size filter): use mode 'iapas'")
    variants = [DEFAULT_VARIANT]
    default_size = base.size_threshold if base.size_threshold is not None else DEFAULT_SIZE_THRESHOLD
    for ablation in dict.fromkeys(ablations):
        if ablation == "references":
            one = 1 if base.n_references != 1 else 10
            variants.append(Variant(f"references-{one}", f"{one} reference{'s' if one > 1 else ''}", n_references=one))
        elif ablation == "prompt":
            variants.append(Variant("prompt-fixed", "fixed prompt", caption=fixed_caption(base.protocol)))
        elif ablation == "size-filter":
            variants.append(Variant("size-filter-off", "no size filter", size_filter=False))
        elif ablation == "size-sweep":
            for t in sizes:
                if not t > 0:
                    raise ValueError(f"size thresholds must be > 0, got {t}")
                if math.isclose(t, default_size):
                    continue  # the default column
                variants.append(Variant(f"size-{t:g}", f"size {t:g}", size_threshold=float(t)))
        elif ablation == "wrong-tag":
            variants.append(Variant("wrong-tag", "wrong object tag", wrong_tag=True))
        elif ablation == "prompt-style":
            other = next(s for s in PROMPT_STYLES if s != prompt_style)
            variants.append(Variant(f"prompt-{other}", f"{other} prompt", prompt_style=other))
        elif ablation == "prompt-transfer":
            variants.append(Variant("prompt-transfer", "other categories' profiles", transfer=True))
        else:  # detector=NAME, segmenter=NAME
            kind, _, value = ablation.partition("=")
            variants.append(_model_variant(kind, value, {v.name for v in variants}))
    return variants
