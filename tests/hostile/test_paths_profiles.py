"""Hostile and hand-edited profiles and names (issue 18, parts 3 and 4).

A name that becomes a path (a category, a --categories filter) never leads outside its folder,
and a profile that is hostile (YAML alias bombs, deep nesting) or hand-edited wrong (every field
of the decision section, stage-1 fields) is refused with one line naming the file and the field:
never a traceback, a hang, a silent every-part-OK station or a 500 after running the models.
Each case asserts the exact message, the exit code or exception, and (for the commands) that
nothing was written anywhere under the test's folder and nothing already there was lost.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from iapas.cli import app
from iapas.product.profile import Profile, ProfileError

runner = CliRunner()
RULE = "use 1 to 64 ASCII letters, digits, '_', '.' or '-', not starting with '.' or '-'"
GOOD = {"category": "bottle", "object_tag": "bottle", "caption": "scratch . crack .", "anomaly_nouns": ["scratch", "crack"]}
DECISION = {"threshold": 0.05, "min_defect_area": 0, "rule": "conformal", "target_rate": 0.1, "n_calibration": 20,
            "observed_false_alarm_rate": 0.05, "score_min": 0.0, "score_max": 0.1, "n_anomalous": 0, "detection_rate": None}


def tree(root: Path) -> dict[str, tuple[int, bytes]]:
    """Every file and folder under ``root``: relative path -> (size, first bytes); folders (-1, b'')."""
    found: dict[str, tuple[int, bytes]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames:
            found[os.path.relpath(os.path.join(dirpath, name), root)] = (-1, b"")
        for name in filenames:
            path = Path(dirpath) / name
            found[os.path.relpath(path, root)] = (path.stat().st_size, path.read_bytes()[:4096])
    return found


def error_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.strip()]


def name_error(what: str, shown: str, why: str) -> str:
    return f"{what} {shown} is not a valid name ({why}): {RULE}"


def write_yaml(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def profile_yaml(category: str = "bottle", decision: dict | None = None, **fields: object) -> str:
    data = {**GOOD, "category": category, **fields}
    if decision is not None:
        data["decision"] = decision
    return json.dumps(data)  # JSON is YAML: the values exactly as given (.inf etc. are written as YAML below)


@pytest.fixture(autouse=True)
def no_models(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every refusal here comes before a model is loaded."""
    from iapas.pipeline.stage2 import Pipeline

    monkeypatch.setattr(Pipeline, "from_config", classmethod(lambda cls, *a, **k: pytest.fail("models loaded")))


# --- the name rule ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["metal_nut", "01", "kos01", "pcb1", "pipe_fryum", "Class1", "Woven_001", "MTD",
                                  "bottle-2", "cap.v2", "_x", "a" * 64])
def test_real_names_pass(name: str) -> None:
    from iapas.core.names import check_name

    assert check_name(name, "category") == name
    assert Profile.from_dict({**GOOD, "category": name}).category == name


HOSTILE_NAMES = [
    ("../../X", "'../../X'", "it contains a path separator"),
    ("/etc/cron.d", "'/etc/cron.d'", "it contains a path separator"),
    ("..\\..\\X", "'..\\\\..\\\\X'", "it contains a path separator"),
    ("..", "'..'", "it starts with '.'"),
    (".", "'.'", "it starts with '.'"),
    (".hidden", "'.hidden'", "it starts with '.'"),
    ("-rf", "'-rf'", "it starts with '-'"),
    ("", "''", "it is empty"),
    ("a" * 65, "'" + "a" * 64 + "'...", "it is 65 characters long"),
    ("bottle\x00", "'bottle\\x00'", "it contains a control character"),
    ("bot\ntle", "'bot\\ntle'", "it contains a control character"),
    ("flasch\u00e9", "'flasch\\xe9'", "it contains '\\xe9'"),
    ("bottle 2", "'bottle 2'", "it contains ' '"),
    ("C:", "'C:'", "it contains ':'"),
]


@pytest.mark.parametrize(("category", "shown", "why"), HOSTILE_NAMES, ids=range(len(HOSTILE_NAMES)))
def test_profile_with_a_hostile_category_is_refused_on_load(tmp_path: Path, category: str, shown: str, why: str) -> None:
    path = write_yaml(tmp_path / "p.yaml", profile_yaml(category))
    with pytest.raises(ProfileError) as info:
        Profile.load(path)
    assert str(info.value) == name_error(f"{path}: 'category'", shown, why)


