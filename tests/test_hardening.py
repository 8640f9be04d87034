"""Unattended runs: every kind of bad input fails alone with a clear line, and nothing is lost."""

from __future__ import annotations

import builtins
import json
import logging
import os
import signal
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from iapas.cli import app
from iapas.product.profile import Profile

runner = CliRunner()


def png_with_header_size(path: Path, width: int, height: int) -> None:
    """A small valid PNG whose IHDR claims another size (a decompression-bomb header)."""
    Image.new("L", (8, 8)).save(path)
    data = bytearray(path.read_bytes())
    ihdr = bytearray(data[16:29])
    ihdr[0:8] = struct.pack(">II", width, height)
    data[16:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + bytes(ihdr)) & 0xFFFFFFFF)
    path.write_bytes(bytes(data))


def make_inputs(folder: Path) -> tuple[list[str], dict[str, str]]:
    """Good images of awkward kinds and bad files; returns (CLI inputs, bad name -> expected words)."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(folder / "ok.png")
    Image.fromarray(rng.integers(0, 65535, (40, 40), dtype=np.uint16)).save(folder / "gray16.png")
    Image.fromarray(rng.integers(0, 255, (40, 40, 4), dtype=np.uint8), "RGBA").save(folder / "rgba.png")
    Image.fromarray(rgb).convert("P").save(folder / "palette.png")
    Image.fromarray(rgb).convert("CMYK").save(folder / "cmyk.jpg")
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(rgb).save(folder / "rotated.jpg", exif=exif)

    (folder / "zero.png").write_bytes(b"")
    Image.fromarray(rgb).save(folder / "trunc.jpg", quality=90)
    (folder / "trunc.jpg").write_bytes((folder / "trunc.jpg").read_bytes()[:300])
    Image.fromarray(rgb).save(folder / "trunc.png")
    (folder / "trunc.png").write_bytes((folder / "trunc.png").read_bytes()[:120])
    (folder / "text.png").write_text("hello, I am not a picture\n")
    (folder / "drawing.svg").write_text("<svg xmlns='http://www.w3.org/2000/svg'/>")
    Image.new("RGB", (1, 1)).save(folder / "dot.png")
    png_with_header_size(folder / "bomb.png", 100_000, 100_000)
    Image.fromarray(rgb).save(folder / "locked.png")
    (folder / "empty-dir").mkdir()
    bad = {
        "zero.png": "empty file",
        "trunc.jpg": "corrupt or truncated",
        "trunc.png": "corrupt or truncated",
        "text.png": "not an image file",
        "drawing.svg": "not an image file",
        "dot.png": "too small",
        "bomb.png": "decompression bomb",
        "locked.png": "permission denied",
        "missing.png": "file not found",
        "empty-dir": "no images",
    }
    inputs = [str(p) for p in sorted(folder.iterdir()) if p.name != "empty-dir"]
    inputs += [str(folder / "missing.png"), str(folder / "empty-dir")]
    return inputs, bad


def test_every_bad_input_fails_alone(tmp_path: Path, tiny_models: dict[str, Path], monkeypatch: pytest.MonkeyPatch):
    inputs, bad = make_inputs(tmp_path / "in")
    profile = Profile.from_prompts("part", "object", ["scratch"]).save(tmp_path / "p.yaml")
    real_open = builtins.open

    def deny_locked(file, *args, **kwargs):  # the suite runs as root, where chmod 000 still reads
        if str(file).endswith("locked.png"):
            raise PermissionError(13, "Permission denied", str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", deny_locked)
    out = tmp_path / "out"
    result = runner.invoke(
        app,
        ["segment", *inputs, "--profile", str(profile), "--out", str(out), "--detector", str(tiny_models["grounding-dino"]),
         "--segmenter", str(tiny_models["sam"]), "--device", "cpu", "--batch-size", "2"],
    )
    monkeypatch.setattr(builtins, "open", real_open)
    assert result.exit_code == 1, result.output
    lines = result.output.splitlines()
    for name, words in bad.items():
        hits = [line for line in lines if name in line and line.startswith("error")]
        assert len(hits) == 1, (name, result.output)
        assert words in hits[0], (name, hits[0])
    assert f"{len(bad)} input(s) failed" in result.output
    records = {Path(r["image"]).name: r for r in map(json.loads, (out / "results.jsonl").read_text().splitlines())}
    for name in ("ok.png", "gray16.png", "rgba.png", "palette.png", "cmyk.jpg", "rotated.jpg"):
        assert records[name]["status"] == "ok", records[name]
    assert (records["rotated.jpg"]["width"], records["rotated.jpg"]["height"]) == (48, 64)  # EXIF applied
    assert records["cmyk.jpg"]["mode"] == "CMYK" and records["gray16.png"]["mode"] == "I;16"
    for name in bad:
        if name != "empty-dir":  # a file named on the command line but missing is recorded too
            assert records[name]["status"] == "failed" and bad[name] in records[name]["error"]


def test_hub_id_without_network_explains_local_folders(tmp_path: Path):
    Image.new("RGB", (32, 32)).save(tmp_path / "a.png")
    profile = Profile.from_prompts("part", "object", ["scratch"]).save(tmp_path / "p.yaml")
    result = runner.invoke(app, ["segment", str(tmp_path / "a.png"), "--profile", str(profile), "--out", str(tmp_path / "o"),
                                 "--detector", "IDEA-Research/grounding-dino-nonexistent", "--device", "cpu"])
    assert result.exit_code == 2
    assert "could not load 'IDEA-Research/grounding-dino-nonexistent'" in result.output
    assert "HF_HUB_OFFLINE" in result.output and "--local-dir" in result.output


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "iapas", *args]


def test_kill_mid_run_then_resume(tmp_path: Path, tiny_models: dict[str, Path]):
    folder = tmp_path / "in"
    folder.mkdir()
    rng = np.random.default_rng(3)
    n = 16
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (64, 80, 3), dtype=np.uint8)).save(folder / f"img_{i:02d}.png")
    profile = Profile.from_prompts("part", "object", ["scratch"]).save(tmp_path / "p.yaml")
    common = ["--profile", str(profile), "--detector", str(tiny_models["grounding-dino"]),
              "--segmenter", str(tiny_models["sam"]), "--device", "cpu", "--quiet"]
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    out = tmp_path / "out"
    results = out / "results.jsonl"
    proc = subprocess.Popen(cli("segment", str(folder), "--out", str(out), *common), env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if results.exists() and len(results.read_text().splitlines()) >= 3:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    done = [json.loads(line) for line in results.read_text().splitlines()]
    assert 3 <= len(done) < n, "killed part way"
    mtimes = {}
    for rec in done:  # every finished image's outputs are complete files
        for rel in rec["outputs"].values():
            with Image.open(out / rel) as im:
                im.load()
        mtimes[rec["key"]] = (out / rec["outputs"]["map"]).stat().st_mtime_ns

    subprocess.run(cli("segment", str(folder), "--out", str(out), *common), env=env, check=True, timeout=300,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    final = [json.loads(line) for line in results.read_text().splitlines()]
    assert sorted(r["key"] for r in final) == [f"img_{i:02d}" for i in range(n)]
    assert all(r["status"] == "ok" for r in final)
    for key, mtime in mtimes.items():  # finished images were not redone
        rec = next(r for r in final if r["key"] == key)
        assert (out / rec["outputs"]["map"]).stat().st_mtime_ns == mtime
    assert not list(out.rglob(".*.tmp*")), "no half-written files left"

    # the same final set as an uninterrupted run
    ref = tmp_path / "ref"
    subprocess.run(cli("segment", str(folder), "--out", str(ref), *common), env=env, check=True, timeout=300,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    reference = {r["key"]: r for r in map(json.loads, (ref / "results.jsonl").read_text().splitlines())}
    for rec in final:
        assert rec["image_score"] == pytest.approx(reference[rec["key"]]["image_score"], abs=1e-5)
        assert len(rec["kept"]) == len(reference[rec["key"]]["kept"])


def test_ctrl_c_keeps_finished_images(tmp_path: Path, tiny_models: dict[str, Path]):
    folder = tmp_path / "in"
    folder.mkdir()
    rng = np.random.default_rng(4)
    for i in range(40):
        Image.fromarray(rng.integers(0, 255, (64, 80, 3), dtype=np.uint8)).save(folder / f"img_{i:02d}.png")
    profile = Profile.from_prompts("part", "object", ["scratch"]).save(tmp_path / "p.yaml")
    out = tmp_path / "out"
    proc = subprocess.Popen(
        cli("segment", str(folder), "--out", str(out), "--profile", str(profile), "--detector", str(tiny_models["grounding-dino"]),
            "--segmenter", str(tiny_models["sam"]), "--device", "cpu"),
        env=dict(os.environ, HF_HUB_OFFLINE="1"), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        # as from a terminal: a suite started in the background ('pytest &', as a CI script may) has
        # SIGINT ignored, and a child that inherits that never sees the Ctrl-C
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    results = out / "results.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if results.exists() and len(results.read_text().splitlines()) >= 2:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    output, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130, output
    assert "interrupted" in output and "resume" in output
    done = [json.loads(line) for line in results.read_text().splitlines()]
    assert 2 <= len(done) < 40 and all(r["status"] == "ok" for r in done)


@pytest.mark.parametrize(
    ("profile_text", "model", "expected"),
    [
        ("category: [unclosed", None, "not valid YAML"),
        ("category: x\nobject_tag: y\ncaption: '  '\n", None, "'caption' is empty"),
        (None, "sam-as-detector", "holds a 'sam' model; expected grounding-dino"),
        (None, "missing-folder", "does not exist"),
    ],
)
def test_bad_profiles_and_models_exit_2_with_one_line(
    tmp_path: Path, tiny_models: dict[str, Path], profile_text: str | None, model: str | None, expected: str
):
    Image.new("RGB", (32, 32)).save(tmp_path / "a.png")
    profile = tmp_path / "p.yaml"
    if profile_text is None:
        Profile.from_prompts("part", "object", ["scratch"]).save(profile)
    else:
        profile.write_text(profile_text)
    detector = {"sam-as-detector": str(tiny_models["sam"]), "missing-folder": str(tmp_path / "nope")}.get(
        model or "", str(tiny_models["grounding-dino"])
    )
    result = runner.invoke(app, ["segment", str(tmp_path / "a.png"), "--profile", str(profile), "--out", str(tmp_path / "o"),
                                 "--detector", detector, "--segmenter", str(tiny_models["sam"]), "--device", "cpu"])
    assert result.exit_code == 2, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and expected in errors[0], result.output
    if profile_text is not None:
        assert str(profile) in errors[0]


def segment_with(tmp_path: Path, tiny_models: dict[str, Path], *extra: str, detector: str | None = None,
                 out: Path | None = None):
    """Run ``iapas segment`` on one small image with the tiny models (``detector`` overrides)."""
    image = tmp_path / "a.png"
    if not image.exists():
        Image.new("RGB", (32, 32)).save(image)
    profile = Profile.from_prompts("part", "object", ["scratch"]).save(tmp_path / "p.yaml")
    return runner.invoke(app, ["segment", str(image), "--profile", str(profile), "--out", str(out or tmp_path / "o"),
                               "--detector", detector or str(tiny_models["grounding-dino"]),
                               "--segmenter", str(tiny_models["sam"]), "--device", "cpu", *extra])


def only_error_line(output: str) -> str:
    """The output must be exactly one 'error:' line (no traceback, no continuation lines)."""
    lines = [line for line in output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), output
    return lines[0]


def test_tiny_models_load_with_every_weight(tiny_models: dict[str, Path]):
    """The weight check must not reject correct folders (tied weights are not missing)."""
    from transformers import AutoModelForCausalLM, CLIPModel, GroundingDinoForObjectDetection, SamModel

    from iapas.models.loading import load_pretrained

    for loader, name, kind in [(GroundingDinoForObjectDetection.from_pretrained, "grounding-dino", "grounding-dino"),
                               (SamModel.from_pretrained, "sam", "sam"), (CLIPModel.from_pretrained, "clip", "clip"),
                               (AutoModelForCausalLM.from_pretrained, "llm", "llama")]:
        model = load_pretrained(loader, str(tiny_models[name]), what=name, expected_model_types=(kind,))
        assert not isinstance(model, tuple) and hasattr(model, "forward")


def test_weights_of_another_model_fail_clearly(tmp_path: Path, tiny_models: dict[str, Path]):
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    for f in tiny_models["grounding-dino"].iterdir():
        (mixed / f.name).write_bytes(f.read_bytes())
    (mixed / "model.safetensors").write_bytes((tiny_models["sam"] / "model.safetensors").read_bytes())
    result = segment_with(tmp_path, tiny_models, detector=str(mixed))
    assert result.exit_code == 2, result.output
    line = only_error_line(result.output)
    assert f"weights in {mixed} do not match a grounding-dino checkpoint" in line and "missing keys, e.g." in line


def test_truncated_weights_fail_with_one_line(tmp_path: Path, tiny_models: dict[str, Path]):
    broken = tmp_path / "broken"
    broken.mkdir()
    for f in tiny_models["grounding-dino"].iterdir():
        (broken / f.name).write_bytes(f.read_bytes())
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    result = segment_with(tmp_path, tiny_models, detector=str(broken))
    assert result.exit_code == 2, result.output
    line = only_error_line(result.output)
    assert str(broken) in line and "not a usable model" in line and "SafetensorError" in line


def test_mps_without_mps_fails_with_one_line(tmp_path: Path, tiny_models: dict[str, Path]):
    import torch

    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        pytest.skip("this machine has MPS")
    result = segment_with(tmp_path, tiny_models, "--device", "mps")
    assert result.exit_code == 2, result.output
    assert "no Apple MPS device" in only_error_line(result.output)


def test_mistyped_local_folder_says_there_is_none(tmp_path: Path, tiny_models: dict[str, Path], monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)  # no ./models here
    result = segment_with(tmp_path, tiny_models, detector="models/gdino")
    assert result.exit_code == 2, result.output
    line = only_error_line(result.output)  # transformers' multi-line message folded into the one line
    assert "If models/gdino was meant as a local folder: it does not exist" in line and "could not load 'models/gdino'" in line


def test_hub_warnings_are_printed_once():
    from iapas.cli.common import setup_logging

    setup_logging()
    hub = logging.getLogger("huggingface_hub.utils._http")
    handlers = []
    logger: logging.Logger | None = hub
    while logger is not None:  # what logging.Logger.callHandlers walks
        handlers += logger.handlers
        logger = logger.parent if logger.propagate else None
    assert len(handlers) == 1, handlers


def test_malformed_yaml_profile_is_one_line_with_position(tmp_path: Path, tiny_models: dict[str, Path]):
    Image.new("RGB", (32, 32)).save(tmp_path / "a.png")
    bad = tmp_path / "bad.yaml"
    bad.write_text("category: x\nobject_tag: [unclosed\ncaption: a .\n")
    result = runner.invoke(app, ["segment", str(tmp_path / "a.png"), "--profile", str(bad), "--out", str(tmp_path / "o"),
                                 "--detector", str(tiny_models["grounding-dino"]), "--device", "cpu"])
    assert result.exit_code == 2, result.output
    line = only_error_line(result.output)
    assert f"{bad}: line 3, column" in line and "not valid YAML" in line


def test_out_that_is_a_file_fails_before_loading_models(tmp_path: Path, tiny_models: dict[str, Path]):
    (tmp_path / "taken").write_text("mine")
    result = segment_with(tmp_path, tiny_models, detector=str(tmp_path / "no-such-model"), out=tmp_path / "taken")
    assert result.exit_code == 2, result.output
    assert "--out" in only_error_line(result.output) and "is a file" in result.output
    assert (tmp_path / "taken").read_text() == "mine"


def test_stale_temp_files_of_a_killed_run_are_removed(tmp_path: Path, tiny_models: dict[str, Path]):
    out = tmp_path / "o"
    stale = [out / ".results.jsonl.abcd1234.tmp.jsonl", out / ".run.json.x_y_z_12.tmp.json",
             out / "maps" / ".a.png.qwertyui.tmp.png", out / "overlays" / "sub" / ".b.png.asdfghjk.tmp.png"]
    for path in stale:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("half")
    result = segment_with(tmp_path, tiny_models, out=out)
    assert result.exit_code == 0, result.output
    assert not [p for p in stale if p.exists()]
    assert not list(out.rglob(".*.tmp*"))
    assert (out / "maps" / "a.png").stat().st_mode & 0o777 == 0o666 & ~_umask(), "outputs readable like any new file"


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask
