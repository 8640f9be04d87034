"""Hostile model folders (issue 18, part 1): a run folder, a calibrated profile and a station's
store are tied to the models' content, not to the path that was typed.

One run of ``segment`` is made once (``lab``) from working directory ``w1`` with
``--detector models/gdino``; each case works on its own copy of that output folder. ``w2``
holds other weights under the same relative name ``models/gdino``. Every refusal is checked
for its exact line, its exit code, and that nothing in the output folder changed; the cases
that must keep working (the same weights by another path, a copy) resume without segmenting.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from iapas.cli import app
from iapas.core.lock import LOCK_FILE
from iapas.product.profile import Profile
from iapas.models.base import Detector, Segmenter

runner = CliRunner()
ADVICE = "use another --out folder, or --restart to discard them"


@dataclass
class Lab:
    root: Path
    w1: Path  # models/gdino: the tiny detector (seed 0), models/sam: the tiny SAM
    w2: Path  # models/gdino: another tiny detector (seed 1), same layout and file sizes
    other_sam: Path  # a tiny SAM of seed 1
    image: Path
    profile: Path
    out: Path  # the first run's output folder (never changed: cases copy it)


def fingerprint(folder: Path) -> str:
    """By hand: SHA-256 of the 'name<TAB>sha256' lines of the folder's files (the tiny models
    have no documentation or hidden files)."""
    lines = "".join(f"{p.name}\t{hashlib.sha256(p.read_bytes()).hexdigest()}\n" for p in sorted(folder.iterdir()) if p.is_file())
    return "sha256:" + hashlib.sha256(lines.encode()).hexdigest()


def short(folder: Path) -> str:
    return fingerprint(folder)[: len("sha256:") + 12]


def segment(lab: Lab, cwd: Path, out: Path, detector: str = "models/gdino", segmenter: str = "models/sam", *extra: str,
            profile: Path | None = None):
    old = os.getcwd()
    os.chdir(cwd)
    try:
        args = ["segment", str(lab.image), "--profile", str(profile or lab.profile), "--out", str(out),
                "--detector", detector, "--segmenter", segmenter, "--device", "cpu", *extra]
        return runner.invoke(app, args, env={"COLUMNS": "200"})
    finally:
        os.chdir(old)


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory, tiny_models: dict[str, Path]) -> Lab:
    from iapas.testing.tiny import make_tiny_grounding_dino, make_tiny_sam

    root = tmp_path_factory.mktemp("lab")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("XDG_CACHE_HOME", str(root / "xdg"))
        for w in ("w1", "w2"):
            shutil.copytree(tiny_models["sam"], root / w / "models" / "sam")
        shutil.copytree(tiny_models["grounding-dino"], root / "w1" / "models" / "gdino")
        make_tiny_grounding_dino(root / "w2" / "models" / "gdino", seed=1, shortest_edge=320)
        other_sam = make_tiny_sam(root / "sam-seed1", seed=1)
        (root / "img").mkdir()
        image = root / "img" / "part.png"
        Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(image)
        profile = Profile.from_prompts("part", "part", ["scratch"]).save(root / "part.yaml")
        lab = Lab(root, root / "w1", root / "w2", other_sam, image, profile, root / "out")
        first = segment(lab, lab.w1, lab.out)
        assert first.exit_code == 0, first.output
    return lab


@pytest.fixture()
def out(lab: Lab, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A copy of the first run's folder (times kept), and a file-hash cache of this test's own."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    return Path(shutil.copytree(lab.out, tmp_path / "out"))


def snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    return {str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != LOCK_FILE}


def error_line(result) -> str:
    lines = [line for line in result.output.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, result.output
    return lines[0]


def refused_model(out: Path, kind: str, now: str, now_folder: Path, then: str, then_folder: Path) -> str:
    return (f"error: {out} holds results made with another {kind}: {now} ({short(now_folder)}) is not the model its results "
            f"were made with ({then}, {short(then_folder)}); {ADVICE}")


def assert_refused(result, expected: str, out: Path, before: dict) -> None:
    assert result.exit_code == 2, result.output
    assert error_line(result) == expected
    assert snapshot(out) == before, "a refused run changed its output folder"


def assert_resumed(result, out: Path, before: dict) -> None:
    assert result.exit_code == 0, result.output
    assert "segmented now          │ 0" in result.output and "already done (resumed) │ 1" in result.output, result.output
    pictures = {k: v for k, v in before.items() if k.split("/")[0] in ("maps", "masks", "overlays")}
    assert pictures and {k: v for k, v in snapshot(out).items() if k in pictures} == pictures


# --- the scenario ------------------------------------------------------------------------------


def test_the_same_relative_folder_in_another_directory_with_other_weights_is_refused(lab: Lab, out: Path):
    before = snapshot(out)
    result = segment(lab, lab.w2, out)
    expected = refused_model(out, "detector", str(lab.w2 / "models/gdino"), lab.w2 / "models/gdino",
                             str(lab.w1 / "models/gdino"), lab.w1 / "models/gdino")
    assert_refused(result, expected, out, before)
    assert "loaded" not in result.output, "refused before loading the models"
    assert fingerprint(lab.w1 / "models/gdino") != fingerprint(lab.w2 / "models/gdino")


def test_the_same_weights_by_absolute_path_or_from_another_directory_resume(lab: Lab, out: Path):
    before = snapshot(out)
    assert_resumed(segment(lab, lab.root, out, str(lab.w1 / "models/gdino"), str(lab.w1 / "models/sam")), out, before)
    (lab.w1 / "sub").mkdir(exist_ok=True)
    assert_resumed(segment(lab, lab.w1 / "sub", out, "../models/gdino", "../models/sam"), out, before)
    assert json.loads((out / "run.json").read_text())["signature"]["detector"] == str(lab.w1 / "models/gdino")


def test_a_copied_folder_with_a_model_card_and_download_metadata_resumes(lab: Lab, out: Path, tmp_path: Path):
    copy = Path(shutil.copytree(lab.w1 / "models", tmp_path / "elsewhere" / "models"))
    (copy / "gdino" / "README.md").write_text("# model card\n")
    (copy / "gdino" / ".cache" / "huggingface").mkdir(parents=True)  # what 'hf download --local-dir' leaves
    (copy / "gdino" / ".cache" / "huggingface" / ".gitignore").write_text("*\n")
    before = snapshot(out)
    assert_resumed(segment(lab, tmp_path / "elsewhere", out), out, before)
    assert json.loads((out / "run.json").read_text())["signature"]["detector"] == str(copy / "gdino")


# --- weights changed behind the same path ------------------------------------------------------------------


def test_weights_overwritten_in_place_are_refused(lab: Lab, out: Path, tmp_path: Path):
    models = Path(shutil.copytree(lab.w1 / "models", tmp_path / "w" / "models"))
    (models / "gdino" / "model.safetensors").write_bytes((lab.w2 / "models/gdino/model.safetensors").read_bytes())
    before = snapshot(out)
    expected = refused_model(out, "detector", str(models / "gdino"), models / "gdino", str(lab.w1 / "models/gdino"), lab.w1 / "models/gdino")
    assert_refused(segment(lab, tmp_path / "w", out), expected, out, before)


def test_weights_swapped_with_size_and_modification_time_kept_are_refused(lab: Lab, out: Path, tmp_path: Path):
    """The hash cache is keyed by more than size and modification time: a file rewritten in place
    with its time put back (same inode) is hashed again."""
    import time

    models = Path(shutil.copytree(lab.w1 / "models", tmp_path / "w" / "models"))
    weights = models / "gdino" / "model.safetensors"
    before = snapshot(out)
    assert_resumed(segment(lab, tmp_path / "w", out), out, before)  # its hash is in the cache now
    before = snapshot(out)
    other = (lab.w2 / "models/gdino/model.safetensors").read_bytes()
    stat = weights.stat()
    assert len(other) == stat.st_size
    time.sleep(0.05)  # past the kernel's coarse change-time tick
    with open(weights, "r+b") as fh:
        fh.write(other)
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert (weights.stat().st_size, weights.stat().st_mtime_ns, weights.stat().st_ino) == (stat.st_size, stat.st_mtime_ns, stat.st_ino)
    # the resumed run recorded this folder's path; the weights it recorded are w1's
    expected = refused_model(out, "detector", str(models / "gdino"), models / "gdino", str(models / "gdino"), lab.w1 / "models/gdino")
    assert_refused(segment(lab, tmp_path / "w", out), expected, out, before)


def test_an_edited_processor_config_is_another_model(lab: Lab, out: Path, tmp_path: Path):
    models = Path(shutil.copytree(lab.w1 / "models", tmp_path / "w" / "models"))
    config = models / "gdino" / "processor_config.json"
    data = json.loads(config.read_text())
    data["image_processor"]["size"]["shortest_edge"] = 288  # what the detector sees changes
    config.write_text(json.dumps(data))
    before = snapshot(out)
    expected = refused_model(out, "detector", str(models / "gdino"), models / "gdino", str(lab.w1 / "models/gdino"), lab.w1 / "models/gdino")
    assert_refused(segment(lab, tmp_path / "w", out), expected, out, before)


def test_a_symlink_pointed_at_other_weights_is_refused(lab: Lab, out: Path, tmp_path: Path):
    (tmp_path / "w" / "models").mkdir(parents=True)
    link = tmp_path / "w" / "models" / "gdino"
    link.symlink_to(lab.w2 / "models/gdino", target_is_directory=True)
    before = snapshot(out)
    expected = refused_model(out, "detector", str(link), lab.w2 / "models/gdino", str(lab.w1 / "models/gdino"), lab.w1 / "models/gdino")
    assert_refused(segment(lab, tmp_path / "w", out, "models/gdino", str(lab.w1 / "models/sam")), expected, out, before)


def test_other_segmenter_weights_under_the_same_name_are_refused(lab: Lab, out: Path, tmp_path: Path):
    models = Path(shutil.copytree(lab.w1 / "models", tmp_path / "w" / "models"))
    shutil.rmtree(models / "sam")
    shutil.copytree(lab.other_sam, models / "sam")
    before = snapshot(out)
    expected = refused_model(out, "segmenter", str(models / "sam"), models / "sam", str(lab.w1 / "models/sam"), lab.w1 / "models/sam")
    assert_refused(segment(lab, tmp_path / "w", out), expected, out, before)


# --- hand-edited or missing run files -----------------------------------------------------------------------


def test_a_run_of_an_older_iapas_is_refused_until_restarted(lab: Lab, out: Path):
    run = json.loads((out / "run.json").read_text())
    for kind in ("detector", "segmenter"):  # what an iapas without fingerprints wrote
        del run["signature"][f"{kind}_fingerprint"]
        run["signature"][kind] = f"models/{'gdino' if kind == 'detector' else 'sam'}"
    (out / "run.json").write_text(json.dumps(run))
    before = snapshot(out)
    expected = f"error: {out} holds results made by an older iapas without model fingerprints; {ADVICE}"
    assert_refused(segment(lab, lab.w1, out), expected, out, before)
    restarted = segment(lab, lab.w1, out, "models/gdino", "models/sam", "--restart")
    assert restarted.exit_code == 0 and "segmented now          │ 1" in restarted.output, restarted.output
    signature = json.loads((out / "run.json").read_text())["signature"]
    assert signature["detector_fingerprint"] == fingerprint(lab.w1 / "models/gdino")
    assert signature["segmenter_fingerprint"] == fingerprint(lab.w1 / "models/sam")


def test_results_without_their_run_file_are_refused(lab: Lab, out: Path):
    (out / "run.json").unlink()
    before = snapshot(out)
    assert_refused(segment(lab, lab.w2, out), f"error: {out} holds results but no run.json saying what made them; {ADVICE}", out, before)


@pytest.mark.parametrize("text", ["[]", '{"signature": "models/gdino"}', '{"signature": {"detector"', ""])
def test_an_unreadable_run_file_is_refused_in_one_line(lab: Lab, out: Path, text: str):
    (out / "run.json").write_text(text)
    before = snapshot(out)
    assert_refused(segment(lab, lab.w2, out), f"error: {out / 'run.json'}: unreadable, no signature of its results; {ADVICE}", out, before)


def test_a_forged_empty_fingerprint_is_another_model(lab: Lab, out: Path):
    run = json.loads((out / "run.json").read_text())
    run["signature"]["detector_fingerprint"] = None
    (out / "run.json").write_text(json.dumps(run))
    before = snapshot(out)
    expected = (f"error: {out} holds results made with another detector: {lab.w1 / 'models/gdino'} ({short(lab.w1 / 'models/gdino')}) "
                f"is not the model its results were made with ({lab.w1 / 'models/gdino'}, None); {ADVICE}")
    assert_refused(segment(lab, lab.w1, out), expected, out, before)


# --- evaluate, bench, the station's store, a calibrated profile ------------------------------------------


def evaluate_args(command: str, data: Path, out: Path) -> list[str]:
    where = ["--dataset", "mvtec", "--root", str(data)] if command == "evaluate" else ["--root-dir", str(data.parent)]
    return [command, *where, "--out", str(out), "--protocol", "full", "--detector", "models/gdino", "--segmenter", "models/sam",
            "--device", "cpu", "--tagger", "manual", "--tags", "widget", "--llm", "knowledge", "--quiet"]


@pytest.mark.parametrize("command", ["evaluate", "bench"])
def test_evaluate_and_bench_refuse_other_weights_under_the_same_name(lab: Lab, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, command: str):
    from tests.test_evaluation import make_mvtec

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    data = make_mvtec(tmp_path / "data" / "MVTecAD", ("alpha",), n_good=1, n_bad=1, size=(32, 32))
    out = tmp_path / "run"
    monkeypatch.chdir(lab.w1)
    first = runner.invoke(app, evaluate_args(command, data, out), env={"COLUMNS": "200"})
    assert first.exit_code == 0, first.output
    before = snapshot(out)
    monkeypatch.chdir(lab.w2)
    result = runner.invoke(app, evaluate_args(command, data, out), env={"COLUMNS": "200"})
    run = out if command == "evaluate" else out / "mvtec" / "default"
    expected = refused_model(run, "detector", str(lab.w2 / "models/gdino"), lab.w2 / "models/gdino",
                             str(lab.w1 / "models/gdino"), lab.w1 / "models/gdino")
    assert_refused(result, expected, out, before)
    monkeypatch.chdir(lab.root)  # the same weights by absolute path: resumed
    again = runner.invoke(app, [a.replace("models/", f"{lab.w1}/models/") for a in evaluate_args(command, data, out)], env={"COLUMNS": "200"})
    assert again.exit_code == 0, again.output
    metrics = out / "metrics.json" if command == "evaluate" else out / "mvtec" / "default" / "metrics.json"
    assert json.loads(metrics.read_text())["categories"]["alpha"]["n_new"] == 0


class Named(Detector, Segmenter):
    """A model stand-in known by the folder it would be loaded from (a store never runs it here)."""

    dtype, device = "torch.float32", "cpu"

    def __init__(self, name: str) -> None:
        self.name = name


def test_a_station_store_refuses_other_weights_under_the_same_name(lab: Lab, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from iapas.pipeline.stage2 import Pipeline
    from iapas.engine.runner import RunConflictError
    from iapas.serve.store import DiskStore

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    profiles = {"part": Profile.load(lab.profile)}
    store = tmp_path / "station"
    monkeypatch.chdir(lab.w1)
    DiskStore(store, Pipeline(Named("models/gdino"), Named("models/sam")), profiles)
    (store / "part" / "results.jsonl").write_text(json.dumps({"key": "0" * 32, "status": "ok"}) + "\n")  # one inspection
    before = snapshot(store)
    monkeypatch.chdir(lab.w2)
    with pytest.raises(RunConflictError) as refused:
        DiskStore(store, Pipeline(Named("models/gdino"), Named("models/sam")), profiles)
    assert str(refused.value) == (
        f"{store / 'part'} holds results made with another detector: {lab.w2 / 'models/gdino'} ({short(lab.w2 / 'models/gdino')}) "
        f"is not the model its results were made with ({lab.w1 / 'models/gdino'}, {short(lab.w1 / 'models/gdino')}); "
        "use another --store folder"
    )
    assert snapshot(store) == before
    monkeypatch.chdir(lab.root)  # the same weights by absolute path: the store opens
    DiskStore(store, Pipeline(Named(str(lab.w1 / "models/gdino")), Named(str(lab.w1 / "models/sam"))), profiles)


def test_a_profile_calibrated_with_other_weights_warns_at_segment(lab: Lab, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    profile = Path(shutil.copy(lab.profile, tmp_path / "part.yaml"))
    monkeypatch.chdir(lab.w1)
    calibrate_args = ["calibrate", "--normal", str(lab.image), "--false-alarm-rate", "0.5", "--out", str(tmp_path / "cal"),
                      "--detector", "models/gdino", "--segmenter", "models/sam", "--device", "cpu"]
    calibrated = runner.invoke(app, [*calibrate_args, "--profile", str(profile)])
    assert calibrated.exit_code == 0, calibrated.output
    signature = Profile.load(profile).decision.signature
    assert signature["detector_fingerprint"] == fingerprint(lab.w1 / "models/gdino")
    # its stage 2 results of an older iapas: refused, with an option calibrate has; --restart redoes them
    cal = tmp_path / "cal"
    run = json.loads((cal / "run.json").read_text())
    del run["signature"]["detector_fingerprint"], run["signature"]["segmenter_fingerprint"]
    (cal / "run.json").write_text(json.dumps(run))
    before = snapshot(cal)
    again = runner.invoke(app, [*calibrate_args, "--profile", str(profile)])
    assert_refused(again, f"error: {cal} holds results made by an older iapas without model fingerprints; {ADVICE}", cal, before)
    restarted = runner.invoke(app, [*calibrate_args, "--profile", str(profile), "--restart"])
    assert restarted.exit_code == 0, restarted.output
    assert "detector_fingerprint" in json.loads((cal / "run.json").read_text())["signature"]
    assert signature["segmenter_fingerprint"] == fingerprint(lab.w1 / "models/sam")
    warning = "warning: the profile's threshold was calibrated on results made with another detector"

    same = segment(lab, lab.root, tmp_path / "a", str(lab.w1 / "models/gdino"), str(lab.w1 / "models/sam"), profile=profile)
    assert same.exit_code == 0 and "warning" not in same.output, same.output
    other = segment(lab, lab.w2, tmp_path / "b", profile=profile)
    assert other.exit_code == 0, other.output
    text = " ".join(other.output.split())
    assert (f"{warning}: {lab.w2 / 'models/gdino'} ({short(lab.w2 / 'models/gdino')}) is not the model its results were made with "
            f"({lab.w1 / 'models/gdino'}, {short(lab.w1 / 'models/gdino')}); its false-alarm rate does not hold for this run") in text

    old = Profile.load(profile)  # calibrated by an iapas without fingerprints
    del old.decision.signature["detector_fingerprint"], old.decision.signature["segmenter_fingerprint"]
    old.save(profile)
    legacy = segment(lab, lab.w1, tmp_path / "c", profile=profile)
    assert legacy.exit_code == 0, legacy.output
    assert ("warning: the profile's threshold was calibrated on results made by an older iapas without model fingerprints; "
            "its false-alarm rate does not hold") in " ".join(legacy.output.split())