def test_a_category_that_is_not_a_string_is_refused(tmp_path: Path) -> None:
    path = write_yaml(tmp_path / "p.yaml", profile_yaml(category=5))  # type: ignore[arg-type]
    with pytest.raises(ProfileError) as info:
        Profile.load(path)
    assert str(info.value) == f"{path}: 'category' must be a name (1 to 64 ASCII letters, digits, '_', '.' or '-', " \
                              "not starting with '.' or '-'), got int"


# --- every field of a decision section, wrong in each way -----------------------------------------


DECISION_CASES = [
    ("threshold", ".inf", "'threshold' must be a finite number, got inf"),
    ("threshold", "-.inf", "'threshold' must be a finite number, got -inf"),
    ("threshold", ".nan", "'threshold' must be a finite number, got nan"),
    ("threshold", "1.0e+309", "'threshold' must be a finite number, got inf"),
    ("threshold", "-3", "'threshold' must be >= 0, got -3"),
    ("threshold", "abc", "'threshold' must be a number, got 'abc'"),
    ("threshold", "'0.5'", "'threshold' must be a number, got '0.5'"),
    ("threshold", "true", "'threshold' must be a number, got True"),
    ("threshold", "[0.1]", "'threshold' must be a number, got [0.1]"),
    ("min_defect_area", ".inf", "'min_defect_area' must be a non-negative integer, got inf"),
    ("min_defect_area", "2.5", "'min_defect_area' must be a non-negative integer, got 2.5"),
    ("min_defect_area", "false", "'min_defect_area' must be a non-negative integer, got False"),
    ("score_min", "abc", "'score_min' must be a number, got 'abc'"),
    ("score_min", "0.5", "'score_min' (0.5) must be <= 'score_max' (0.1)"),
    ("score_max", ".inf", "'score_max' must be a finite number, got inf"),
    ("score_max", ".nan", "'score_max' must be a finite number, got nan"),
    ("target_rate", "0", "'target_rate' must be in (0, 1), got 0"),
    ("target_rate", "1", "'target_rate' must be in (0, 1), got 1"),
    ("target_rate", "1.5", "'target_rate' must be in (0, 1), got 1.5"),
    ("target_rate", ".nan", "'target_rate' must be a finite number, got nan"),
    ("observed_false_alarm_rate", "-0.1", "'observed_false_alarm_rate' must be in [0, 1], got -0.1"),
    ("detection_rate", "2", "'detection_rate' must be in [0, 1], got 2"),
    ("n_calibration", "-3", "'n_calibration' must be >= 0, got -3"),
    ("n_calibration", "20.0", "'n_calibration' must be a non-negative integer, got 20.0"),
    ("n_anomalous", "many", "'n_anomalous' must be a non-negative integer, got 'many'"),
    ("signature", "[1, 2]", "'signature' must be a mapping, got [1, 2]"),
    ("date", "2026-01-01", "'date' must be a string, got datetime.date(2026, 1, 1)"),
]


def decision_yaml(field: str, value: str) -> str:
    lines = [f"{k}: {json.dumps(v)}" for k, v in GOOD.items()] + ["decision:"]
    lines += [f"  {k}: {value if k == field else json.dumps(v)}" for k, v in {**DECISION, field: None}.items()]
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize(("field", "value", "expected"), DECISION_CASES, ids=[f"{f}={v}" for f, v, _ in DECISION_CASES])
def test_every_decision_field_is_checked_on_load_naming_it(tmp_path: Path, field: str, value: str, expected: str) -> None:
    path = write_yaml(tmp_path / "p.yaml", decision_yaml(field, value))
    with pytest.raises(ProfileError) as info:
        Profile.load(path)
    assert str(info.value) == f"{path}: decision: {expected}"


def test_json_profile_with_1e309_threshold(tmp_path: Path) -> None:
    path = tmp_path / "p.json"
    path.write_text(json.dumps({**GOOD, "decision": DECISION}).replace('"threshold": 0.05', '"threshold": 1e309'))
    with pytest.raises(ProfileError) as info:
        Profile.load(path)
    assert str(info.value) == f"{path}: decision: 'threshold' must be a finite number, got inf"


