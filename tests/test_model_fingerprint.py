"""Models identified by content (issue 18, part 1): a folder by the SHA-256 of its files, with
the file hashes cached by path, size and time; a hub id by the revision the local cache
resolves; signatures compared by fingerprint, names and paths informative only."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from pathlib import Path

import pytest

from iapas.models import fingerprint
from iapas.models.fingerprint import (
    OLDER,
    cache_file,
    model_fingerprint,
    model_identity,
    signature_diff,
)


@pytest.fixture(autouse=True)
def own_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    return tmp_path / "xdg" / "iapas" / "fingerprints.json"


def oracle(folder: Path, names: list[str]) -> str:
    """The fingerprint by hand: SHA-256 of 'name<TAB>sha256(bytes)' lines of the named files."""
    lines = "".join(f"{n}\t{hashlib.sha256((folder / n).read_bytes()).hexdigest()}\n" for n in sorted(names))
    return "sha256:" + hashlib.sha256(lines.encode()).hexdigest()


def model_folder(folder: Path, weights: bytes = b"\x01" * 64) -> Path:
    folder.mkdir(parents=True)
    (folder / "config.json").write_text('{"model_type": "grounding-dino"}')
    (folder / "model.safetensors").write_bytes(weights)
    (folder / "tokenizer.json").write_text("{}")
    return folder


def test_a_folder_is_its_config_weights_and_processor_files_not_its_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    a = model_folder(tmp_path / "w1" / "models" / "gdino")
    expected = oracle(a, ["config.json", "model.safetensors", "tokenizer.json"])
    assert model_fingerprint(str(a)) == expected
    monkeypatch.chdir(tmp_path / "w1")
    assert model_fingerprint("models/gdino") == model_fingerprint("./models/gdino/") == expected
    monkeypatch.chdir(tmp_path)
    assert model_fingerprint("w1/models/gdino") == expected
    # a copy is the same model; docs, hidden files (hf download's .cache) and subfolders are not part of it
    copy = tmp_path / "copy"
    shutil.copytree(a, copy)
    (copy / "README.md").write_text("# card")
    (copy / "LICENSE").write_text("x")
    (copy / ".cache").mkdir()
    (copy / ".cache" / "x.lock").write_text("")
    (copy / "sub").mkdir()
    (copy / "sub" / "other.bin").write_bytes(b"x")
    assert model_fingerprint(str(copy)) == expected
    # one weight byte, the config, a processor file or a new weight shard: another model
    other = model_folder(tmp_path / "w2" / "models" / "gdino", weights=b"\x01" * 63 + b"\x02")
    assert model_fingerprint(str(other)) == oracle(other, ["config.json", "model.safetensors", "tokenizer.json"]) != expected
    (copy / "tokenizer.json").write_text('{"x": 1}')
    assert model_fingerprint(str(copy)) != expected
    (copy / "tokenizer.json").write_text("{}")
    (copy / "model-00002.safetensors").write_bytes(b"")
    assert model_fingerprint(str(copy)) != expected


def test_a_big_file_is_hashed_once_and_again_when_its_size_or_time_changes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, own_cache: Path
):
    folder = model_folder(tmp_path / "m")
    big = folder / "model.safetensors"
    with open(big, "wb") as fh:
        fh.truncate(16 * 2**20)  # 16 MiB, sparse
    calls: list[str] = []
    real_hash = fingerprint.hash_file
    monkeypatch.setattr(fingerprint, "hash_file", lambda p: calls.append(Path(p).name) or real_hash(p))

    first = model_fingerprint(str(folder))
    assert sorted(calls) == ["config.json", "model.safetensors", "tokenizer.json"]
    assert cache_file() == own_cache
    entry = json.loads(own_cache.read_text())["files"][os.path.realpath(big)]
    stat = big.stat()
    assert entry["sha256"] == hashlib.sha256(big.read_bytes()).hexdigest()
    assert (entry["size"], entry["mtime_ns"]) == (16 * 2**20, stat.st_mtime_ns)
    calls.clear()
    assert model_fingerprint(str(folder)) == first and model_fingerprint(str(folder)) == first
    assert calls == [], "unchanged files are not hashed again"

    os.utime(big, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1))  # touched: hashed again, same content
    assert model_fingerprint(str(folder)) == first and calls == ["model.safetensors"]
    calls.clear()
    time.sleep(0.05)  # past the kernel's coarse change-time tick
    with open(big, "r+b") as fh:  # same size, same inode, modification time put back: the change time tells
        fh.seek(123)
        fh.write(b"\x07")
    os.utime(big, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1))
    changed = model_fingerprint(str(folder))
    assert calls == ["model.safetensors"] and changed != first
    assert changed == oracle(folder, ["config.json", "model.safetensors", "tokenizer.json"])
    calls.clear()
    with open(big, "ab") as fh:  # grown
        fh.write(b"\x00")
    assert model_fingerprint(str(folder)) != changed and calls == ["model.safetensors"]


def test_a_broken_or_unwritable_cache_costs_only_the_hashing(tmp_path: Path, own_cache: Path, monkeypatch: pytest.MonkeyPatch):
    folder = model_folder(tmp_path / "m")
    expected = oracle(folder, ["config.json", "model.safetensors", "tokenizer.json"])
    own_cache.parent.mkdir(parents=True)
    for broken in ("{not json", "[]", '{"files": []}', '{"files": {"x": 1}}'):
        own_cache.write_text(broken)
        assert model_fingerprint(str(folder)) == expected
        assert os.path.realpath(folder / "config.json") in json.loads(own_cache.read_text())["files"]
    # a cached entry with a wrong hash but another stamp is not believed
    data = json.loads(own_cache.read_text())
    data["files"][os.path.realpath(folder / "config.json")].update(sha256="0" * 64, size=1)
    own_cache.write_text(json.dumps(data))
    assert model_fingerprint(str(folder)) == expected
    monkeypatch.setenv("XDG_CACHE_HOME", str(folder / "config.json"))  # a file where the folder should be
    assert model_fingerprint(str(folder)) == expected


def fake_hub_cache(root: Path, repo: str, commits: list[str]) -> Path:
    """The layout huggingface_hub keeps: models--org--name/{refs/main, snapshots/<commit>/...}."""
    base = root / ("models--" + repo.replace("/", "--"))
    for commit in commits:
        snap = base / "snapshots" / commit
        snap.mkdir(parents=True)
        (snap / "config.json").write_text('{"model_type": "grounding-dino"}')
    (base / "refs").mkdir()
    (base / "refs" / "main").write_text(commits[0])
    return base


def test_a_hub_id_is_the_revision_the_local_cache_resolves(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    old, new = "a" * 40, "b" * 40
    base = fake_hub_cache(tmp_path / "hub", "org/gdino", [old, new])
    assert model_fingerprint("org/gdino") == f"hub:org/gdino@{old}"
    (base / "refs" / "main").write_text(new)  # the hub's main moved and was downloaded
    assert model_fingerprint("org/gdino") == f"hub:org/gdino@{new}"
    assert model_fingerprint("org/not-cached") == "name:org/not-cached"
    identity = model_identity("org/gdino", "none")
    assert identity == {"detector": "org/gdino", "detector_fingerprint": f"hub:org/gdino@{new}",
                        "segmenter": "none", "segmenter_fingerprint": "none"}
    # a local folder of the same name is what loading takes, so it is what is fingerprinted
    monkeypatch.chdir(tmp_path)
    local = model_folder(tmp_path / "org" / "gdino")
    assert model_fingerprint("org/gdino") == oracle(local, ["config.json", "model.safetensors", "tokenizer.json"])
    assert model_identity("org/gdino", "none")["detector"] == str(local)


def _model_names(detector: str, segmenter: str, device: str, dtype: str, box: float, text: float, fuse: bool) -> dict:
    """What evaluate checks before loading its models: the one signature's models part, named."""
    from iapas.engine.signature import RunModels, models_signature
    from iapas.pipeline.stage2 import PipelineConfig

    config = PipelineConfig(detector=detector, segmenter=segmenter, device=device, dtype=dtype, box_threshold=box,
                            text_threshold=text, fuse_object_detection=fuse)
    return models_signature(config, RunModels.named(config), evaluation=True)


