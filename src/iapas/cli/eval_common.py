"""What ``iapas evaluate`` and ``iapas bench`` share: their common options, settings and model
loading with one-line errors, the progress bars, and the library's errors mapped to exit codes.

Exit codes (both commands): 1 some image or category failed or the disk filled up (the run stops
early and says how to resume), 2 bad options, 130 interrupted (run the same command again to resume).
"""

from __future__ import annotations

import math
from typing import Any

import typer

from iapas.cli.common import console, fail, load_pipeline, print_stopped
from iapas.prompts.resources import LlmFallback
from iapas.workflows.options import PROTOCOL, STAGE2

# --- options of both commands: the shared table's rows (iapas.workflows.options) as they word them, then their own

#: The table's rows both commands take (evaluate adds the engine's).
SHARED = (
    "size_threshold", "references", "seed", *STAGE2, "batch_size", "box_threshold", "text_threshold", "fuse_object_detection",
    "tagger", "tagger_model", "top_k", "tags", "llm", "llm_model", "llm_base_url", "llm_timeout", "llm_retries",
    "llm_fallback", "knowledge_file", "object_in_caption", "restart", "max_pixels", *PROTOCOL,
)
#: Where their wording or default differs from the table's.
CHANGES: dict[str, dict[str, object]] = {
    "size_threshold": {"help": "Keep boxes below this fraction of the object's area (default: each profile's, 0.8)."},
    "device": {"help": "cpu, cuda, cuda:N, mps, or auto."},
    "dtype": {
        "default": None, "show_default": False,
        "help": "Detector and SAM precision: float32 (the default: the reference code's), float16, bfloat16 or auto "
        "(float16 on GPU). Stage 1's models use it too when given, else auto.",
    },
    "batch_size": {"help": "Images per model forward."},
    "fuse_object_detection": {"help": "Take the object box from the caption's forward (one detector forward; not the paper's method)."},
    "llm_fallback": {"type": LlmFallback},
    "restart": {"help": "Discard the predictions already in the output folder (profiles are kept)."},
    "max_pixels": {"help": "Refuse images with more pixels (decompression-bomb guard)."},
}



def _config(
    detector: str, segmenter: str, device: str, dtype: str, mode: str, box_threshold: float, text_threshold: float, fuse: bool
) -> Any:
    """The stage-2 settings of an evaluation, or a one-line failure (exit 2)."""
    from iapas.pipeline.stage2 import PipelineConfig

    try:
        return PipelineConfig(
            detector=detector, segmenter=segmenter, device=device, dtype=dtype, mode=mode,  # type: ignore[arg-type]
            box_threshold=box_threshold, text_threshold=text_threshold, fuse_object_detection=fuse,
        )
    except ValueError as exc:
        raise fail(str(exc)) from None


def _pipeline(*args: Any) -> Any:
    """The stage-2 pipeline of :func:`_config` behind a spinner (:func:`iapas.cli.common.load_pipeline`)."""
    return load_pipeline(_config(*args))


def _prepare(options: dict[str, Any]) -> Any:
    """:func:`iapas.workflows.evaluate.prepare`, a bad value a one-line failure (exit 2)."""
    from iapas.workflows.evaluate import prepare

    try:
        return prepare(options)
    except ValueError as exc:
        raise fail(str(exc)) from None


def _columns() -> tuple[Any, ...]:
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    return TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn()


class _Bars:
    """Progress per category (and per stage-1 step while a profile is made): rich bars on a
    terminal, log lines elsewhere (:class:`iapas.cli.progress.RunProgress`)."""

    def __init__(self, quiet: bool) -> None:
        from iapas.cli.progress import RunProgress

        self.progress = RunProgress(console, quiet, _columns)
        self.tasks: dict[str, Any] = {}
        self.prefix = ""

    def hooks(self) -> Any:
        from iapas.evaluation import ProgressHooks

        return ProgressHooks(on_category=self.on_category, on_image=self.on_image, on_stage1=self.on_stage1)

    def on_category(self, name: str, total: int) -> None:
        self.tasks[name] = self.progress.add_task(f"{self.prefix}{name}", total=total)

    def on_image(self, name: str, key: str, status: str) -> None:
        if name in self.tasks:
            self.progress.advance(self.tasks[name], status)

    def on_stage1(self, name: str, step: str, done: int, total: int) -> None:
        key = f"{name}:{step}"
        if key not in self.tasks:
            self.tasks[key] = self.progress.add_task(f"{self.prefix}{name} (stage 1: {step})", total=total)
        self.progress.update(self.tasks[key], completed=done)

    def __enter__(self) -> _Bars:
        self.progress.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.progress.__exit__(*exc)


def _fmt(value: float | None) -> str:
    return "-" if value is None or not math.isfinite(value) else f"{100 * value:.2f}"


def print_fallback(fell_back: dict[str, str]) -> None:
    """One line naming the categories whose anomaly nouns came from the knowledge fallback, and why."""
    if fell_back:
        console.print(
            f"LLM fallback: the anomaly nouns of {', '.join(fell_back)} come from the knowledge vocabulary, not the LLM, "
            f"because {next(iter(fell_back.values()))}", markup=False, highlight=False, soft_wrap=True,
        )


def _run_guarded(fn: Any) -> Any:
    """Run ``fn``; map the library's errors to one-line messages and exit codes."""
    from iapas.data import DatasetError
    from iapas.engine import EngineError
    from iapas.evaluation import RunConflictError
    from iapas.models.loading import ModelLoadError
    from iapas.product.profile import ProfileError
    from iapas.prompts.knowledge import KnowledgeError
    from iapas.prompts.llm import LLMError
    from iapas.prompts.tagging import TaggerError

    try:
        return fn()
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/]: finished images are saved; run the same command again to resume")
        raise typer.Exit(130) from None
    except (RunConflictError, DatasetError, ModelLoadError, TaggerError, LLMError, KnowledgeError, ProfileError, EngineError) as exc:
        raise fail(str(exc)) from None
    except ValueError as exc:
        raise fail(str(exc)) from None
    except OSError as exc:
        from iapas.core.storage import is_disk_full, stop_reason

        if not is_disk_full(exc):
            raise fail(str(exc)) from None
        print_stopped(stop_reason(exc), "the run did not finish")  # e.g. while a profile was written
        raise typer.Exit(1) from None