PROFILE_CASES = [
    ("size_threshold", ".inf", "'size_threshold' must be a finite number, got inf"),
    ("size_threshold", "0", "'size_threshold' must be > 0, got 0"),
    ("object_size", "2", "'object_size' must be in (0, 1], got 2"),
    ("include_object_tag", "maybe", "'include_object_tag' must be true or false, got 'maybe'"),
    ("caption", "5", "'caption' must be a string, got 5"),
    ("object_tag", "[a, b]", "'object_tag' must be a string, got ['a', 'b']"),
    ("anomaly_nouns", "scratch", "'anomaly_nouns' must be a list of strings, got 'scratch'"),
    ("models", "sam", "'models' must be a mapping, got 'sam'"),
    ("format", "-1", "'format' must be >= 0, got -1"),
]


@pytest.mark.parametrize(("field", "value", "expected"), PROFILE_CASES, ids=[f"{f}={v}" for f, v, _ in PROFILE_CASES])
def test_stage1_fields_are_checked_on_load_naming_them(tmp_path: Path, field: str, value: str, expected: str) -> None:
    lines = [f"{k}: {json.dumps(v)}" for k, v in GOOD.items() if k != field] + [f"{field}: {value}"]
    path = write_yaml(tmp_path / "p.yaml", "\n".join(lines) + "\n")
    with pytest.raises(ProfileError) as info:
        Profile.load(path)
    assert str(info.value) == f"{path}: {expected}"


# --- hostile YAML/JSON ----------------------------------------------------------------------------------


def alias_bomb() -> str:
    """About 1 KB that PyYAML would expand to 9**9 strings (hundreds of millions of objects)."""
    lines = [f"{k}: {json.dumps(v)}" for k, v in GOOD.items()] + ["stage1:", '  a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i, (name, prev) in enumerate(zip("bcdefghi", "abcdefgh")):
        lines.append(f"  {name}: &{name} [" + ",".join([f"*{prev}"] * 9) + "]")
    return "\n".join(lines) + "\n"


def test_alias_bomb_is_refused_at_the_first_anchor(tmp_path: Path) -> None:
    text = alias_bomb()
    assert len(text) < 1200
    path = write_yaml(tmp_path / "p.yaml", text)
    with pytest.raises(ProfileError) as info:
        Profile.load(path)
    assert str(info.value) == f"{path}: line 6, column 6: anchors and aliases (&name, *name) are not allowed in a profile"


def test_a_single_anchor_is_refused(tmp_path: Path) -> None:
    path = write_yaml(tmp_path / "p.yaml", "category: &c bottle\nobject_tag: bottle\ncaption: 'scratch .'\n")
    with pytest.raises(ProfileError) as info:
        Profile.load(path)
    assert str(info.value) == f"{path}: line 1, column 11: anchors and aliases (&name, *name) are not allowed in a profile"


@pytest.mark.parametrize("suffix", [".yaml", ".json"])
def test_deep_nesting_is_one_line(tmp_path: Path, suffix: str) -> None:
    deep = "[" * 5000 + "]" * 5000
    path = tmp_path / f"p{suffix}"
    path.write_text('{"category": "bottle", "object_tag": "bottle", "caption": "scratch .", "stage1": {"x": ' + deep + "}}\n")
    with pytest.raises(ProfileError) as info:
        Profile.load(path)
    where = "line 1, column 118: " if suffix == ".yaml" else ""
    assert str(info.value) == f"{path}: {where}lists or mappings nested more than 32 levels deep; refused"


def test_a_knowledge_file_is_read_as_safely_as_a_profile(tmp_path: Path) -> None:
    """`--knowledge-file` is edited by hand too: the same refusals, one line each, naming the file."""
    from iapas.prompts.knowledge import Knowledge, KnowledgeError

    cases = {
        "bomb.yaml": (alias_bomb(), "line 6, column 6: anchors and aliases (&name, *name) are not allowed in a knowledge file"),
        "deep.yaml": ("objects: " + "[" * 5000 + "]" * 5000 + "\n",
                      "line 1, column 41: lists or mappings nested more than 32 levels deep; refused"),
        "broken.yaml": ("objects: [unclosed\n", "line 2, column 1: not valid YAML: expected ',' or ']', but got '<stream end>'"
                        " (while parsing a flow sequence)"),
    }
    for name, (text, message) in cases.items():
        path = write_yaml(tmp_path / name, text)
        with pytest.raises(KnowledgeError) as info:
            Knowledge.load(path)
        assert str(info.value) == f"{path}: {message}"


# --- the commands: one line, exit 2, nothing written ----------------------------------------------------


def needs_serve_extra() -> None:
    for module in ("fastapi", "uvicorn"):
        pytest.importorskip(module)


def command_args(command: str, work: Path, profile: Path) -> list[str]:
    """segment, calibrate or serve with ``profile``, writing under ``work`` (refused before any model)."""
    if command == "serve":
        needs_serve_extra()
        return ["serve", "--profile", str(profile), "--store", str(work / "store"), "--port", "0"]
    if command == "calibrate":
        return ["calibrate", "--profile", str(profile), "--normal", str(work / "img"), "--out", str(work / "out"),
                "--false-alarm-rate", "0.5"]
    return ["segment", str(work / "img"), "--profile", str(profile), "--out", str(work / "out")]


def images(folder: Path, count: int = 2) -> Path:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(count):
        rgb = rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)
        rgb[0, 0] = i  # which image a batch holds (the pipeline sees pixels, not names)
        Image.fromarray(rgb).save(folder / f"{i}.png")
    return folder


