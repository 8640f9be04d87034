"""``iapas profile``: write a category profile (stage 1)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import typer

from iapas.cli.common import QuietOption, VerboseOption, category_names, console, fail, print_error, setup_logging
from iapas.cli.eval_common import TextProcessingOpt
from iapas.models.registry import help_table
from iapas.prompts.resources import LLMS, TAGGERS, LlmFallback, Stage1Models, Stage1Options

logger = logging.getLogger(__name__)


def register(app: typer.Typer) -> None:
    app.command("profile", epilog=help_table("detector"))(profile_cmd)


def profile_cmd(
    category: str = typer.Option(None, "--category", "-c", help="Name of the product category, e.g. 'bottle'."),
    out: Path = typer.Option(
        ..., "--out", "-o", help="Profile file to write (.yaml, .yml or .json); with --dataset, a folder for CATEGORY.yaml files."
    ),
    reference: list[str] = typer.Option(
        None,
        "--reference",
        "-r",
        help="Normal images of the product: files, folders (searched recursively) or glob patterns. Repeat the option for several.",
    ),
    references: int = typer.Option(10, "--references", "-n", min=1, help="How many reference images to draw (with --seed)."),
    seed: int = typer.Option(0, "--seed", help="Seed for drawing the references and for LLM sampling."),
    dataset: str = typer.Option(None, "--dataset", help="Make the profile of every category of a dataset (e.g. mvtec), with --root."),
    root: Path = typer.Option(None, "--root", help="The dataset's folder (with --dataset)."),
    categories: list[str] = typer.Option(
        None, "--categories", help="With --dataset: only these categories (comma separated or repeated)."
    ),
    tagger: str = typer.Option(
        None, "--tagger", help="Image tagger: clip (default), ram (needs recognize-anything and --tagger-model CHECKPOINT) or manual (--tags)."
    ),
    tagger_model: str = typer.Option(
        None, "--tagger-model", help="CLIP hub id or folder (default openai/clip-vit-large-patch14); for ram, the checkpoint file."
    ),
    top_k: int = typer.Option(5, "--top-k", min=1, help="CLIP tagger: tags kept per reference image."),
    tags: str = typer.Option(None, "--tags", help="Tags by hand, comma separated, e.g. 'leather, fabric' (implies --tagger manual)."),
    object_tag: str = typer.Option(
        None, "--object", help="The object tag by hand, e.g. 'bottle': skips tagging and the detector vote."
    ),
    detector: str = typer.Option(
        None, "--detector", help="Grounding DINO, MM-Grounding-DINO, OWLv2 or SAM 3 (which segments too): a model name (table below), a hub id or a folder (default IDEA-Research/grounding-dino-tiny)."
    ),
    llm: str = typer.Option(
        "transformers", "--llm", help="Anomaly nouns from: transformers (local chat model), openai (compatible HTTP endpoint) or knowledge (offline vocabulary)."
    ),
    llm_model: str = typer.Option(
        None, "--llm-model", help="transformers: hub id or folder (default meta-llama/Meta-Llama-3-8B-Instruct); openai: model name (or IAPAS_LLM_MODEL)."
    ),
    llm_base_url: str = typer.Option(
        None, "--llm-base-url", help="openai: server URL, e.g. http://localhost:11434/v1 (or IAPAS_LLM_BASE_URL / OPENAI_BASE_URL)."
    ),
    llm_timeout: float = typer.Option(60.0, "--llm-timeout", min=0.001, help="openai: seconds per request."),
    llm_retries: int = typer.Option(2, "--llm-retries", min=0, help="openai: retries after errors and time-outs."),
    llm_fallback: LlmFallback = typer.Option(
        "auto", "--llm-fallback",
        help="auto: when the LLM fails (to load, to reply, or with no usable noun) use the knowledge vocabulary; "
        "never: fail instead (exit 1), for batch jobs that need the LLM's nouns.",
    ),
    knowledge_file: Path = typer.Option(None, "--knowledge", help="A knowledge YAML to use instead of the built-in vocabulary."),
    prompts: str = typer.Option(
        None,
        "--prompts",
        help="Anomaly nouns by hand, comma separated, e.g. 'scratch, crack, hole' (skips the LLM). 'abnormal' and 'defect' are always added.",
    ),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:N or mps."),
    dtype: str = typer.Option("auto", "--dtype", help="auto, float32, float16 or bfloat16 (auto: the LLM in bf16 on GPU)."),
    size_threshold: float = typer.Option(
        0.8, help="Keep a box only if its area is below this fraction of the object's area (the paper's 0.8)."
    ),
    object_in_caption: bool = typer.Option(
        True, "--object-in-caption/--no-object-in-caption", help="Append the object tag to the caption (as the reference code does)."
    ),
    object_join: str = typer.Option(
        "phrase", "--object-join",
        help="How the object tag joins the caption: phrase (its own phrase, 'defect . bottle .') or comma (the reference "
        "code's: one phrase with the last word, 'defect, bottle .').",
    ),
    prompt_style: str = typer.Option(
        "reference", "--prompt-style",
        help="The LLM's messages: reference (the paper's reference code's, word for word) or inspector (iapas's own wording).",
    ),
    text_processing: str = TextProcessingOpt,
    force: bool = typer.Option(
        False,
        "--force",
        help="Make the profile again and overwrite the file, whether it was made from other inputs or from the same "
        "ones (hand edits to it are lost).",
    ),
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

    try:  # the category becomes file names (a --dataset's CATEGORY.yaml, a station's STORE/CATEGORY/)
        category = None if category is None else check_name(category, "--category")
    except BadNameError as exc:
        raise fail(str(exc)) from None
    categories = category_names(categories, "--categories")
    if tags is not None and tagger not in (None, "manual"):
        raise fail(f"--tags gives the tags by hand (the manual tagger); it cannot go with --tagger {tagger}")
    if tags is not None:
        tagger = "manual"
    tagger = tagger or "clip"
    if tagger not in TAGGERS:
        raise fail(f"unknown --tagger {tagger!r}; choose one of {', '.join(TAGGERS)}")
    if tagger == "manual" and not tags:
        raise fail("--tagger manual needs --tags 'tag, tag'")
    if llm not in LLMS:
        raise fail(f"unknown --llm {llm!r}; choose one of {', '.join(LLMS)}")
    from iapas.core.caption import split_word_list

    try:
        opts = Stage1Options(
            tagger=tagger, tagger_model=tagger_model, top_k=top_k,
            tags=split_word_list(tags) if tagger == "manual" else None,
            llm=llm, llm_model=llm_model, llm_base_url=llm_base_url, llm_timeout=llm_timeout, llm_retries=llm_retries,
            knowledge_file=knowledge_file, object_tag=object_tag,
            nouns=split_word_list(prompts) if prompts is not None else None,
            include_object_tag=object_in_caption, object_join=object_join, prompt_style=prompt_style,
            size_threshold=size_threshold, seed=seed, device=device, dtype=dtype, detector=detector,
            llm_fallback=llm_fallback, text_processing=text_processing,
        )
    except ValueError as exc:
        raise fail(str(exc)) from None
    run = _Run(references=references, force=force, quiet=quiet)
    if dataset is not None:
        if reference:
            raise fail("give either --dataset/--root or --reference, not both")
        _dataset_mode(dataset, root, categories or [], out, opts, run)
        return
    if not category:
        raise fail("give --category NAME (or --dataset NAME --root DIR for every category of a dataset)")
    if not reference:
        if object_tag and prompts is not None:
            _hand_mode(category, out, opts, run)
            return
        raise fail(
            "give --reference DIR (normal images of the product) to run stage 1, or --object TAG and "
            "--prompts 'noun, noun' to write a profile by hand"
        )
    from iapas.data.search import mask_rule, search_images
    from iapas.prompts.stage1 import Stage1Error, select_references

    search = search_images(list(reference))  # leaves out the masks of folders (and says so)
    paths = search.paths
    for problem in search.problems:
        _say(f"warning: {problem}")
    dataset_like = _dataset_like(list(reference), paths + [m for m, _ in search.masks])
    if dataset_like:
        raise fail(dataset_like)
    masks = [p for p in paths if mask_rule(p)]  # named one by one: still not references
    if masks:
        _say(f"warning: left out {len(masks)} mask image(s) ({mask_rule(masks[0])}, e.g. {masks[0]}): masks are not reference images")
        paths = [p for p in paths if not mask_rule(p)]
    if not paths:
        raise fail("no reference images found in " + ", ".join(reference))
    if references > len(paths):
        _say(f"warning: --references {references} asked for, but only {len(paths)} image(s) found; using all of them")
    try:
        chosen = select_references(paths, references, seed)
    except Stage1Error as exc:
        raise fail(str(exc)) from None
    models = _models(opts)
    status = _make_one(category, chosen, out, opts, run, models)
    if status == "conflict":
        raise typer.Exit(2)


def _dataset_like(inputs: list[str], paths: list[Path]) -> str | None:
    """An error message when a reference folder is a dataset's category (or root) folder, whose
    defect images and masks would be drawn as 'normal' references; else None.

    A folder given with -r that is, or holds, a ``ground_truth`` folder or a ``test`` folder with
    a subfolder other than ``good`` (with images found there) is taken as such.
    """
    for item in inputs:
        folder = Path(item).expanduser()
        if not folder.is_dir():
            continue
        base = folder.absolute().parent
        for path in paths:
            try:
                parts = path.absolute().relative_to(base).parts[:-1]  # starts with the folder's own name
            except ValueError:
                continue
            hit = next(
                (i for i, part in enumerate(parts)
                 if part == "ground_truth" or (part == "test" and i + 1 < len(parts) and parts[i + 1] != "good")),
                None,
            )
            if hit is None:
                continue
            category = base.joinpath(*parts[:hit])
            what = "ground_truth/" if parts[hit] == "ground_truth" else f"test/{parts[hit + 1]}/"
            return (
                f"{folder} looks like a dataset folder ({category} has {what}): its defect images and masks are not "
                f"normal references. Give its normal images, e.g. -r {category / 'train' / 'good'}, or use the "
                f"dataset's own split: --dataset NAME --root {category.parent} --categories {category.name} (NAME e.g. mvtec)"
            )
    return None


def _say(message: str) -> None:
    """One unwrapped plain-text line (captions and LLM replies may hold '[' and must not be markup)."""
    console.print(message, markup=False, highlight=False, soft_wrap=True)


@dataclass(frozen=True)
class _Run:
    """What the command does besides stage 1: how many references to draw, overwrite, quiet."""

    references: int
    force: bool
    quiet: bool


def _models(opts: Stage1Options) -> Stage1Models:
    """The stage-1 models, shared across categories, with a spinner while each one loads."""
    return Stage1Models(opts, loading=lambda what: console.status(f"loading the {what}"))


def _hand_mode(category: str, out: Path, opts: Stage1Options, run: _Run) -> None:
    """The profile from --object and --prompts alone: no model is loaded."""
    from iapas.core.version import __version__
    from iapas.product.profile import Profile, ProfileError
    from iapas.prompts.stage1 import input_hash

    nouns = opts.nouns or []
    prompts = ",".join(nouns)  # the --prompts text as typed, as Stage1Models.settings records it
    settings = {
        "mode": "manual", "object": opts.object_tag, "prompts": prompts, "size_threshold": opts.size_threshold,
        "include_object_tag": opts.include_object_tag, "object_join": opts.object_join,
    }
    if opts.text_processing != "iapas":
        settings["text_processing"] = opts.text_processing
    digest = input_hash(category, [], settings)
    decision = _keep_existing(out, digest, run.force, opts.size_threshold)
    if decision == "cached":
        return
    if decision == "conflict":
        raise typer.Exit(2)
    try:
        profile = Profile.from_prompts(
            category,
            opts.object_tag,
            nouns,
            include_object_tag=opts.include_object_tag,
            size_threshold=opts.size_threshold,
            object_join=opts.object_join,
            stage1={
                "source": "manual", "prompts": prompts, "object_join": opts.object_join, "input_hash": digest,
                "iapas_version": __version__, "text_processing": opts.text_processing,
            },
        )
        if opts.text_processing == "reference":
            profile = _reference_caption(profile, nouns)
        profile.save(out)
    except (ProfileError, OSError) as exc:
        raise fail(str(exc)) from None
    _say(f"wrote {out}: object '{profile.object_tag}', caption '{profile.caption}'")


def _keep_existing(out: Path, digest: str, force: bool, size_threshold: float) -> str:
    """'write' when ``out`` may be (over)written; 'cached' when it holds a profile of the same
    inputs (kept, with any hand edits); 'conflict' when it holds something else and no --force."""
    if force or not out.exists():
        return "write"
    from iapas.product.profile import Profile, ProfileError
    from iapas.prompts.stage1 import fallback_reason, llm_error_fallback

    try:
        existing = Profile.load(out)
    except ProfileError as exc:
        print_error(f"{out} exists but is not a usable profile ({exc}); use --force to overwrite it")
        return "conflict"
    if existing.stage1.get("input_hash") == digest:
        s1 = existing.stage1
        failed = llm_error_fallback(s1)
        caption = s1.get("caption") if isinstance(s1.get("caption"), dict) else {}
        obj = s1.get("object") if isinstance(s1.get("object"), dict) else {}
        # what stage 1 wrote into the four fields stage 2 reads, against what the file holds now
        made = {
            "caption": (caption.get("text"), existing.caption),
            "object_tag": (obj.get("tag"), existing.object_tag),
            "object_size": (obj.get("object_size", existing.object_size), existing.object_size),
            "size_threshold": (size_threshold, existing.size_threshold),
        }
        edited = any(was is not None and was != now for was, now in made.values())
        if failed and not edited:
            _say(f"{out}: made from the same inputs, but after an LLM failure ({failed}); making it again")
            return "write"
        if failed:
            _say(f"{out}: made after an LLM failure ({failed}) but edited by hand; keeping it (use --force to make it again)")
        elif (reason := fallback_reason(s1)) is not None:
            _say(
                f"{out}: made from the same inputs; keeping it. Its nouns come from the knowledge vocabulary because the "
                f"LLM replied nothing usable ({reason}); the same seed samples the same reply: edit "
                "the file, or use --force to make it again"
            )
        else:
            _say(f"{out}: made from the same inputs; keeping it (use --force to make it again)")
        return "cached"
    print_error(
        f"{out} exists and was made from other inputs (reference images, models or options "
        "differ, or it was written by hand); use --force to overwrite it"
    )
    return "conflict"


def _make_one(
    category: str, chosen: list[Path], out: Path, opts: Stage1Options, run: _Run, models: Stage1Models, extra: dict[str, Any] | None = None
) -> str:
    """Make (or keep) one category's profile; returns 'written', 'cached' or 'conflict'."""
    from iapas.core.images import ImageReadError
    from iapas.models import ModelOutputError
    from iapas.models.loading import ModelLoadError
    from iapas.product.profile import ProfileError
    from iapas.prompts.knowledge import KnowledgeError
    from iapas.prompts.llm import LLMError
    from iapas.prompts.stage1 import Stage1Error, build_profile
    from iapas.prompts.tagging import TaggerError

    errors = (
        ModelLoadError, ModelOutputError, TaggerError, LLMError, KnowledgeError, Stage1Error, ImageReadError, ProfileError,
        OSError, ValueError,
    )
    try:
        digest = models.input_hash(category, chosen)
    except errors as exc:
        raise fail(str(exc)) from None
    decision = _keep_existing(out, digest, run.force, opts.size_threshold)
    if decision != "write":
        return decision
    try:
        llm = models.llm()  # first: an LLM that cannot be loaded is known before any other stage-1 work
        knowledge = models.knowledge()
        detector = models.detector()
        tagger = None if opts.object_tag else models.tagger()
        with _progress(run.quiet, category) as on_progress:
            profile = build_profile(
                category,
                chosen,
                tagger=tagger,
                detector=detector,
                llm=llm,
                knowledge=knowledge,
                seed=opts.seed,
                object_tag=opts.object_tag,
                nouns=opts.nouns,
                include_object_tag=opts.include_object_tag,
                object_join=opts.object_join,
                text_processing=opts.text_processing,
                prompt_style=opts.prompt_style,
                size_threshold=opts.size_threshold,
                input_digest=digest,
                progress=on_progress,
                llm_fallback=opts.llm_fallback != "never",
            )
        if extra:
            profile.stage1.update(extra)
        profile.save(out)
    except LLMError as exc:  # only with --llm-fallback never
        raise fail(str(exc), 1) from None
    except errors as exc:
        raise fail(str(exc)) from None
    record = profile.stage1
    size = f"{profile.object_size:.3f}" if profile.object_size is not None else "unknown"
    dropped = record.get("caption", {}).get("dropped_nouns")
    if dropped:
        _say(f"caption too long for the detector: dropped {', '.join(dropped)}")
    _say(f"wrote {out}: object '{profile.object_tag}' (size {size}), caption '{profile.caption}'" + fallback_note(record))
    return "written"


