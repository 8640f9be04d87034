"""``iapas profile``: write a category profile (stage 1)."""

from __future__ import annotations

from pathlib import Path

import typer

from iapas.cli.common import QuietOption, VerboseOption, console, fail, setup_logging


def register(app: typer.Typer) -> None:
    app.command("profile")(profile_cmd)


def profile_cmd(
    category: str = typer.Option(..., "--category", "-c", help="Name of the product category, e.g. 'bottle'."),
    out: Path = typer.Option(..., "--out", "-o", help="Profile file to write (.yaml, .yml or .json)."),
    object_tag: str = typer.Option(
        None, "--object", help="The object tag: what the product is called, e.g. 'bottle'. Used to measure the object's size."
    ),
    prompts: str = typer.Option(
        None,
        "--prompts",
        help="Anomaly nouns by hand, comma separated, e.g. 'scratch, crack, hole'. 'abnormal' and 'defect' are always added.",
    ),
    size_threshold: float = typer.Option(
        0.8, help="Keep a box only if its area is below this fraction of the object's area (the paper's 0.8)."
    ),
    object_in_caption: bool = typer.Option(
        True, "--object-in-caption/--no-object-in-caption", help="Append the object tag to the caption (as the reference code does)."
    ),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing profile file."),
    verbose: bool = VerboseOption,
    quiet: bool = QuietOption,
) -> None:
    """Write a per-category profile: object tag, detector caption and size threshold.

    By hand: iapas profile --category bottle --object bottle --prompts "scratch, crack" --out bottle.yaml

    The file is YAML (or JSON) meant to be read and edited; 'iapas segment' uses its caption as written.
    """
    setup_logging(verbose, quiet)
    from iapas.profile import Profile, ProfileError
    from iapas.prompts.caption import split_word_list

    if out.exists() and not force:
        console.print(f"{out} exists; keeping it (use --force to overwrite)")
        return
    if not object_tag or prompts is None:
        raise fail("give --object TAG and --prompts 'noun, noun' to write a profile by hand")
    try:
        profile = Profile.from_prompts(
            category,
            object_tag,
            split_word_list(prompts),
            include_object_tag=object_in_caption,
            size_threshold=size_threshold,
            stage1={"source": "manual", "prompts": prompts},
        )
        profile.save(out)
    except (ProfileError, OSError) as exc:
        raise fail(str(exc)) from None
    console.print(f"wrote {out}: object '{profile.object_tag}', caption '{profile.caption}'")