ISSUE_DECISIONS = [  # the issue's examples: every part OK, every part NG, crashes of segment
    ("threshold", ".inf", "'threshold' must be a finite number, got inf"),
    ("threshold", "-3", "'threshold' must be >= 0, got -3"),
    ("min_defect_area", ".inf", "'min_defect_area' must be a non-negative integer, got inf"),
    ("score_min", "abc", "'score_min' must be a number, got 'abc'"),
]


@pytest.mark.parametrize("command", ["segment", "calibrate", "serve"])
@pytest.mark.parametrize(("field", "value", "expected"), ISSUE_DECISIONS, ids=[f"{f}={v}" for f, v, _ in ISSUE_DECISIONS])
def test_commands_refuse_a_bad_decision_before_loading_models(
    tmp_path: Path, command: str, field: str, value: str, expected: str
) -> None:
    work = tmp_path / "work"
    images(work / "img")
    profile = write_yaml(work / "p.yaml", decision_yaml(field, value))
    before = tree(tmp_path)
    result = runner.invoke(app, command_args(command, work, profile))
    assert result.exit_code == 2, result.output
    assert error_lines(result.output) == [f"error: {profile}: decision: {expected}"]
    assert tree(tmp_path) == before


@pytest.mark.parametrize("command", ["segment", "calibrate", "serve"])
@pytest.mark.parametrize("category", ["../../X", "ABS", "..\\..\\X"])
def test_commands_refuse_a_category_that_leaves_the_folder(tmp_path: Path, command: str, category: str) -> None:
    work = tmp_path / "a" / "b"
    images(work / "img")
    if category == "ABS":
        category = str(tmp_path / "elsewhere")
    profile = write_yaml(work / "p.yaml", profile_yaml(category))
    before = tree(tmp_path)
    result = runner.invoke(app, command_args(command, work, profile))
    assert result.exit_code == 2, result.output
    shown = ascii(category) if len(category) <= 64 else ascii(category[:64]) + "..."
    assert error_lines(result.output) == [f"error: {name_error(f'{profile}: {chr(39)}category{chr(39)}', shown, 'it contains a path separator')}"]
    assert tree(tmp_path) == before  # no lock, run.json, uploads or maps anywhere


def test_segment_refuses_an_infinite_manual_threshold(tmp_path: Path) -> None:
    """(-1 and nan are refused by the option's own minimum.)"""
    images(tmp_path / "img")
    profile = write_yaml(tmp_path / "p.yaml", profile_yaml())
    before = tree(tmp_path)
    result = runner.invoke(app, ["segment", str(tmp_path / "img"), "--profile", str(profile), "--out", str(tmp_path / "out"),
                                 "--threshold", "inf"])
    assert result.exit_code == 2, result.output
    assert error_lines(result.output) == ["error: --threshold must be a finite number, got inf"]
    assert tree(tmp_path) == before


CATEGORY_OPTIONS = [
    ("evaluate", "../../X", "'../../X'", "it contains a path separator"),
    ("evaluate", "/tmp", "'/tmp'", "it contains a path separator"),
    ("evaluate", "..", "'..'", "it starts with '.'"),
    ("bench", "../X", "'../X'", "it contains a path separator"),
    ("bench", "a\x00b", "'a\\x00b'", "it contains a control character"),
    ("profile", "..\\X", "'..\\\\X'", "it contains a path separator"),
    ("profile", "x" * 200, "'" + "x" * 64 + "'...", "it is 200 characters long"),
    ("profile-dataset", "../X", "'../X'", "it contains a path separator"),
]