def fallback_note(stage1: Any) -> str:
    """'; ...' saying in words that the knowledge fallback replaced the LLM and why, for the end
    of a summary line; '' when the LLM (or the user) gave the nouns."""
    from iapas.prompts.stage1 import fallback_reason

    reason = fallback_reason(stage1)
    if reason is None:
        return ""
    return f"; LLM fallback: the anomaly nouns come from the knowledge vocabulary, not the LLM, because {reason}"


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


def _dataset_mode(name: str, root: Path | None, categories: list[str], out: Path, opts: Stage1Options, run: _Run) -> None:
    if root is None:
        raise fail("--dataset needs --root DIR, the dataset's folder")
    try:
        from iapas.data import DatasetError, get_dataset
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.startswith("iapas.data"):
            raise fail("--dataset needs the iapas.data loaders, which this install lacks; give --reference DIR instead") from None
        raise
    try:
        ds = get_dataset(name, root)
        available = ds.categories()
    except (DatasetError, ValueError, OSError) as exc:
        raise fail(str(exc)) from None
    wanted = [c.strip() for item in categories for c in item.split(",") if c.strip()] or list(available)
    unknown = [c for c in wanted if c not in available]
    if unknown:
        raise fail(f"{name} at {root} has no categor{'y' if len(unknown) == 1 else 'ies'} {', '.join(unknown)}; it has {', '.join(available)}")
    if out.suffix.lower() in (".yaml", ".yml", ".json"):
        raise fail(f"with --dataset, --out is a folder for <category>.yaml files, not a file ({out})")
    models = _models(opts)
    statuses: dict[str, str] = {}
    for cat in wanted:
        try:
            category = ds.load(cat, n_references=run.references, seed=opts.seed)
        except (DatasetError, ValueError, OSError) as exc:
            raise fail(str(exc)) from None
        if not category.references:
            raise fail(f"{name} category {cat}: no normal reference images")
        for note in category.notes:
            logger.info("%s: %s", cat, note)
        extra = {"dataset": {"name": name, "root": str(root), "category": cat, "notes": list(category.notes)}}
        statuses[cat] = _make_one(cat, list(category.references), out / f"{cat}.yaml", opts, run, models, extra)
    conflicts = [c for c, s in statuses.items() if s == "conflict"]
    written = [c for c, s in statuses.items() if s == "written"]
    from iapas.product.profile import Profile, ProfileError
    from iapas.prompts.stage1 import fallback_reason

    fell_back: dict[str, str] = {}
    for cat in written:
        try:
            reason = fallback_reason(Profile.load(out / f"{cat}.yaml").stage1)
        except ProfileError:
            continue
        if reason is not None:
            fell_back[cat] = reason
    note = ""
    if fell_back:
        note = (
            f"; LLM fallback: the anomaly nouns of {', '.join(fell_back)} come from the knowledge vocabulary, not the "
            f"LLM, because {next(iter(fell_back.values()))}"
        )
    _say(f"{name}: {len(written)} profile(s) written, {len(statuses) - len(written) - len(conflicts)} kept, in {out}{note}")
    if conflicts:
        raise typer.Exit(2)


def _reference_caption(profile: Any, nouns: list[str]) -> Any:
    """A hand-made profile with the reference code's caption: the typed nouns cleaned and
    joined as it joins an LLM reply (:mod:`iapas.prompts.reference_text`)."""
    from dataclasses import replace

    from iapas.prompts.reference_text import reference_caption, reference_clean_reply

    phrases = reference_clean_reply(", ".join(nouns))
    caption = reference_caption(phrases, profile.object_tag, profile.include_object_tag)
    kept = [p.strip() for p in phrases if p.strip() and p.strip() not in ("abnormal", "defect")]
    return replace(profile, caption=caption, anomaly_nouns=kept)
