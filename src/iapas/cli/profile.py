"""``iapas profile``: write a category profile (stage 1)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import typer

from iapas.cli.common import QuietOption, VerboseOption, category_names, console, fail, print_error, setup_logging
from iapas.cli.options import option
from iapas.workflows.options import OPTIONS
from iapas.models.registry import DEFAULT_DETECTOR, family_list, help_table
from iapas.prompts.resources import LlmFallback
from iapas.core.ops import DEFAULT_SIZE_THRESHOLD

logger = logging.getLogger(__name__)


def register(app: typer.Typer) -> None:
    app.command("profile", epilog=help_table("detector"))(profile_cmd)


OutOpt = typer.Option(
    ..., "--out", "-o", help="Profile file to write (.yaml, .yml or .json); with --dataset, a folder for CATEGORY.yaml files."
)
ReferenceOpt = typer.Option(
    None, "--reference", "-r",
    help="Normal images of the product: files, folders (searched recursively) or glob patterns. Repeat the option for several.",
)
CategoriesOpt = typer.Option(None, "--categories", help="With --dataset: only these categories (comma separated or repeated).")
TaggerOpt = typer.Option(
    None, "--tagger", help="Image tagger: clip (default), ram (needs recognize-anything and --tagger-model CHECKPOINT) or manual (--tags)."
)
TaggerModelOpt = typer.Option(
    None, "--tagger-model", help="CLIP hub id or folder (default openai/clip-vit-large-patch14); for ram, the checkpoint file."
)
ObjectTagOpt = typer.Option(None, "--object", help="The object tag by hand, e.g. 'bottle': skips tagging and the detector vote.")
DetectorOpt = typer.Option(
    None, "--detector", help=f"{family_list('detector')} (which segments too): a model name (table below), a hub id or a folder (default {DEFAULT_DETECTOR})."
)
LlmOpt = typer.Option(
    "transformers", "--llm", help="Anomaly nouns from: transformers (local chat model), openai (compatible HTTP endpoint) or knowledge (offline vocabulary)."
)
LlmModelOpt = typer.Option(
    None, "--llm-model", help="transformers: hub id or folder (default meta-llama/Meta-Llama-3-8B-Instruct); openai: model name (or IAPAS_LLM_MODEL)."
)
LlmBaseUrlOpt = typer.Option(
    None, "--llm-base-url", help="openai: server URL, e.g. http://localhost:11434/v1 (or IAPAS_LLM_BASE_URL / OPENAI_BASE_URL)."
)
LlmFallbackOpt = typer.Option(
    "auto", "--llm-fallback",
    help="auto: when the LLM fails (to load, to reply, or with no usable noun) use the knowledge vocabulary; "
    "never: fail instead (exit 1), for batch jobs that need the LLM's nouns.",
)
PromptsOpt = typer.Option(
    None, "--prompts",
    help="Anomaly nouns by hand, comma separated, e.g. 'scratch, crack, hole' (skips the LLM). 'abnormal' and 'defect' are always added.",
)
SizeThresholdOpt = typer.Option(
    DEFAULT_SIZE_THRESHOLD, help="Keep a box only if its area is below this fraction of the object's area (the paper's 0.8)."
)
ObjectInCaptionOpt = typer.Option(
    True, "--object-in-caption/--no-object-in-caption", help="Append the object tag to the caption (as the reference code does)."
)
ObjectJoinOpt = typer.Option(
    "phrase", "--object-join",
    help="How the object tag joins the caption: phrase (its own phrase, 'defect . bottle .') or comma (the reference "
    "code's: one phrase with the last word, 'defect, bottle .').",
)
PromptStyleOpt = typer.Option(
    "reference", "--prompt-style",
    help="The LLM's messages: reference (the paper's reference code's, word for word) or inspector (iapas's own wording).",
)
ForceOpt = typer.Option(
    False, "--force",
    help="Make the profile again and overwrite the file, whether it was made from other inputs or from the same "
    "ones (hand edits to it are lost).",
)


def profile_cmd(
    category: str = typer.Option(None, "--category", "-c", help="Name of the product category, e.g. 'bottle'."),
    out: Path = OutOpt,
    reference: list[str] = ReferenceOpt,
    references: int = typer.Option(10, "--references", "-n", min=1, help="How many reference images to draw (with --seed)."),
    seed: int = typer.Option(0, "--seed", help="Seed for drawing the references and for LLM sampling."),
    dataset: str = typer.Option(None, "--dataset", help="Make the profile of every category of a dataset (e.g. mvtec), with --root."),
    root: Path = typer.Option(None, "--root", help="The dataset's folder (with --dataset)."),
    categories: list[str] = CategoriesOpt,
    tagger: str = TaggerOpt,
    tagger_model: str = TaggerModelOpt,
    top_k: int = typer.Option(5, "--top-k", min=1, help="CLIP tagger: tags kept per reference image."),
    tags: str = typer.Option(None, "--tags", help="Tags by hand, comma separated, e.g. 'leather, fabric' (implies --tagger manual)."),
    object_tag: str = ObjectTagOpt,
    detector: str = DetectorOpt,
    llm: str = LlmOpt,
    llm_model: str = LlmModelOpt,
    llm_base_url: str = LlmBaseUrlOpt,
    llm_timeout: float = typer.Option(60.0, "--llm-timeout", min=0.001, help="openai: seconds per request."),
    llm_retries: int = typer.Option(2, "--llm-retries", min=0, help="openai: retries after errors and time-outs."),
    llm_fallback: LlmFallback = LlmFallbackOpt,
    knowledge_file: Path = typer.Option(None, "--knowledge", help="A knowledge YAML to use instead of the built-in vocabulary."),
    prompts: str = PromptsOpt,
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:N or mps."),
    dtype: str = typer.Option("auto", "--dtype", help="auto, float32, float16 or bfloat16 (auto: the LLM in bf16 on GPU)."),
    size_threshold: float = SizeThresholdOpt,
    object_in_caption: bool = ObjectInCaptionOpt,
    object_join: str = ObjectJoinOpt,
    prompt_style: str = PromptStyleOpt,
    text_processing: str = option(OPTIONS["text_processing"]),
    force: bool = ForceOpt,
    verbose: bool = VerboseOption,
    quiet: bool = QuietOption,
) -> None:
    """Write a per-category profile: object tag, detector caption and size threshold (stage 1).

    From reference images (tagger -> detector vote -> LLM nouns):
    iapas profile -c bottle -r data/bottle/train/good --out bottle.yaml

    Offline, no LLM: add --llm knowledge. Every category of a dataset:
    iapas profile --dataset mvtec --root data/mvtec --out profiles/

    By hand: iapas profile -c bottle --object bottle --prompts "scratch, crack" --out bottle.yaml

    The file is YAML (or JSON) meant to be read and edited; 'iapas segment' uses its caption as
    written. Re-running with the same inputs keeps the file (and your edits), unless its nouns
    came from the knowledge vocabulary because the LLM failed: then it is made again. Other
    inputs need --force.
    """
    setup_logging(verbose, quiet)
    from iapas.core.names import BadNameError, check_name
    from iapas.workflows import profile as workflow

    try:  # the category becomes file names (a --dataset's CATEGORY.yaml, a station's STORE/CATEGORY/)
        category = None if category is None else check_name(category, "--category")
        categories = category_names(categories, "--categories")
        opts = workflow.profile_options(
            tagger, tags, llm, prompts, tagger_model=tagger_model, top_k=top_k, llm_model=llm_model,
            llm_base_url=llm_base_url, llm_timeout=llm_timeout, llm_retries=llm_retries, knowledge_file=knowledge_file,
            object_tag=object_tag, include_object_tag=object_in_caption, object_join=object_join,
            prompt_style=prompt_style, size_threshold=size_threshold, seed=seed, device=device, dtype=dtype,
            detector=detector, llm_fallback=llm_fallback, text_processing=text_processing,
        )
        job = workflow.ProfileJob(
            references=references, force=force, say=_say, error=print_error,
            progress=lambda name: _progress(quiet, name), loading=lambda what: console.status(f"loading the {what}"),
        )
        statuses = [_run(workflow, category, reference, dataset, root, categories, out, opts, job)]
        if dataset is not None:
            statuses = list(workflow.dataset_profiles(dataset, root, categories or [], out, opts, job).values())
    except (BadNameError, workflow.ProfileJobError) as exc:
        raise fail(str(exc), getattr(exc, "code", 2)) from None
    if "conflict" in statuses:
        raise typer.Exit(2)


def _run(workflow: Any, category: str | None, reference: list[str] | None, dataset: str | None, root: Path | None,
         categories: list[str], out: Path, opts: Any, job: Any) -> str:
    """One profile from references or by hand; 'dataset' when --dataset asks for every category."""
    if dataset is not None:
        if reference:
            raise workflow.ProfileJobError("give either --dataset/--root or --reference, not both")
        return "dataset"
    if not category:
        raise workflow.ProfileJobError("give --category NAME (or --dataset NAME --root DIR for every category of a dataset)")
    if reference:
        return workflow.profile_from_references(category, list(reference), out, opts, job)
    if opts.object_tag and opts.nouns is not None:
        return workflow.hand_profile(category, out, opts, job)
    raise workflow.ProfileJobError(
        "give --reference DIR (normal images of the product) to run stage 1, or --object TAG and "
        "--prompts 'noun, noun' to write a profile by hand"
    )


def _say(message: str) -> None:
    """One unwrapped plain-text line (captions and LLM replies may hold '[' and must not be markup)."""
    console.print(message, markup=False, highlight=False, soft_wrap=True)


class _progress:
    """A rich progress bar per stage-1 step (reading, tagging, detecting) over the references."""

    def __init__(self, quiet: bool, category: str) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.category = category
        self.progress = Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            console=console, disable=quiet, transient=False,
        )
        self.tasks: dict[str, Any] = {}

    def __enter__(self) -> Any:
        self.progress.__enter__()

        def update(stage: str, done: int, total: int) -> None:
            if stage not in self.tasks:
                self.tasks[stage] = self.progress.add_task(f"{self.category}: {stage}", total=total)
            self.progress.update(self.tasks[stage], completed=done)

        return update

    def __exit__(self, *exc: Any) -> None:
        self.progress.__exit__(*exc)
