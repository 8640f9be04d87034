"""`iapas profile` end to end: real MVTec bottle images with the tiny CLIP, Grounding DINO and Llama."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from iapas import __version__
from iapas.cli import app
from iapas.profile import Profile
from iapas.prompts.caption import caption_phrases
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
        (["-r", "REF", "--llm-model", "./no/llm", "--object", "bottle"], "LLM: model folder ./no/llm does not exist"),
    ],
)
def test_profile_errors_are_clear(tmp_path: Path, tiny_models: dict[str, Path], monkeypatch: pytest.MonkeyPatch, extra: list[str], message: str):
    import sys

    monkeypatch.setitem(sys.modules, "ram", None)  # as on a machine without recognize-anything
    monkeypatch.setitem(sys.modules, "ram.models", None)
    for var in ("IAPAS_LLM_MODEL", "IAPAS_LLM_BASE_URL", "OPENAI_BASE_URL", "OPENAI_API_KEY"):
        monkeypatch.delenv(var, raising=False)
    ref = str(good_bottles() / "000.png")
    extra = [ref if e == "REF" else e for e in extra]
    result = runner.invoke(app, ["profile", "-c", "bottle", *extra, "--detector", str(tiny_models["grounding-dino"]),
                                 "--device", "cpu", "--out", str(tmp_path / "p.yaml")])
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split())
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