def test_evaluate_names_its_models_before_loading_them(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from iapas.models.loading import ModelLoadError

    det = model_folder(tmp_path / "det")
    seg = model_folder(tmp_path / "seg", weights=b"\x09" * 10)
    models = _model_names(str(det), str(seg), "cpu", "float32", 0.35, 0.25, False)
    assert models["detector_fingerprint"] == oracle(det, ["config.json", "model.safetensors", "tokenizer.json"])
    assert models["segmenter_fingerprint"] == oracle(seg, ["config.json", "model.safetensors", "tokenizer.json"])
    with pytest.raises(ModelLoadError, match=r"^detector: model folder \./nope/gdino does not exist$"):
        _model_names("./nope/gdino", str(seg), "cpu", "float32", 0.35, 0.25, False)


def test_signatures_differ_by_fingerprint_not_by_path():
    old = {"caption": "a .", "detector": "/w1/models/gdino", "detector_fingerprint": "sha256:" + "1" * 64,
           "segmenter": "/w1/sam", "segmenter_fingerprint": "sha256:" + "2" * 64}
    moved = {**old, "detector": "/elsewhere/gdino", "segmenter": "sam"}
    assert not signature_diff(old, moved)
    other = {**moved, "detector_fingerprint": "sha256:" + "3" * 64, "caption": "b ."}
    diff = signature_diff(old, other)
    assert diff.describe() == (
        "made with another detector: /elsewhere/gdino (sha256:333333333333) is not the model its results were made with "
        "(/w1/models/gdino, sha256:111111111111); made with other settings (caption)"
    )
    legacy = {"caption": "a .", "detector": "models/gdino", "segmenter": "sam"}
    assert signature_diff(legacy, old).older and signature_diff(legacy, old).describe() == OLDER
    assert signature_diff({**old, "compile": True}, old).changed == ["compile"]  # a key only the record has counts


def test_a_folder_that_is_no_model_is_not_hashed_and_an_unreadable_file_is_no_traceback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """``evaluate --detector ~/Downloads`` must not read gigabytes before saying it is no model."""
    from iapas.models.loading import ModelLoadError

    downloads = tmp_path / "Downloads"
    downloads.mkdir()
    (downloads / "disk.iso").write_bytes(b"\0" * 1000)
    calls: list[Path] = []
    monkeypatch.setattr(fingerprint, "hash_file", lambda p: calls.append(p) or "x")
    seg = model_folder(tmp_path / "seg")
    with pytest.raises(ModelLoadError, match=rf"^detector: {downloads} has no config.json; expected a model folder$"):
        _model_names(str(downloads), str(seg), "cpu", "float32", 0.35, 0.25, False)
    assert model_fingerprint(str(downloads)) == f"name:{downloads}" and calls == []

    monkeypatch.undo()
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    real = fingerprint.file_sha256

    def unreadable(path, cache=None):
        if Path(path).name == "tokenizer.json":
            raise PermissionError(13, "Permission denied")
        return real(path, cache)

    monkeypatch.setattr(fingerprint, "file_sha256", unreadable)
    lines = "".join(f"{n}\t{hashlib.sha256((seg / n).read_bytes()).hexdigest()}\n" for n in ("config.json", "model.safetensors"))
    lines += "tokenizer.json\tunreadable (Permission denied)\n"
    assert model_fingerprint(str(seg)) == "sha256:" + hashlib.sha256(lines.encode()).hexdigest()


def test_an_evaluation_folder_of_an_older_iapas_or_without_run_file_is_refused(tmp_path: Path):
    from iapas.evaluation.runfolder import check_existing_run
    from iapas.engine.runner import RunConflictError

    out = tmp_path / "eval"
    (out / "predictions").mkdir(parents=True)
    (out / "predictions" / "alpha.jsonl").write_text('{"key": "a"}\n')
    now = {"dataset": "mvtec", "seed": 0, "detector": "/m/gdino", "detector_fingerprint": "sha256:" + "1" * 64,
           "segmenter": "/m/sam", "segmenter_fingerprint": "sha256:" + "2" * 64}
    advice = "use another --out folder, or --restart to discard them"
    with pytest.raises(RunConflictError) as missing:
        check_existing_run(out, now)
    assert str(missing.value) == f"{out} holds predictions but no readable run.json signature; {advice}"
    (out / "run.json").write_text(json.dumps({"signature": {"dataset": "mvtec", "seed": 0, "detector": "models/gdino", "segmenter": "sam"}}))
    with pytest.raises(RunConflictError) as older:
        check_existing_run(out, now)
    assert str(older.value) == f"{out} holds results made by an older iapas without model fingerprints; {advice}"
    (out / "run.json").write_text(json.dumps({"signature": {**now, "detector": "elsewhere/gdino", "seed": 1}}))
    with pytest.raises(RunConflictError) as seed:  # another path alone is no conflict; the seed is
        check_existing_run(out, now)
    assert str(seed.value) == f"{out} holds results made with other settings (seed: 1 -> 0); {advice}"
    (out / "run.json").write_text(json.dumps({"signature": {**now, "detector": "elsewhere/gdino"}}))
    check_existing_run(out, now)


def test_a_ray_worker_with_other_model_files_at_the_same_path_is_refused(tmp_path: Path) -> None:
    """The Ray executor's check of each worker against the driver, without Ray: the worker's
    signature carries the fingerprints of the files it loaded, and other files under the same path
    stop the run in one line (dtype and device are compared as before)."""
    from types import SimpleNamespace

    from iapas.engine.base import EngineError
    from iapas.engine.ray_executor import check_worker_models, worker_signature

    def pipeline(det: Path, seg: Path, dtype: str = "torch.float32") -> SimpleNamespace:
        return SimpleNamespace(detector=SimpleNamespace(name=str(det), dtype=dtype, device="cpu"),
                               segmenter=SimpleNamespace(name=str(seg)))

    det, seg = model_folder(tmp_path / "driver" / "gdino"), model_folder(tmp_path / "driver" / "sam", b"\x02" * 64)
    driver = worker_signature(pipeline(det, seg))
    files = ["config.json", "model.safetensors", "tokenizer.json"]
    assert driver == {"dtype": "torch.float32", "device": "cpu", "detector_fingerprint": oracle(det, files),
                      "segmenter_fingerprint": oracle(seg, files)}
    check_worker_models(worker_signature(pipeline(det, seg)), driver)  # the same files: accepted
    other = model_folder(tmp_path / "worker" / "gdino", b"\x03" * 64)  # the worker's machine: other weights
    with pytest.raises(EngineError) as info:
        check_worker_models(worker_signature(pipeline(other, seg)), driver)
    assert str(info.value) == (f"a Ray worker loaded another detector than the driver ({oracle(other, files)[:19]}, "
                               f"the driver's {oracle(det, files)[:19]}): the model's path holds other files on that machine")
    with pytest.raises(EngineError, match=r"^a Ray worker's models run with \{'dtype': 'torch.float16', 'device': 'cpu'\}"):
        check_worker_models(worker_signature(pipeline(det, seg, "torch.float16")), driver)
    auto = {k: v for k, v in driver.items() if k != "device"}  # --device auto: each worker resolves its own
    check_worker_models({**worker_signature(pipeline(det, seg)), "device": "cuda:0"}, auto)


def test_evaluate_s_early_check_leaves_a_hub_id_not_in_the_cache_to_the_full_check(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A hub id missing from the local cache (cleared, another HF_HUB_CACHE) is 'name:ID' before
    loading, where the run recorded 'hub:ID@COMMIT': the check before loading must not refuse the
    resume for that (runner.check_models skips such models too); a folder is still compared."""
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-hub"))
    sam = model_folder(tmp_path / "sam")
    names = _model_names("IDEA-Research/grounding-dino-tiny", str(sam), "cpu", "float32", 0.1, 0.1, False)
    assert "detector" not in names and "detector_fingerprint" not in names
    assert names["segmenter_fingerprint"] == oracle(sam, ["config.json", "model.safetensors", "tokenizer.json"])
    previous = {"detector": "IDEA-Research/grounding-dino-tiny", "detector_fingerprint": "hub:IDEA-Research/grounding-dino-tiny@abc",
                **{k: v for k, v in names.items() if not k.startswith("detector")}}
    diff = signature_diff(previous, names)
    assert not diff.models and not diff.changed and not diff.older
