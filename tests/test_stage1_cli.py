"""`iapas profile` end to end: real MVTec bottle images with the tiny CLIP, Grounding DINO and Llama."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from iapas import __version__
from iapas.cli import app
from iapas.product.profile import Profile
from iapas.core.caption import caption_phrases
from tests.conftest import shared_data

runner = CliRunner()


def model_args(tiny: dict[str, Path]) -> list[str]:
    return ["--tagger-model", str(tiny["clip"]), "--detector", str(tiny["grounding-dino"]), "--device", "cpu"]


def good_bottles() -> Path:
    return shared_data("MVTecAD") / "bottle" / "test" / "good"


def check_stage1_record(path: Path, n_refs: int) -> dict:
    """Every field the profile must hold, and that stage 2 can load it."""
    profile = Profile.load(path)
    raw = yaml.safe_load(path.read_text())
    s1 = raw["stage1"]
    assert s1["seed"] == 0 and s1["iapas_version"] == __version__ and s1["input_hash"].startswith("sha256:")
    assert len(s1["reference_names"]) == n_refs and all(n.endswith(".png") for n in s1["reference_names"])
    assert len(s1["tags"]["per_image"]) == n_refs and s1["tags"]["aggregated"]
    assert s1["tags"]["caption"].endswith(" .")
    assert s1["object"]["tag"] == profile.object_tag and profile.object_tag
    assert profile.object_size is None or 0 < profile.object_size <= 1
    assert s1["object"]["object_size"] == profile.object_size
    for key in ("backend", "model", "messages", "raw_text", "parsed", "nouns", "fallback_used", "fallback_reason"):
        assert key in s1["llm"], key
    assert {"fallback_used", "fallback_reason"} <= set(s1)
    cap = s1["caption"]
    assert cap["text"] == profile.caption and "dropped_nouns" in cap
    assert cap["token_count"] <= cap["max_tokens"] == 32  # the tiny Grounding DINO's text window
    phrases = caption_phrases(profile.caption)
    assert phrases[-3:] == ["abnormal", "defect", profile.object_tag]
    assert phrases[:-3] == profile.anomaly_nouns and profile.anomaly_nouns  # never an empty caption
    assert set(profile.models) == {"tagger", "detector", "llm"}
    return s1


def test_profile_from_real_references_with_the_tiny_llm(tmp_path: Path, tiny_models: dict[str, Path]):
    out = tmp_path / "bottle.yaml"
    args = ["profile", "-c", "bottle", "-r", str(good_bottles()), "--references", "3", *model_args(tiny_models),
            "--llm", "transformers", "--llm-model", str(tiny_models["llm"]), "--out", str(out)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert f"wrote {out}" in result.output
    s1 = check_stage1_record(out, 3)
    assert s1["llm"]["backend"] == "transformers" and s1["llm"]["model"] == str(tiny_models["llm"])
    assert s1["llm"]["raw_text"] is not None and s1["llm"]["messages"][0]["role"] == "system"
    assert s1["fallback_used"] == (s1["fallback_reason"] is not None)
    assert s1["reference_names"] == ["010.png", "016.png", "018.png"]  # seed 0 draws these 3 of the 20

    # same inputs again: the file is kept, with a person's edit of the caption
    profile = Profile.load(out)
    profile.caption = "scratch . crack . bottle ."
    profile.save(out)
    again = runner.invoke(app, args)
    assert again.exit_code == 0 and "same inputs; keeping it" in again.output
    assert Profile.load(out).caption == "scratch . crack . bottle ."

    # other inputs: refused without --force, redone with it
    other = runner.invoke(app, [*args, "--seed", "1"])
    assert other.exit_code == 2 and "made from other inputs" in other.output and "--force" in other.output
    forced = runner.invoke(app, [*args, "--seed", "1", "--force"])
    assert forced.exit_code == 0, forced.output
    assert Profile.load(out).stage1["seed"] == 1


def test_profile_with_the_knowledge_vocabulary(tmp_path: Path, tiny_models: dict[str, Path]):
    out = tmp_path / "bottle.json"
    result = runner.invoke(
        app, ["profile", "-c", "bottle", "-r", str(good_bottles()), "-n", "2", *model_args(tiny_models), "--llm", "knowledge", "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    s1 = check_stage1_record(out, 2)
    assert s1["llm"]["backend"] == "knowledge" and s1["llm"]["raw_text"] is None and s1["llm"]["knowledge_family"]
    assert s1["fallback_used"] is False and Profile.load(out).models["llm"] == "knowledge"


def test_profile_with_given_object_and_manual_tags(tmp_path: Path, tiny_models: dict[str, Path]):
    ref = str(good_bottles() / "000.png")
    out = tmp_path / "o.yaml"
    # --object skips the tagger: a tagger model that does not exist is never loaded
    result = runner.invoke(app, ["profile", "-c", "bottle", "-r", ref, "--object", "Bottle", "--llm", "knowledge",
                                 "--tagger-model", "./missing/clip", "--detector", str(tiny_models["grounding-dino"]),
                                 "--device", "cpu", "--out", str(out)])
    assert result.exit_code == 0, result.output
    profile = Profile.load(out)
    assert profile.object_tag == "bottle" and profile.stage1["object"]["source"] == "given"
    assert "tagger" not in profile.models and profile.caption.endswith("abnormal . defect . bottle .")

    out2 = tmp_path / "t.yaml"
    result = runner.invoke(app, ["profile", "-c", "bottle", "-r", ref, "--tags", "bottle, close-up, white", "--prompts", "dent, crack",
                                 "--detector", str(tiny_models["grounding-dino"]), "--device", "cpu", "--out", str(out2)])
    assert result.exit_code == 0, result.output
    s1 = Profile.load(out2).stage1
    assert s1["tagger"]["backend"] == "manual" and s1["tags"]["dropped_non_object"] == ["close-up", "white"]
    assert s1["tags"]["aggregated"] == ["bottle"] and s1["object"]["tag"] == "bottle"
    assert Profile.load(out2).caption == "dent . crack . abnormal . defect . bottle ."
    assert s1["llm"]["backend"] == "manual"


def test_profile_for_a_dataset(tmp_path: Path, tiny_models: dict[str, Path]):
    root = shared_data("MVTecAD")
    out = tmp_path / "profiles"
    args = ["profile", "--dataset", "mvtec", "--root", str(root), "--categories", "bottle", "-n", "1", "--object", "bottle",
            "--llm", "knowledge", "--detector", str(tiny_models["grounding-dino"]), "--device", "cpu", "--out", str(out)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    profile = Profile.load(out / "bottle.yaml")
    assert profile.category == "bottle" and profile.stage1["dataset"]["name"] == "mvtec"
    assert "no train split" in " ".join(profile.stage1["dataset"]["notes"])
    assert "1 profile(s) written" in result.output
    again = runner.invoke(app, args)
    assert again.exit_code == 0 and "0 profile(s) written, 1 kept" in again.output
    bad = runner.invoke(app, [*args[:6], "nope", *args[7:]])
    assert bad.exit_code == 2 and "has no category nope" in bad.output


def test_hand_made_profile_still_works(tmp_path: Path):
    out = tmp_path / "h.yaml"
    args = ["profile", "-c", "bottle", "--object", "bottle", "--prompts", "scratch, crack", "--out", str(out)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "caption 'scratch . crack . abnormal . defect . bottle .'" in result.output
    assert Profile.load(out).stage1["source"] == "manual"
    assert "keeping it" in runner.invoke(app, args).output
    changed = runner.invoke(app, [*args[:-2], "--size-threshold", "0.5", "--out", str(out)])
    assert changed.exit_code == 2


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ([], "give --reference DIR"),
        (["-r", "/no/such/folder"], "no reference images found"),
        (["-r", "REF", "--tagger", "ram"], "needs a checkpoint: pass --tagger-model"),
        (["-r", "REF", "--tagger", "ram", "--tagger-model", "REF"], "recognize-anything"),
        (["-r", "REF", "--llm", "openai"], "needs a model name"),
        (["-r", "REF", "--tagger", "blip"], "unknown --tagger 'blip'"),
        (["-r", "REF", "--llm", "gpt"], "unknown --llm 'gpt'"),
        (["-r", "REF", "--tagger", "manual"], "needs --tags"),
        (["-r", "REF", "--tags", "bottle", "--tagger", "clip"], "--tags gives the tags by hand (the manual tagger); it cannot go with --tagger clip"),
        (["-r", "REF", "--tags", "bottle", "--tagger", "ram"], "cannot go with --tagger ram"),
        # a category folder of a dataset: its defect images and masks are not normal references
        (["-r", "CATEGORY", "--object", "bottle", "--llm", "knowledge"], "looks like a dataset folder"),
        (["-r", "CATEGORY", "--object", "bottle", "--llm", "knowledge"], "--dataset NAME --root"),
        (["-r", "CATEGORY/test", "--object", "bottle", "--llm", "knowledge"], "has test/broken_large/"),
        (["-r", "CATEGORY/ground_truth", "--object", "bottle", "--llm", "knowledge"], "e.g. -r CATEGORY/train/good"),
    ],
)
def test_profile_errors_are_clear(tmp_path: Path, tiny_models: dict[str, Path], monkeypatch: pytest.MonkeyPatch, extra: list[str], message: str):
    import sys

    monkeypatch.setitem(sys.modules, "ram", None)  # as on a machine without recognize-anything
    monkeypatch.setitem(sys.modules, "ram.models", None)
    for var in ("IAPAS_LLM_MODEL", "IAPAS_LLM_BASE_URL", "OPENAI_BASE_URL", "OPENAI_API_KEY"):
        monkeypatch.delenv(var, raising=False)
    ref = str(good_bottles() / "000.png")
    category = str(good_bottles().parent.parent)
    extra = [ref if e == "REF" else e.replace("CATEGORY", category) for e in extra]
    result = runner.invoke(app, ["profile", "-c", "bottle", *extra, "--detector", str(tiny_models["grounding-dino"]),
                                 "--device", "cpu", "--out", str(tmp_path / "p.yaml")])
    assert result.exit_code == 2, result.output
    assert message.replace("CATEGORY", category) in " ".join(result.output.split())
    assert not (tmp_path / "p.yaml").exists()


def test_profile_through_an_openai_compatible_server(tmp_path: Path, tiny_models: dict[str, Path], monkeypatch: pytest.MonkeyPatch):
    from tests.test_stage1_llm import ChatServer

    for var in ("IAPAS_LLM_MODEL", "IAPAS_LLM_BASE_URL", "OPENAI_BASE_URL", "OPENAI_API_KEY"):
        monkeypatch.delenv(var, raising=False)
    ref = str(good_bottles() / "000.png")
    common = ["profile", "-c", "bottle", "-r", ref, "--object", "bottle", "--llm", "openai",
              "--detector", str(tiny_models["grounding-dino"]), "--device", "cpu"]
    with ChatServer() as server:
        out = tmp_path / "ok.yaml"
        monkeypatch.setenv("IAPAS_LLM_BASE_URL", server.url)  # base URL from the environment, model from the option
        result = runner.invoke(app, [*common, "--llm-model", "good-model", "--out", str(out)])
        assert result.exit_code == 0, result.output
        profile = Profile.load(out)
        assert profile.caption == "scratch . dent . rust . abnormal . defect . bottle ."
        assert profile.stage1["llm"]["base_url"] == server.url and profile.models["llm"] == "good-model"
        assert server.requests[-1]["seed"] == 0

        slow = tmp_path / "slow.yaml"
        result = runner.invoke(app, [*common, "--llm-model", "slow", "--llm-timeout", "0.3", "--llm-retries", "0", "--out", str(slow)])
        assert result.exit_code == 0, result.output
        assert "LLM fallback" in result.output
        s1 = Profile.load(slow).stage1
        assert s1["fallback_used"] is True and "no reply within 0.3 s" in s1["fallback_reason"]
        assert Profile.load(slow).caption.startswith("crack . chip . scratch .")  # glass family of 'bottle'


def object_args(tiny: dict[str, Path]) -> list[str]:
    """Stage 1 with the object tag given and the knowledge vocabulary: only the detector runs."""
    return ["--object", "bottle", "--llm", "knowledge", "--detector", str(tiny["grounding-dino"]), "--device", "cpu"]


def test_reference_masks_are_left_out_and_too_few_images_are_said(tmp_path: Path, tiny_models: dict[str, Path]):
    refs = tmp_path / "refs"
    refs.mkdir()
    for name in ("000.png", "001.png", "002.png"):
        shutil.copy(good_bottles() / name, refs / name)
    shutil.copy(good_bottles() / "003.png", refs / "000_mask.png")
    out = tmp_path / "p.yaml"
    result = runner.invoke(app, ["profile", "-c", "bottle", "-r", str(refs), "-n", "5", *object_args(tiny_models), "--out", str(out)])
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "left out 1 mask image(s)" in text
    assert "--references 5 asked for, but only 3 image(s) found; using all of them" in text
    assert Profile.load(out).stage1["reference_names"] == ["000.png", "001.png", "002.png"]


def test_reference_mode_honours_seed_and_count(tmp_path: Path, tiny_models: dict[str, Path]):
    from iapas.data.search import find_images
    from iapas.prompts.stage1 import select_references

    all_refs = find_images([str(good_bottles())])[0]
    names = {}
    for n, seed in ((3, 0), (3, 1), (2, 0)):
        out = tmp_path / f"n{n}-s{seed}.yaml"
        args = ["profile", "-c", "bottle", "-r", str(good_bottles()), "-n", str(n), "--seed", str(seed), *object_args(tiny_models)]
        result = runner.invoke(app, [*args, "--out", str(out)])
        assert result.exit_code == 0, result.output
        s1 = Profile.load(out).stage1
        names[n, seed] = s1["reference_names"]
        assert s1["reference_names"] == [p.name for p in select_references(all_refs, n, seed)]
        assert len(s1["reference_names"]) == n and s1["seed"] == seed
    assert names[3, 0] != names[3, 1]
    assert set(names[2, 0]) < set(names[3, 0])


def test_dataset_mode_honours_seed_and_count(tmp_path: Path, tiny_models: dict[str, Path]):
    root = shared_data("MVTecAD")
    names = {}
    for n, seed in ((3, 0), (3, 1), (2, 0)):
        out = tmp_path / f"n{n}-s{seed}"
        result = runner.invoke(app, ["profile", "--dataset", "mvtec", "--root", str(root), "--categories", "bottle", "-n", str(n),
                                     "--seed", str(seed), *object_args(tiny_models), "--out", str(out)])
        assert result.exit_code == 0, result.output
        s1 = Profile.load(out / "bottle.yaml").stage1
        names[n, seed] = s1["reference_names"]
        assert len(s1["reference_names"]) == n and s1["seed"] == seed
    assert names[3, 0] != names[3, 1]
    assert set(names[2, 0]) < set(names[3, 0])


def test_an_llm_that_cannot_be_loaded_falls_back_and_is_tried_again_next_time(tmp_path: Path, tiny_models: dict[str, Path]):
    out = tmp_path / "p.yaml"
    args = ["profile", "-c", "bottle", "-r", str(good_bottles() / "000.png"), "--object", "bottle", "--llm-model", "./no/llm",
            "--detector", str(tiny_models["grounding-dino"]), "--device", "cpu", "--out", str(out)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "could not load the LLM ./no/llm: model folder ./no/llm does not exist" in text
    assert "To fix it:" in text and "LLM fallback" in text
    profile = Profile.load(out)
    assert profile.stage1["fallback_used"] is True
    assert profile.stage1["fallback_reason"].startswith("LLM error: could not load ./no/llm")
    assert profile.models["llm"] == "knowledge (fallback from ./no/llm)"
    again = runner.invoke(app, args)
    assert again.exit_code == 0, again.output
    assert "after an LLM failure" in again.output and "making it again" in again.output


def test_profile_after_a_transient_llm_error_is_made_again(tmp_path: Path, tiny_models: dict[str, Path], monkeypatch: pytest.MonkeyPatch):
    from tests.test_stage1_llm import ChatServer

    for var in ("IAPAS_LLM_MODEL", "IAPAS_LLM_BASE_URL", "OPENAI_BASE_URL", "OPENAI_API_KEY"):
        monkeypatch.delenv(var, raising=False)
    out = tmp_path / "p.yaml"
    with ChatServer() as server:
        args = ["profile", "-c", "bottle", "-r", str(good_bottles() / "000.png"), "--object", "bottle", "--llm", "openai",
                "--llm-base-url", server.url, "--llm-retries", "0", "--detector", str(tiny_models["grounding-dino"]),
                "--device", "cpu", "--out", str(out)]
        first = runner.invoke(app, [*args, "--llm-model", "flaky"])  # HTTP 503 once, then 'dent, rust'
        assert first.exit_code == 0, first.output
        failed = Profile.load(out)
        assert failed.stage1["fallback_reason"].startswith("LLM error:") and "HTTP 503" in failed.stage1["fallback_reason"]
        assert failed.models["llm"] == "knowledge (fallback from flaky)"

        # edited by hand: kept, even so
        edited = Profile.load(out)
        edited.caption = "scratch . bottle ."
        edited.save(out)
        kept = runner.invoke(app, [*args, "--llm-model", "flaky"])
        assert kept.exit_code == 0 and "edited by hand; keeping it" in " ".join(kept.output.split())
        assert server.flaky_calls == 1 and Profile.load(out).caption == "scratch . bottle ."
        for field, value in (("object_size", 0.123), ("size_threshold", 0.6)):  # the other fields stage 2 reads
            failed.save(out)
            edited = Profile.load(out)
            setattr(edited, field, value)
            edited.save(out)
            kept = runner.invoke(app, [*args, "--llm-model", "flaky"])
            assert "edited by hand; keeping it" in " ".join(kept.output.split()), field
            assert getattr(Profile.load(out), field) == value and server.flaky_calls == 1
        failed.save(out)  # the edit undone

        second = runner.invoke(app, [*args, "--llm-model", "flaky"])
        assert second.exit_code == 0, second.output
        assert "after an LLM failure" in second.output and "making it again" in second.output
        remade = Profile.load(out)
        assert remade.caption == "dent . rust . abnormal . defect . bottle ." and remade.stage1["fallback_used"] is False
        assert remade.models["llm"] == "flaky"
        third = runner.invoke(app, [*args, "--llm-model", "flaky"])
        assert "same inputs; keeping it" in third.output and server.flaky_calls == 2

        # a reply with no usable noun is kept, and said
        chatty = tmp_path / "chatty.yaml"
        runner.invoke(app, [*args[:-1], str(chatty), "--llm-model", "chatty"])
        assert Profile.load(chatty).stage1["fallback_reason"].startswith("no usable anomaly noun")
        again = runner.invoke(app, [*args[:-1], str(chatty), "--llm-model", "chatty"])
        text = " ".join(again.output.split())
        assert again.exit_code == 0 and "keeping it" in text and "replied nothing usable" in text
        assert len([r for r in server.requests if r["model"] == "chatty"]) == 1


def test_force_help_says_it_overwrites_hand_edits():
    result = runner.invoke(app, ["profile", "--help"], terminal_width=200)
    text = " ".join(result.output.replace("│", " ").split())
    assert "hand edits to it are lost" in text


def test_evaluate_and_profile_share_the_cache_key(tmp_path: Path, tiny_models: dict[str, Path]):
    from iapas.data import get_dataset
    from iapas.evaluation.profiles import get_profile
    from iapas.prompts.resources import Stage1Models, Stage1Options

    root = shared_data("MVTecAD")
    profiles = tmp_path / "profiles"
    options = Stage1Options(object_tag="bottle", llm="knowledge", detector=str(tiny_models["grounding-dino"]), device="cpu")
    category = get_dataset("mvtec", root).load("bottle", n_references=2, seed=0)
    made = get_profile(category, profiles, options, models=Stage1Models(options))  # as iapas evaluate makes it
    assert made is not None
    result = runner.invoke(app, ["profile", "--dataset", "mvtec", "--root", str(root), "--categories", "bottle", "-n", "2",
                                 *object_args(tiny_models), "--out", str(profiles)])
    assert result.exit_code == 0, result.output
    assert "0 profile(s) written, 1 kept" in result.output
    assert Profile.load(profiles / "bottle.yaml").stage1["input_hash"] == made.stage1["input_hash"]


def test_nan_detector_outputs_in_stage1_are_one_clear_error(tmp_path: Path, tiny_models: dict[str, Path], monkeypatch: pytest.MonkeyPatch):
    from iapas.models import ModelOutputError
    from iapas.models.detector import GroundingDinoDetector

    def nan_forward(self, pixels, caption):
        raise ModelOutputError(f"Grounding DINO {self.name} returned NaN/inf logits (float16 on cpu): run with --dtype float32")

    monkeypatch.setattr(GroundingDinoDetector, "_forward", nan_forward)
    out = tmp_path / "p.yaml"
    result = runner.invoke(app, [
        "profile", "-c", "bottle", "-r", str(good_bottles() / "000.png"), "--object", "bottle", "--llm", "knowledge",
        "--detector", str(tiny_models["grounding-dino"]), "--device", "cpu", "--out", str(out),
    ])
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert "NaN/inf logits" in result.output and "--dtype float32" in " ".join(result.output.split())
    assert "Traceback" not in result.output and not out.exists()