@pytest.mark.parametrize(("command", "value", "shown", "why"), CATEGORY_OPTIONS, ids=range(len(CATEGORY_OPTIONS)))
def test_category_options_are_checked_where_they_enter(tmp_path: Path, command: str, value: str, shown: str, why: str) -> None:
    root = tmp_path / "data"
    (root / "bottle" / "train" / "good").mkdir(parents=True)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "kept.txt").write_text("earlier results")
    before = tree(tmp_path)
    out = str(tmp_path / "out")
    args, what = {
        "evaluate": (["evaluate", "--dataset", "mvtec", "--root", str(root), "--out", out, "--categories", f"bottle,{value}"],
                     "--categories"),
        "bench": (["bench", "--root-dir", str(tmp_path), "--out", out, "--categories", f"mvtec:{value}"], "--categories mvtec:"),
        "profile": (["profile", "--category", value, "--object", "bottle", "--prompts", "scratch", "--out", f"{out}/p.yaml"],
                    "--category"),
        "profile-dataset": (["profile", "--dataset", "mvtec", "--root", str(root), "--categories", value, "--out", out],
                            "--categories"),
    }[command]
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    assert error_lines(result.output) == [f"error: {name_error(what, shown, why)}"]
    assert tree(tmp_path) == before


def test_a_folder_dataset_whose_folder_is_no_valid_name_gets_one(tmp_path: Path) -> None:
    """A user's own folder ("my parts", "Ürün 1") names the folder dataset's category: made
    valid, not refused (nothing else could name it); a name that leaves nothing gets 'folder'."""
    from iapas.data import get_dataset

    for folder, expected in (("my parts", "my_parts"), ("Ürün 1", "r_n_1"), ("...", "folder"), ("-x y", "x_y")):
        root = tmp_path / folder
        images(root / "good")
        images(root / "defect")
        assert get_dataset("folder", root).categories() == [expected], folder


# --- the station's store ----------------------------------------------------------------------------------


@pytest.mark.parametrize("key", ["../escape", "/abs", "..", "a/../../b"])
def test_disk_store_refuses_a_category_that_leaves_the_store(tmp_path: Path, key: str) -> None:
    from iapas.serve.store import DiskStore

    store = tmp_path / "a" / "store"
    store.mkdir(parents=True)
    profile = Profile.from_dict(GOOD)
    profile.category = key  # changed after loading, as a program could
    before = tree(tmp_path)
    with pytest.raises(ValueError) as info:
        DiskStore(store, None, {key: profile})  # type: ignore[arg-type]  # refused before the pipeline is asked
    assert str(info.value) == name_error("category", repr(key), "it starts with '.'" if key == ".." else "it contains a path separator")
    assert tree(tmp_path) == before


def test_disk_store_refuses_a_category_folder_linked_outside(tmp_path: Path) -> None:
    from iapas.serve.store import DiskStore

    store, outside = tmp_path / "store", tmp_path / "outside"
    store.mkdir()
    outside.mkdir()
    (store / "bottle").symlink_to(outside)
    before = tree(tmp_path)
    with pytest.raises(ValueError) as info:
        DiskStore(store, None, {"bottle": Profile.from_dict(GOOD)})  # type: ignore[arg-type]
    assert str(info.value) == f"bottle leads outside {store} (to {outside.resolve()}); refused"
    assert tree(tmp_path) == before


# --- calibrate: no threshold from a non-finite score ----------------------------------------------------


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_calibrate_refuses_a_non_finite_score_naming_the_image(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                               tiny_models: dict[str, Path], bad: float) -> None:
    """A model that gives NaN or infinity on one image (e.g. float16 overflow): no threshold written."""
    from iapas.pipeline.stage2 import Pipeline

    monkeypatch.undo()  # the models load here
    real_run = Pipeline.run

    def run(self, batch, profile=None):  # type: ignore[no-untyped-def]
        results = real_run(self, batch, profile)
        for rgb, result in zip(batch, results):
            if tuple(np.asarray(rgb)[0, 0]) == (1, 1, 1):  # the image 1.png
                result.anomaly_map[0, 0] = bad
        return results

    monkeypatch.setattr(Pipeline, "run", run)
    folder = images(tmp_path / "img", 3)
    profile = Profile.from_dict(GOOD).save(tmp_path / "p.yaml")
    saved = profile.read_bytes()
    result = runner.invoke(app, ["calibrate", "--profile", str(profile), "--normal", str(folder), "--out", str(tmp_path / "cal"),
                                 "--false-alarm-rate", "0.5", "--detector", str(tiny_models["grounding-dino"]),
                                 "--segmenter", str(tiny_models["sam"]), "--device", "cpu"])
    assert result.exit_code == 2, result.output
    assert error_lines(result.output)[-1] == (
        f"error: {folder / '1.png'}: its image score is {bad} (not a finite number: the models gave NaN or infinity on it); "
        "no threshold is written from it: check the image and the models (e.g. --dtype float32), or leave it out"
    )
    assert profile.read_bytes() == saved  # the profile as it was: no decision section


