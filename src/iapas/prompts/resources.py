"""Stage-1 options and the models they name, each loaded on first use.

:class:`Stage1Options` says how stage 1 makes a profile (the options of ``iapas profile``, and of
``iapas evaluate`` in mode iapas). :class:`Stage1Models` loads what those options name (image
tagger, Grounding DINO detector, LLM, knowledge vocabulary) when it is first asked for, and keeps
it, so that one set of loaded models serves every category of a run::

    models = Stage1Models(Stage1Options(llm="knowledge"))
    build_profile("bottle", refs, tagger=models.tagger(), detector=models.detector(),
                  llm=models.llm(), knowledge=models.knowledge())

Nothing heavy is imported here: each model's module is imported when that model is loaded.
"""

from __future__ import annotations
from iapas.core.ops import DEFAULT_SIZE_THRESHOLD

import logging
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal, get_args

logger = logging.getLogger(__name__)

TAGGERS = ("clip", "ram", "manual")
LLMS = ("transformers", "openai", "knowledge")
LlmFallback = Literal["auto", "never"]  # what to do when the LLM fails: see Stage1Options
LLM_FALLBACKS: tuple[str, ...] = get_args(LlmFallback)

LoadingHook = Callable[[str], AbstractContextManager[Any]]
"""Called with what is about to be loaded ('tagger', 'detector', 'LLM', 'LLM client',
'knowledge vocabulary'); the load runs inside the returned context (e.g. a spinner)."""


@dataclass
class Stage1Options:
    """How stage 1 makes a profile.

    ``object_tag`` skips tagging and the detector vote (the wrong-tag ablation sets it);
    ``nouns`` skips the LLM. ``llm='knowledge'`` answers from the offline vocabulary. ``tags``
    without a tagger (the default 'clip') means the manual tagger. ``detector`` is the Grounding
    DINO that :class:`Stage1Models` loads when it is given none: 'tiny', 'base', a hub id or a
    folder (None: the default detector). ``prompt_style`` names the LLM's messages ('reference',
    the paper's, or 'inspector'); ``object_join`` how the object tag joins the caption ('phrase'
    or the reference code's 'comma'); ``text_processing`` 'reference' does the tags, object tag,
    reply cleaning and caption as the reference code (:mod:`iapas.prompts.reference_text`). All are part of the profile's cache key. ``llm_fallback``
    'auto' answers from the knowledge vocabulary when the LLM fails (to load, to reply, or with no
    usable noun); 'never' makes any such failure an :class:`~iapas.prompts.llm.LLMError`.
    """

    tagger: str = "clip"
    tagger_model: str | None = None
    top_k: int = 5
    tags: list[str] | None = None
    llm: str = "transformers"
    llm_model: str | None = None
    llm_base_url: str | None = None
    llm_timeout: float = 60.0
    llm_retries: int = 2
    knowledge_file: Path | None = None
    object_tag: str | None = None
    nouns: list[str] | None = None
    include_object_tag: bool = True
    object_join: str = "phrase"  # iapas.core.caption.OBJECT_JOINS: 'comma' is the reference code's
    prompt_style: str = "reference"  # iapas.prompts.llm.PROMPT_STYLES: the LLM's messages
    size_threshold: float = DEFAULT_SIZE_THRESHOLD
    seed: int = 0
    device: str = "auto"
    dtype: str = "auto"
    detector: str | None = None
    llm_fallback: LlmFallback = "auto"
    text_processing: str = "iapas"  # iapas.prompts.reference_text.TEXT_PROCESSINGS: 'reference' is the reference code's

    def __post_init__(self) -> None:
        if self.tags is not None and self.tagger == "clip":
            self.tagger = "manual"
        if self.tagger not in TAGGERS:
            raise ValueError(f"unknown tagger {self.tagger!r}; choose one of {', '.join(TAGGERS)}")
        if self.tagger == "manual" and not self.tags:
            raise ValueError("the manual tagger needs tags (e.g. --tags 'leather, fabric')")
        if self.llm not in LLMS:
            raise ValueError(f"unknown LLM backend {self.llm!r}; choose one of {', '.join(LLMS)}")
        from iapas.core.caption import check_object_join
        from iapas.prompts.llm import check_prompt_style

        from iapas.prompts.reference_text import check_text_processing

        check_object_join(self.object_join)
        check_text_processing(self.text_processing)
        check_prompt_style(self.prompt_style)
        if self.llm_fallback not in LLM_FALLBACKS:
            raise ValueError(f"unknown LLM fallback {self.llm_fallback!r}; choose one of {', '.join(LLM_FALLBACKS)}")

    def settings(self, detector_name: str | None) -> dict[str, Any]:
        """The options as an evaluation records them (in the run's records), with the detector's
        name; the models' defaults are left unresolved. Not a cache key: profiles are keyed by
        :meth:`Stage1Models.input_hash`, the same for ``iapas profile`` and ``iapas evaluate``."""
        data = asdict(self)
        for key in ("device", "dtype", "llm_timeout", "llm_retries", "detector", "llm_fallback"):
            data.pop(key)
        data["knowledge_file"] = str(self.knowledge_file) if self.knowledge_file else None
        data["detector"] = detector_name
        return data


