"""The CLI's rough edges (issue 8 items 8, 9, 10, 12, 15): captions refused before the models
load, option ranges, quoted file names, the LLM loaded first and ``--llm-fallback``, help at
80 columns, and the demo's choice of models."""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import typer.main
from PIL import Image
from typer.testing import CliRunner

from iapas.cli import app
from iapas.product.profile import Profile

runner = CliRunner()


def text_of(result) -> str:
    return " ".join(result.output.split())


def write_image(path: Path, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(path)
    return path


def refuse_model_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any stage-2 or detector load fails the test: what is checked must be checked before."""
    from iapas.models.detector import GroundingDinoDetector
    from iapas.pipeline.stage2 import Pipeline

    def boom(*args, **kwargs):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(Pipeline, "from_config", classmethod(lambda cls, *a, **k: boom()))
    monkeypatch.setattr(GroundingDinoDetector, "from_pretrained", classmethod(lambda cls, *a, **k: boom()))


# --- item 8: a caption over the detector's window ----------------------------------------------


def test_caption_too_long_message_quotes_the_first_words_and_the_count():
    from iapas.models.detector import caption_too_long

    caption = " . ".join(f"w{i}" for i in range(10)) + " ."
    assert caption_too_long(caption, 40, "gd", 32, words=4) == (
        "the caption 'w0 . w1 . ... (20 words)' is 40 tokens long but gd reads at most 32: "
        "remove phrases from the profile's caption"
    )
    assert caption_too_long("a . b .", 40, "gd", 32) == (
        "the caption 'a . b .' is 40 tokens long but gd reads at most 32: remove phrases from the profile's caption"
    )


def test_check_caption_length_uses_the_tokenizer_alone(tiny_models: dict[str, Path], monkeypatch: pytest.MonkeyPatch):
    from iapas.models.detector import check_caption_length

    refuse_model_loads(monkeypatch)
    folder = str(tiny_models["grounding-dino"])
    check_caption_length("scratch . crack . bottle .", folder)  # fits the tiny model's 32 tokens
    with pytest.raises(ValueError, match=r"is \d+ tokens long but .* reads at most 32"):
        check_caption_length(" . ".join(["scratch"] * 40), folder)
    check_caption_length(" . ".join(["scratch"] * 40), "nobody/no-such-detector")  # not at hand: left to the load


def test_segment_refuses_a_long_caption_before_loading_the_models(
    tmp_path: Path, tiny_models: dict[str, Path], monkeypatch: pytest.MonkeyPatch
):
    image = write_image(tmp_path / "a.png")
    nouns = ", ".join(f"defect{i}" for i in range(2000))
    long = tmp_path / "long.yaml"
    assert runner.invoke(app, ["profile", "-c", "x", "--object", "part", "--prompts", nouns, "--out", str(long)]).exit_code == 0
    refuse_model_loads(monkeypatch)
    result = runner.invoke(app, [
        "segment", str(image), "--profile", str(long), "--out", str(tmp_path / "o"),
        "--detector", str(tiny_models["grounding-dino"]), "--segmenter", str(tiny_models["sam"]), "--device", "cpu",
    ])
    assert result.exit_code == 2, result.output
    text = text_of(result)
    words = len(Profile.load(long).caption.split())
    assert words > 4000
    assert f"the caption 'defect0 . defect1 . defect2 . defect3 . ... ({words} words)' is" in text
    assert "tokens long but" in text and "reads at most 32" in text
    assert "defect4 " not in text and len(result.output) < 600
    assert not (tmp_path / "o" / "results.jsonl").exists()


# --- item 9: option ranges and quoted file names -------------------------------------------------


@pytest.mark.parametrize(
    "args, option",
    [
        (["segment", "a.png", "-o", "out", "--mode", "base", "--threshold", "-0.1"], "--threshold"),
        (["segment", "a.png", "-o", "out", "--mode", "base", "--max-pixels", "0"], "--max-pixels"),
        (["evaluate", "-d", "mvtec", "-r", "data", "-o", "out", "--max-pixels", "-5"], "--max-pixels"),
        (["bench", "--root-dir", "data", "-o", "out", "--max-pixels", "0"], "--max-pixels"),
    ],
)
def test_out_of_range_options_are_option_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, args: list[str], option: str):
    monkeypatch.chdir(tmp_path)
    refuse_model_loads(monkeypatch)
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    assert f"Invalid value for '{option}'" in text_of(result)
    assert not (tmp_path / "out").exists()


def test_threshold_zero_and_max_pixels_one_are_accepted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    refuse_model_loads(monkeypatch)
    args = ["segment", str(tmp_path / "gone.png"), "--mode", "base", "-o", str(tmp_path / "o"), "--threshold", "0", "--max-pixels", "1"]
    result = runner.invoke(app, args)
    assert result.exit_code == 2 and "Invalid value" not in result.output
    assert text_of(result).endswith("error: no images to segment")


def test_file_names_with_a_newline_are_quoted_on_one_line(tmp_path: Path):
    from iapas.core.images import ImageReadError, read_image, show_path
    from iapas.data.search import find_images_with_roots

    assert show_path(Path("/data/a b.png")) == "/data/a b.png"  # printable names stay as they are
    odd = tmp_path / "bad\nname.png"
    assert show_path(odd) == repr(str(odd))
    odd.write_bytes(b"junk")
    with pytest.raises(ImageReadError) as info:
        read_image(odd)
    assert str(info.value) == f"{str(odd)!r}: not an image file PIL can read (unknown or unsupported format)"
    gone = str(tmp_path / "gone\nname.png")
    _, problems = find_images_with_roots([gone])
    assert problems == [f"{gone!r}: file not found"]


def test_segment_error_line_for_a_missing_file_with_a_newline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    refuse_model_loads(monkeypatch)
    missing = tmp_path / "x\ny.png"
    result = runner.invoke(app, ["segment", str(missing), "--mode", "base", "-o", str(tmp_path / "o")])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if "file not found" in line]
    assert lines == [f"error: {str(missing)!r}: file not found"]


# --- item 10: the LLM first, and --llm-fallback ------------------------------------------------------


def stage1_args(tiny_models: dict[str, Path], refs: Path, out: Path, *extra: str) -> list[str]:
    return ["profile", "-c", "tile", "-r", str(refs), "--object", "tile", "--detector", str(tiny_models["grounding-dino"]),
            "--device", "cpu", "--out", str(out), *extra]


@pytest.fixture()
def refs(tmp_path: Path) -> Path:
    folder = tmp_path / "refs"
    folder.mkdir()
    for i in range(2):
        write_image(folder / f"{i}.png", seed=i)
    return folder


def last_line(result) -> str:
    return [line for line in result.output.splitlines() if line.strip()][-1]


def test_missing_llm_falls_back_and_the_last_line_says_so(tmp_path: Path, tiny_models: dict[str, Path], refs: Path):
    out = tmp_path / "p.yaml"
    result = runner.invoke(app, stage1_args(tiny_models, refs, out, "--llm-model", "./no/llm"))
    assert result.exit_code == 0, result.output
    line = last_line(result)
    assert line.startswith(f"wrote {out}: object 'tile'")
    assert line.endswith(
        "; LLM fallback: the anomaly nouns come from the knowledge vocabulary, not the LLM, because "
        "LLM error: could not load ./no/llm: model folder ./no/llm does not exist"
    )
    assert Profile.load(out).stage1["fallback_used"] is True


def test_llm_fallback_never_fails_before_any_other_stage1_work(
    tmp_path: Path, tiny_models: dict[str, Path], refs: Path, monkeypatch: pytest.MonkeyPatch
):
    refuse_model_loads(monkeypatch)  # the detector would load after the LLM: it must not be reached
    out = tmp_path / "p.yaml"
    result = runner.invoke(app, stage1_args(tiny_models, refs, out, "--llm-model", "./no/llm", "--llm-fallback", "never"))
    assert result.exit_code == 1, result.output
    text = text_of(result)
    assert "error: could not load the LLM ./no/llm: model folder ./no/llm does not exist" in text
    assert "(--llm-fallback never: no knowledge-vocabulary fallback)" in text
    assert not out.exists()


def test_llm_fallback_choices_are_checked(tmp_path: Path, refs: Path, tiny_models: dict[str, Path]):
    result = runner.invoke(app, stage1_args(tiny_models, refs, tmp_path / "p.yaml", "--llm-fallback", "sometimes"))
    assert result.exit_code == 2 and "Invalid value for '--llm-fallback'" in text_of(result)


@pytest.mark.parametrize("reply, code", [("dent, rust", 0), ("1. 2. 3.", 1)])
def test_tiny_llm_is_loaded_first_and_never_means_its_nouns_or_an_error(
    tmp_path: Path, tiny_models: dict[str, Path], refs: Path, monkeypatch: pytest.MonkeyPatch, reply: str, code: int
):
    from iapas.models.detector import GroundingDinoDetector
    from iapas.prompts.llm import TransformersLLM

    loads: list[str] = []
    for cls, name in ((TransformersLLM, "llm"), (GroundingDinoDetector, "detector")):
        original = cls.from_pretrained.__func__

        def record(klass, *args, _original=original, _name=name, **kwargs):
            loads.append(_name)
            return _original(klass, *args, **kwargs)

        monkeypatch.setattr(cls, "from_pretrained", classmethod(record))
    monkeypatch.setattr(TransformersLLM, "complete", lambda self, messages, *, seed: reply)
    out = tmp_path / "p.yaml"
    result = runner.invoke(app, stage1_args(tiny_models, refs, out, "--llm-model", str(tiny_models["llm"]), "--llm-fallback", "never"))
    assert result.exit_code == code, result.output
    assert loads[0] == "llm"
    if code == 0:
        profile = Profile.load(out)
        assert profile.caption.startswith("dent . rust .") and profile.stage1["fallback_used"] is False
        assert "LLM fallback" not in result.output
    else:
        assert loads == ["llm", "detector"]  # the reply comes after the detector's work: no fallback then
        assert "no usable anomaly noun in the LLM reply '1. 2. 3.'" in text_of(result)
        assert not out.exists()


def test_generate_nouns_without_fallback_raises():
    from iapas.prompts.knowledge import Knowledge
    from iapas.prompts.llm import LLMError
    from iapas.prompts.stage1 import generate_nouns

    class Broken:
        name, model_id = "transformers", "m"

        def complete(self, messages, *, seed):
            raise LLMError("out of memory")

    knowledge = Knowledge.load()
    auto = generate_nouns("bottle", Broken(), seed=0, knowledge=knowledge)
    assert auto.fallback_used and auto.fallback_reason == "LLM error: out of memory" and auto.nouns
    with pytest.raises(LLMError, match=r"^m: out of memory \(--llm-fallback never"):
        generate_nouns("bottle", Broken(), seed=0, knowledge=knowledge, fallback=False)


def test_stage1_options_llm_fallback_is_checked_and_not_in_the_recorded_settings():
    from iapas.prompts.resources import Stage1Options

    with pytest.raises(ValueError, match="unknown LLM fallback 'maybe'"):
        Stage1Options(llm_fallback="maybe")  # type: ignore[arg-type]
    assert Stage1Options(llm_fallback="never").settings("gd") == Stage1Options().settings("gd")


def folder_dataset(tmp_path: Path) -> list[str]:
    """A small OK/NG folder dataset; the evaluate options that name it."""
    root = tmp_path / "line"
    for folder, n in (("OK", 4), ("NG", 2)):
        (root / folder).mkdir(parents=True)
        for i in range(n):
            write_image(root / folder / f"{folder}{i}.png", seed=i)
    (root / "labels").mkdir()
    for i in range(2):
        mask = np.zeros((48, 64), np.uint8)
        mask[10:20, 10:30] = 255
        Image.fromarray(mask).save(root / "labels" / f"NG{i}.png")
    return ["--dataset", "folder", "--root", str(root), "--normal", "OK", "--anomalous", "NG", "--masks", "labels",
            "--mask-pattern", "{stem}.png", "--references", "2", "--object", "part", "--llm-model", "./no/llm"]


@pytest.mark.parametrize("fallback", ["auto", "never"])
def test_evaluate_llm_fallback(tmp_path: Path, tiny_models: dict[str, Path], fallback: str):
    out = tmp_path / "run"
    result = runner.invoke(app, [
        "evaluate", *folder_dataset(tmp_path), "--out", str(out), "--llm-fallback", fallback, "--limit", "2",
        "--detector", str(tiny_models["grounding-dino"]), "--segmenter", str(tiny_models["sam"]), "--device", "cpu", "--quiet",
    ])
    text = text_of(result)
    if fallback == "never":  # stops at the first profile, before any image is segmented
        assert result.exit_code != 0, result.output
        assert "could not load the LLM ./no/llm" in text and "--llm-fallback never" in text
        assert all(not p.read_text().strip() for p in out.rglob("*.jsonl"))
    else:
        assert result.exit_code == 0, result.output
        assert re.search(
            r"LLM fallback: the anomaly nouns of \S+ come from the knowledge vocabulary, not the LLM, because "
            r"LLM error: could not load \./no/llm", text
        ), text


# --- item 12: --help at 80 columns -------------------------------------------------------------------


def all_commands() -> list[tuple[list[str], Any]]:
    found: list[tuple[list[str], Any]] = []

    def walk(path: list[str], command: Any) -> None:
        found.append((path, command))
        for name, sub in getattr(command, "commands", {}).items():
            walk([*path, name], sub)

    walk([], typer.main.get_command(app))
    return found


@pytest.mark.parametrize("path, command", all_commands(), ids=lambda v: " ".join(v) if isinstance(v, list) else "")
def test_help_at_80_columns_shows_every_option_whole(path: list[str], command: Any):
    result = runner.invoke(app, [*path, "--help"], env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    long_lines = [line for line in result.output.splitlines() if len(line) > 80]
    assert long_lines == []
    assert "…" not in result.output
    names = [n for p in command.params for n in [*p.opts, *getattr(p, "secondary_opts", [])] if n.startswith("-")]
    for name in names:
        assert re.search(rf"(?<![\w-]){re.escape(name)}(?![\w-])", result.output), (path, name)


def test_help_shows_long_defaults_whole():
    result = runner.invoke(app, ["segment", "--help"], env={"COLUMNS": "80"})
    text = " ".join(re.sub(r"-\n\s+", "-", result.output).split())  # a long default may wrap after a hyphen
    assert "[default: IDEA-Research/grounding-dino-tiny]" in text and "[default: 200000000; x>=1]" in text
    assert "masks/ is the map >= 0.3. [x>=0.0]" in text  # --threshold: no default (the profile's decision)


def test_help_lists_evaluate_then_bench_between_demo_and_serve():
    # evaluate and bench live in their own modules; 'iapas --help' keeps them in this order
    names = list(typer.main.get_command(app).commands)  # type: ignore[attr-defined]
    assert names.index("demo") < names.index("evaluate") < names.index("serve")
    assert names[names.index("evaluate") + 1] == "bench"


# --- item 15: which models the demo runs ---------------------------------------------------------------


def never_asked() -> bool:
    raise AssertionError("the hub was asked")


def test_demo_offline_or_tiny_runs_tiny_models_without_asking_the_hub():
    from iapas.workflows.demo import TINY, choose_demo_models

    offline = choose_demo_models(env={"HF_HUB_OFFLINE": "1"}, reachable=never_asked)
    assert (offline.detector, offline.segmenter, offline.reason, offline.noise) == (TINY, TINY, "HF_HUB_OFFLINE is set", True)
    tiny = choose_demo_models(tiny=True, env={}, reachable=never_asked)
    assert (tiny.detector, tiny.segmenter, tiny.reason) == (TINY, TINY, "--tiny")
    unreachable = choose_demo_models(env={}, reachable=lambda: False)
    assert (unreachable.detector, unreachable.reason) == (TINY, "the Hugging Face hub is not reachable")


def test_demo_with_the_hub_runs_the_real_models():
    from iapas.workflows.demo import choose_demo_models

    default = choose_demo_models(env={}, reachable=lambda: True)
    assert (default.detector, default.segmenter, default.noise) == (
        "IDEA-Research/grounding-dino-tiny", "facebook/sam-vit-base", False
    )
    assert choose_demo_models(full=True, env={"HF_HUB_OFFLINE": "0"}, reachable=lambda: True).segmenter == "facebook/sam-vit-huge"
    half = choose_demo_models(segmenter="my/sam", env={"HF_HUB_OFFLINE": "1"}, reachable=never_asked)
    assert (half.detector, half.segmenter, half.noise) == ("tiny", "my/sam", True)


def test_demo_with_local_model_folders_runs_those(tmp_path: Path, tiny_models: dict[str, Path], monkeypatch: pytest.MonkeyPatch):
    import iapas.testing

    monkeypatch.setattr(iapas.testing, "make_tiny_sam", lambda *a, **k: pytest.fail("built a tiny model"))
    monkeypatch.setattr(iapas.testing, "make_tiny_grounding_dino", lambda *a, **k: pytest.fail("built a tiny model"))
    gd, sam = str(tiny_models["grounding-dino"]), str(tiny_models["sam"])
    out = tmp_path / "demo"
    result = runner.invoke(app, ["demo", "--out", str(out), "--detector", gd, "--segmenter", sam, "--device", "cpu", "--quiet"])
    assert result.exit_code == 0, result.output
    assert last_line(result) == f"models: detector {gd}, segmenter {sam} (the models given)"
    assert "NOISE" not in result.output and not (out / "models").exists()
    assert (out / "results" / "results.jsonl").read_text().count("\n") == 4
    again = runner.invoke(app, ["demo", "--out", str(out), "--detector", gd, "--segmenter", sam, "--device", "cpu", "--quiet"])
    assert again.exit_code == 0, again.output  # an earlier demo's folder is the demo's to redo

    # a folder of the user's own (a calibrated tile.yaml, a results/ run) is never written over
    mine = tmp_path / "work"
    (mine / "results").mkdir(parents=True)
    (mine / "tile.yaml").write_text("category: tile\nobject_tag: tile\ncaption: chip .  # tuned by Anna\n")
    (mine / "results" / "results.jsonl").write_text("{}\n")
    before = {p: p.read_bytes() for p in mine.rglob("*") if p.is_file()}
    refused = runner.invoke(app, ["demo", "--out", str(mine), "--detector", gd, "--segmenter", sam, "--device", "cpu"])
    assert refused.exit_code == 2, refused.output
    assert " ".join(refused.output.split()) == (f"error: --out {mine}: holds files of its own, not an earlier demo's; give the "
                                               "demo a new or empty folder (it writes tile.yaml, images/ and results/ there)")
    assert {p: p.read_bytes() for p in mine.rglob("*") if p.is_file()} == before


def test_demo_offline_says_its_maps_are_noise(tmp_path: Path, tiny_models: dict[str, Path], monkeypatch: pytest.MonkeyPatch):
    import iapas.testing

    def copy(name: str):
        return lambda folder, *a, **k: Path(shutil.copytree(tiny_models[name], folder))

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(iapas.testing, "make_tiny_grounding_dino", copy("grounding-dino"))
    monkeypatch.setattr(iapas.testing, "make_tiny_sam", copy("sam"))
    out = tmp_path / "demo"
    result = runner.invoke(app, ["demo", "--out", str(out), "--device", "cpu", "--quiet"])
    assert result.exit_code == 0, result.output
    line = " ".join(result.output.split()).split("models: ")[-1]
    assert line.startswith(
        f"detector a tiny random model ({out / 'models' / 'grounding-dino'}), segmenter a tiny random model "
        f"({out / 'models' / 'sam'}) (HF_HUB_OFFLINE is set). The maps are NOISE"
    )


def test_bench_summary_names_the_runs_whose_nouns_came_from_the_fallback(capsys: pytest.CaptureFixture[str]):
    from types import SimpleNamespace

    from iapas.cli import bench as cli_bench

    def category(name: str, fallback: str | None) -> SimpleNamespace:
        return SimpleNamespace(name=name, profile=SimpleNamespace(llm_fallback=fallback))

    run = SimpleNamespace(categories=[category("bottle", "LLM error: no such model"), category("tile", None)])
    bench = SimpleNamespace(
        results={"mvtec": {"default": run}}, errors={}, stopped=None, out_dir=Path("b"),
        column_labels=lambda: [], rows=lambda: [],
    )
    cli_bench._print_bench(bench)
    captured = capsys.readouterr()
    text = " ".join((captured.out + captured.err).split())
    assert ("LLM fallback: the anomaly nouns of mvtec/default/bottle come from the knowledge vocabulary, not the LLM, "
            "because LLM error: no such model") in text
    assert "tile" not in text