def test_build_station_refuses_a_decision_changed_after_loading(tmp_path: Path) -> None:
    """A program that edits a profile's decision after loading it: refused when the station is
    built (the models never run), not answered 500 on every inspection."""
    from iapas.serve import build_station

    needs_serve_extra()
    profile = Profile.from_dict({**GOOD, "decision": DECISION})
    profile.decision.threshold = float("inf")  # type: ignore[union-attr]
    with pytest.raises(ProfileError) as info:
        build_station(None, {"bottle": profile}, store_dir=tmp_path / "store")
    assert str(info.value) == "profile 'bottle': decision: 'threshold' must be a finite number, got inf"
    assert not (tmp_path / "store").exists()


# --- a hand-edited results.jsonl cannot reach outside its run folder -----------------------------------


def test_resume_never_deletes_a_file_outside_the_run_folder(tmp_path: Path) -> None:
    """A results.jsonl whose stale record names ``../victim.png``: the record is dropped, the
    file outside the run folder is kept (today it was deleted with the record's outputs)."""
    from iapas.engine import ResultsLog
    from iapas.engine.runner import match_finished, source_stamp

    image = images(tmp_path / "img", 1) / "0.png"
    out = tmp_path / "out"
    out.mkdir()
    victim = tmp_path / "victim.png"
    victim.write_bytes(b"precious")
    record = {"key": "old", **source_stamp(image), "status": "failed", "error": "x",
              "outputs": {"map": "../victim.png", "mask": "../../victim.png", "overlay": str(victim)}}
    (out / "results.jsonl").write_text(json.dumps(record) + "\n")
    finished = match_finished([image], ["0"], ResultsLog(out / "results.jsonl"), out, 0.3, True)
    assert finished == {}
    assert victim.read_bytes() == b"precious"
    assert ResultsLog(out / "results.jsonl").read() == {}  # the stale record itself is dropped


API_NAMES = [
    ("../../X", "'../../X'", "it contains a path separator"),
    ("/etc", "'/etc'", "it contains a path separator"),
    ("..", "'..'", "it starts with '.'"),
    ("bottle\u0000", "'bottle\\x00'", "it contains a control character"),
]


@pytest.mark.parametrize(("category", "shown", "why"), API_NAMES, ids=range(len(API_NAMES)))
def test_the_api_refuses_a_category_that_is_not_a_name(tmp_path: Path, category: str, shown: str, why: str) -> None:
    """400 with the name rule, before the image is read or a model runs (the worker never starts)."""
    needs_serve_extra()
    from starlette.testclient import TestClient

    from iapas.serve.app import create_app
    from iapas.serve.store import MemoryStore
    from iapas.serve.worker import ModelWorker

    profiles = {"bottle": Profile.from_dict(GOOD)}
    app = create_app(MemoryStore(profiles), profiles, ModelWorker(None, profiles))  # type: ignore[arg-type]
    with TestClient(app, base_url="http://127.0.0.1") as client:  # a loopback Host, as the station requires
        response = client.post("/v1/inspect", files={"file": ("part.png", b"not read", "application/octet-stream")},
                               data={"category": category})
    assert response.status_code == 400
    assert response.json() == {"detail": f"{name_error('category', shown, why)}; known: bottle"}


def test_calibrate_refuses_an_f1_threshold_below_zero() -> None:
    """Best F1 when every image is NG, one defective image scoring 0: the threshold would be just
    below 0, which a profile cannot hold (threshold >= 0)."""
    from iapas.product.calibration import calibrate
    from iapas.product.decision import DecisionError

    with pytest.raises(DecisionError) as info:
        calibrate([0.5], [0.0, 0.6], rule="f1")
    assert str(info.value) == ("the f1 rule's best threshold flags every image, those scoring 0 included; a threshold (>= 0) "
                               "cannot: calibrate on more images, or use --rule conformal")
