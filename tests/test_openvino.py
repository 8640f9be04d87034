"""The OpenVINO runtime: its IR cache (iapas.models.ov.cache)."""

from __future__ import annotations

import json
import multiprocessing
import time
from pathlib import Path

import numpy as np
import pytest

ov = pytest.importorskip("openvino")

from iapas.models.ov import cache  # noqa: E402


def _tiny_model(scale: float = 2.0) -> "ov.Model":
    """y = relu(x) * scale, built from opsets (no tracing: instant)."""
    import openvino.opset13 as ops

    x = ops.parameter([-1, 4], np.float32, name="x")
    y = ops.multiply(ops.relu(x), ops.constant(np.full((1, 4), scale, np.float32)))
    return ov.Model([y], [x], "tiny")


class Counter:
    def __init__(self, scale: float = 2.0) -> None:
        self.calls = 0
        self.scale = scale

    def __call__(self) -> "ov.Model":
        self.calls += 1
        return _tiny_model(self.scale)


def _run(model: "ov.Model") -> np.ndarray:
    compiled = cache.compile(model, threads=1)
    return compiled([np.array([[-1.0, 0.5, 2.0, -3.0]], np.float32)])[0]


def test_second_load_reads_the_entry_without_converting(tmp_path: Path) -> None:
    convert = Counter()
    first = cache.load_or_convert("tiny", "sha256:aa", convert, tmp_path)
    second = cache.load_or_convert("tiny", "sha256:aa", convert, tmp_path)
    assert convert.calls == 1
    np.testing.assert_array_equal(_run(first), [[0.0, 1.0, 4.0, 0.0]])  # relu(x) * 2 by hand
    np.testing.assert_array_equal(_run(second), [[0.0, 1.0, 4.0, 0.0]])
    entries = [p for p in tmp_path.iterdir() if p.is_dir()]
    assert len(entries) == 1 and entries[0].name.startswith("tiny-")
    assert sorted(p.name for p in entries[0].iterdir()) == ["key.json", "model.bin", "model.xml"]
    key = json.loads((entries[0] / "key.json").read_text())
    assert key == {"source": "sha256:aa", "openvino": ov.get_version(), "converter": cache.CONVERTER_VERSION}
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]  # no temporary folder left


def test_a_changed_fingerprint_openvino_or_converter_version_converts_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    convert = Counter()
    cache.load_or_convert("tiny", "sha256:aa", convert, tmp_path)
    cache.load_or_convert("tiny", "sha256:bb", convert, tmp_path)
    assert convert.calls == 2
    monkeypatch.setattr(ov, "get_version", lambda: "2099.1.0-other")
    cache.load_or_convert("tiny", "sha256:aa", convert, tmp_path)
    assert convert.calls == 3
    monkeypatch.setattr(cache, "CONVERTER_VERSION", cache.CONVERTER_VERSION + 1)
    cache.load_or_convert("tiny", "sha256:aa", convert, tmp_path)
    assert convert.calls == 4
    cache.load_or_convert("tiny", "sha256:aa", convert, tmp_path)
    assert convert.calls == 4


def _only_entry(root: Path) -> Path:
    (entry,) = [p for p in root.iterdir() if p.is_dir()]
    return entry


@pytest.mark.parametrize("damage", ["truncated-bin", "garbage-xml", "missing-xml", "other-key", "no-key"])
def test_a_damaged_or_foreign_entry_is_rebuilt_never_used(
    tmp_path: Path, damage: str, caplog: pytest.LogCaptureFixture
) -> None:
    cache.load_or_convert("tiny", "sha256:aa", Counter(), tmp_path)
    entry = _only_entry(tmp_path)
    if damage == "truncated-bin":
        with open(entry / "model.bin", "r+b") as fh:
            fh.truncate(3)
    elif damage == "garbage-xml":
        (entry / "model.xml").write_text("garbage")
    elif damage == "missing-xml":
        (entry / "model.xml").unlink()
    elif damage == "other-key":  # e.g. copied from another machine under this name
        (entry / "key.json").write_text(json.dumps({"source": "sha256:zz", "openvino": "1", "converter": 1}))
    else:
        (entry / "key.json").unlink()
    convert = Counter(scale=3.0)  # a rebuilt entry computes relu(x) * 3: the old one is not used
    model = cache.load_or_convert("tiny", "sha256:aa", convert, tmp_path)
    assert convert.calls == 1
    np.testing.assert_array_equal(_run(model), [[0.0, 1.5, 6.0, 0.0]])
    assert "rebuilding it" in caplog.text
    assert _only_entry(tmp_path) == entry  # the rebuilt entry replaced the damaged one
    again = Counter()
    cache.load_or_convert("tiny", "sha256:aa", again, tmp_path)
    assert again.calls == 0


def _convert_in_process(root: str, log: str) -> None:
    def convert() -> "ov.Model":
        with open(log, "a") as fh:
            fh.write("start\n")
        time.sleep(1.0)  # long enough for the other process to find the lock held
        with open(log, "a") as fh:
            fh.write("end\n")
        return _tiny_model()

    model = cache.load_or_convert("tiny", "sha256:aa", convert, Path(root))
    assert _run(model).tolist() == [[0.0, 1.0, 4.0, 0.0]]


def test_two_processes_convert_once_the_second_waits(tmp_path: Path) -> None:
    log = tmp_path / "log.txt"
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_convert_in_process, args=(str(tmp_path / "c"), str(log))) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0]
    assert log.read_text().split() == ["start", "end"]  # one conversion; the other process read it


def test_default_cache_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv(cache.ENV_CACHE, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache.default_cache_dir() == tmp_path / "xdg" / "iapas" / "openvino"
    monkeypatch.setenv(cache.ENV_CACHE, str(tmp_path / "ov"))
    assert cache.default_cache_dir() == tmp_path / "ov"


def test_missing_openvino_is_one_line_naming_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "openvino", None)  # import openvino -> ImportError
    with pytest.raises(cache.OpenVinoMissingError) as info:
        cache.require_openvino()
    message = str(info.value)
    assert "\n" not in message and "pip install 'iapas[openvino]'" in message


def test_compile_sets_the_thread_count() -> None:
    compiled = cache.compile(_tiny_model(), threads=1)
    assert int(compiled.get_property("INFERENCE_NUM_THREADS")) == 1