def _as_typed(words: list[str] | None) -> str | None:
    """A word list as the comma-separated text it was typed as ('scratch, crack'), so cache
    keys made from the typed text before stay the same."""
    return None if words is None else ",".join(words)


class Stage1Models:
    """The models ``options`` name, each loaded on first use and kept for the next category.

    ``detector`` is an already loaded Grounding DINO (an evaluation passes its stage-2 one);
    without it, :meth:`detector` loads ``options.detector``. ``loading`` wraps each load (the CLI
    shows a spinner). A caller may build profiles with other options than ``options`` (e.g. only
    the object tag differs, as in the wrong-tag ablation): the models do not depend on those.
    Loading errors of the tagger, detector and knowledge file propagate, and the next call tries
    again. An LLM that cannot be loaded is replaced, with a warning saying what to do, by an
    :class:`~iapas.prompts.llm.UnloadedLLM`: stage 1 then falls back to the knowledge
    vocabulary and records why (and ``iapas profile`` makes such a profile again next time);
    with ``options.llm_fallback`` 'never' the load error is raised instead (and again, without
    a new attempt, on later calls).
    """

    def __init__(self, options: Stage1Options, detector: Any = None, *, loading: LoadingHook | None = None) -> None:
        self.options = options
        self._given_detector = detector
        self._loading = loading
        self._cache: dict[str, Any] = {}
        self._llm_error: str | None = None  # why the LLM could not be loaded (llm_fallback 'never')

    # --- what would be loaded, without loading it ----------------------------------------------

    def tagger_id(self, options: Stage1Options | None = None) -> str | None:
        """The CLIP model (default filled in) or the RAM checkpoint; None for the manual tagger."""
        o = options or self.options
        if o.tagger == "clip":
            from iapas.prompts.tagging import DEFAULT_CLIP

            return o.tagger_model or DEFAULT_CLIP
        if o.tagger == "ram":
            return o.tagger_model
        return None

    def detector_id(self) -> str | None:
        """The given detector's ``name``, or the hub id or folder :meth:`detector` will load."""
        if self._given_detector is not None:
            return self._given_detector.name
        from iapas.models.registry import DEFAULT_DETECTOR, resolve

        return resolve("detector", self.options.detector or DEFAULT_DETECTOR)

    def llm_id(self, options: Stage1Options | None = None) -> str:
        """The transformers chat model (default filled in)."""
        from iapas.prompts.llm import DEFAULT_LLM

        return (options or self.options).llm_model or DEFAULT_LLM

    def settings(self, options: Stage1Options | None = None) -> dict[str, Any]:
        """What decides a profile besides its category and reference files: ``options`` (default:
        this holder's) with the models resolved (defaults filled in, the detector's name, the
        openai model and URL from the environment, the knowledge file's text).

        Raises :class:`iapas.prompts.llm.LLMError` when the openai settings are incomplete and
        ``OSError`` when the knowledge file cannot be read.
        """
        o = options or self.options
        s: dict[str, Any] = {
            "seed": o.seed, "size_threshold": o.size_threshold, "include_object_tag": o.include_object_tag,
            "object_join": o.object_join, "object": o.object_tag, "detector": self.detector_id(),
        }
        if o.text_processing != "iapas":  # absent by default: the keys of earlier profiles stay valid
            s["text_processing"] = o.text_processing
        if not o.object_tag:
            s.update({"tagger": o.tagger, "tagger_model": self.tagger_id(o), "top_k": o.top_k, "tags": _as_typed(o.tags)})
        if o.nouns is not None:
            s["prompts"] = _as_typed(o.nouns)
        else:
            s["llm"] = o.llm
            if o.llm != "knowledge":
                s["prompt_style"] = o.prompt_style
            if o.llm == "transformers":
                s["llm_model"] = self.llm_id(o)
            elif o.llm == "openai":
                from iapas.prompts.llm import resolve_openai_settings

                model, base_url, _ = resolve_openai_settings(o.llm_model, o.llm_base_url)
                s.update({"llm_model": model, "llm_base_url": base_url})
        if o.knowledge_file is not None:
            s["knowledge"] = Path(o.knowledge_file).read_text(encoding="utf-8")
        return s

    def input_hash(self, category: str, references: list[Path], options: Stage1Options | None = None) -> str:
        """The cache key of a profile (``stage1.input_hash``): the category, the reference files
        (names and contents) and :meth:`settings`. ``iapas profile`` and ``iapas evaluate`` both
        use it, so a profile one of them wrote is recognised by the other."""
        from iapas.prompts.stage1 import input_hash

        return input_hash(category, references, self.settings(options))

    # --- the models ------------------------------------------------------------------------------

    def _load(self, key: str, build: Callable[[], Any]) -> Any:
        if key not in self._cache:
            with self._loading(key) if self._loading is not None else nullcontext():
                self._cache[key] = build()
            logger.debug("stage 1: loaded the %s", key)
        return self._cache[key]

    def tagger(self) -> Any:
        """The image tagger (:mod:`iapas.prompts.tagging`): CLIP, RAM or the given tags."""
        o = self.options
        if o.tagger == "manual":
            from iapas.prompts.tagging import ManualTagger

            return self._load("tagger", lambda: ManualTagger(o.tags or []))
        if o.tagger == "ram":
            from iapas.prompts.tagging import RamTagger

            return self._load("tagger", lambda: RamTagger.from_checkpoint(o.tagger_model, device=o.device))
        from iapas.prompts.tagging import ClipTagger

        return self._load(
            "tagger", lambda: ClipTagger.from_pretrained(self.tagger_id(), device=o.device, dtype=o.dtype, top_k=o.top_k)
        )

    def detector(self) -> Any:
        """The detector given at construction, else ``options.detector`` loaded."""
        if self._given_detector is not None:
            return self._given_detector
        from iapas.models.factory import load_detector

        o = self.options
        return self._load("detector", lambda: load_detector(self.detector_id(), o.device, o.dtype))

    def llm(self) -> Any:
        """The LLM, or None when the nouns are given or come from the knowledge vocabulary."""
        o = self.options
        if o.nouns is not None or o.llm == "knowledge":
            return None
        from iapas.prompts.llm import OpenAILLM, TransformersLLM

        if o.llm == "openai":
            key, model_id = "LLM client", o.llm_model or "openai"
            build: Callable[[], Any] = lambda: OpenAILLM(
                o.llm_model, base_url=o.llm_base_url, timeout=o.llm_timeout, max_retries=o.llm_retries
            )
        else:
            key, model_id = "LLM", self.llm_id()
            build = lambda: TransformersLLM.from_pretrained(model_id, device=o.device, dtype=o.dtype)  # noqa: E731
        from iapas.prompts.llm import LLMError, UnloadedLLM, load_failure_hint

        if self._llm_error is not None:
            raise LLMError(self._llm_error)
        try:
            return self._load(key, build)
        except Exception as exc:  # noqa: BLE001 - the knowledge vocabulary is the fallback whenever an LLM fails
            error = str(exc).removeprefix("LLM: ") or type(exc).__name__
            if o.llm_fallback == "never":
                self._llm_error = (
                    f"could not load the LLM {model_id}: {error}. To fix it: {load_failure_hint(o.llm, model_id, error)} "
                    "(--llm-fallback never: no knowledge-vocabulary fallback)"
                )
                raise LLMError(self._llm_error) from None
            logger.warning(
                "could not load the LLM %s: %s. To fix it: %s. Using the knowledge vocabulary instead "
                "(the profile records it)", model_id, error, load_failure_hint(o.llm, model_id, error),
            )
            self._cache[key] = UnloadedLLM(o.llm, model_id, error)
            return self._cache[key]

    def knowledge(self) -> Any:
        """The knowledge vocabulary: ``options.knowledge_file``, else the built-in one."""
        from iapas.prompts.knowledge import Knowledge

        return self._load("knowledge vocabulary", lambda: Knowledge.load(self.options.knowledge_file))
