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


def test_a_cache_folder_that_cannot_be_written_costs_time_not_the_run(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "file").write_text("a file where the cache's parent folder should be")
    root = tmp_path / "file" / "cache"  # cannot be made, even by root (a read-only disk could not be tested as root)
    convert = Counter()
    model = cache.load_or_convert("tiny", "sha256:aa", convert, root)
    np.testing.assert_array_equal(_run(model), [[0.0, 1.0, 4.0, 0.0]])  # the converted model, used unsaved
    warning = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert warning == [f"cannot save OpenVINO IR into {root}: Not a directory; using the model unsaved, so every "
                       "start converts it again (free space there, or set IAPAS_OPENVINO_CACHE to a writable folder)"]
    cache.load_or_convert("tiny", "sha256:aa", convert, root)
    assert convert.calls == 2  # nothing was saved: the next start converts again
    with cache.saving_required(), pytest.raises(cache.IrCacheError) as raised:  # export: fail before converting
        cache.load_or_convert("tiny", "sha256:aa", convert, root)
    assert convert.calls == 2
    assert str(raised.value) == f"cannot save OpenVINO IR into {root}: Not a directory (free space there, or choose another folder)"
    cache.load_or_convert("tiny", "sha256:aa", convert, root)  # outside the block: unsaved again, no error
    assert convert.calls == 3


def _save_beyond_the_file_size_limit(root: str, queue: "multiprocessing.Queue") -> None:
    """In a child process whose files cannot grow past 64 KiB (RLIMIT_FSIZE: the kernel refuses the
    write as it would on a full disk): model.xml is written, the 200 KB model.bin is not."""
    import logging
    import resource
    import signal

    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails (EFBIG) instead of killing
    resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, 64 * 1024))
    messages: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: messages.append(record.getMessage())  # type: ignore[method-assign]
    logging.getLogger(cache.__name__).addHandler(handler)

    def convert() -> "ov.Model":
        import openvino.opset13 as ops

        x = ops.parameter([-1, 4], np.float32, name="x")
        big = ops.constant(np.full((50_000, 4), 2.0, np.float32))  # 200 KB of weights
        return ov.Model([ops.multiply(ops.relu(x), big)], [x], "big")

    model = cache.load_or_convert("big", "sha256:bb", convert, Path(root))
    first_row = cache.compile(model, threads=1)([np.array([[-1.0, 0.5, 2.0, -3.0]], np.float32)])[0][0]
    try:
        with cache.saving_required():
            cache.load_or_convert("big", "sha256:bb", convert, Path(root))
        raised = ""
    except cache.IrCacheError as exc:
        raised = str(exc)
    queue.put((first_row.tolist(), messages, raised))


def test_a_write_refused_while_saving_leaves_no_half_entry(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    proc = ctx.Process(target=_save_beyond_the_file_size_limit, args=(str(tmp_path), queue))
    proc.start()
    first_row, messages, raised = queue.get(timeout=120)
    proc.join(60)
    assert proc.exitcode == 0
    assert first_row == [0.0, 1.0, 4.0, 0.0]  # the model was used, unsaved
    unsaved = [m for m in messages if m.startswith("cannot save OpenVINO IR into")]
    assert len(unsaved) == 1 and "using the model unsaved" in unsaved[0] and "MiB free there" in unsaved[0]
    assert raised.startswith(f"cannot save OpenVINO IR into {tmp_path}: ") and raised.endswith("(free space there, or choose another folder)")
    assert "\n" not in raised
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == ["big-" + cache.entry_dir("big", cache.cache_key("sha256:bb"), tmp_path).name.split("-")[-1] + ".lock"]


def test_what_a_process_killed_while_saving_left_is_removed_when_the_entry_is_made(tmp_path: Path) -> None:
    entry = cache.entry_dir("tiny", cache.cache_key("sha256:aa"), tmp_path)
    other = cache.entry_dir("other", cache.cache_key("sha256:aa"), tmp_path)
    leftovers = [tmp_path / f".{entry.name}.x1y2.tmp", tmp_path / f".{entry.name}.4242.old", tmp_path / f".{other.name}.zz.tmp"]
    for folder in leftovers:
        folder.mkdir()
        (folder / "model.bin").write_bytes(b"half written")
    cache.load_or_convert("tiny", "sha256:aa", Counter(), tmp_path)
    assert [f.exists() for f in leftovers] == [False, False, True]  # another entry's: its own lock's business
    assert entry.is_dir()


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


def test_compile_without_a_thread_count_takes_torchs(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)  # not the machine's core count, whatever it is
    compiled = cache.compile(_tiny_model())
    assert int(compiled.get_property("INFERENCE_NUM_THREADS")) == 1


# --- Grounding DINO through OpenVINO, with the tiny model (iapas.models.ov.gdino) -------------------
# Bound: kept scores within 1e-5 of eager's (measured: ~1e-6 with the tiny model; the IR keeps float32
# weights), boxes within 1e-3 px, the same (phrase, box) sets; maps within 1e-5 where masks agree.
SCORE_TOL = 1e-5
BOX_TOL = 1e-3


def _images(seed: int, n: int, shape: tuple[int, int] = (200, 200)) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 255, (*shape, 3), dtype=np.uint8) for _ in range(n)]


@pytest.fixture(scope="module")
def ov_detectors(tiny_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory):
    """(eager, openvino) tiny Grounding DINO; the openvino one converted ONCE, on other images
    than the ones compared (a graph that baked its example's pixels in would show)."""
    from iapas.models.factory import load_detector

    folder = str(tiny_models["grounding-dino"])
    cache_dir = tmp_path_factory.mktemp("ov-cache")
    eager = load_detector(folder, device="cpu")
    ovd = load_detector(folder, runtime="openvino", ov_cache=cache_dir)
    started = time.process_time()  # CPU seconds, all threads: the wall time depends on the machine's load
    ovd.detect(_images(99, 1), "crack .")  # converts the 320x320 graph
    ovd.conversion_seconds = time.process_time() - started
    assert ovd.ov.conversions == 1
    return eager, ovd, cache_dir


def _same_sets(a, b, score_tol: float = SCORE_TOL, box_tol: float = BOX_TOL) -> None:
    """The kept (phrase, box, score) of two Detections match as SETS: each of ``a``'s has one of
    ``b``'s with the same phrase within the tolerances (ties may come out in another order)."""
    assert len(a.boxes) == len(b.boxes)
    free = list(range(len(b.boxes)))
    for box, score, phrase in zip(a.boxes, a.scores, a.phrases):
        match = [j for j in free if b.phrases[j] == phrase and abs(b.scores[j] - score) <= score_tol
                 and np.abs(b.boxes[j] - box).max() <= box_tol]
        assert match, f"no match for {phrase!r} {box} {score}"
        free.remove(match[0])


def test_openvino_detections_are_the_same_sets_as_eager(ov_detectors) -> None:
    eager, ovd, _ = ov_detectors
    images = _images(1, 3)
    captions = ["scratch . dent .", "a long hole . stain . crack ."]  # two caption lengths, one graph
    got = ovd.detect_many(images, captions, box_threshold=0.1, text_threshold=0.1)
    want = eager.detect_many(images, captions, box_threshold=0.1, text_threshold=0.1)
    assert ovd.ov.conversions == 1  # the same image shape: no new graph, whatever the caption
    assert sum(len(d.boxes) for per in want for d in per) > 20  # the tiny model keeps boxes at 0.1
    for per_got, per_want in zip(got, want):
        for g, w in zip(per_got, per_want):
            _same_sets(w, g)
    anomalies, objects = ovd.detect_with_object(images[:1], "scratch . widget .", "widget")
    anomalies_e, objects_e = eager.detect_with_object(images[:1], "scratch . widget .", "widget")
    _same_sets(anomalies_e[0], anomalies[0])
    _same_sets(objects_e[0], objects[0])


def test_the_pipeline_maps_differ_by_float_rounding_only(ov_detectors, tiny_models: dict[str, Path]) -> None:
    from iapas.models.factory import load_segmenter
    from iapas.pipeline.stage2 import Pipeline, PipelineConfig
    from iapas.product.profile import Profile

    eager, ovd, _ = ov_detectors
    sam = load_segmenter(str(tiny_models["sam"]), device="cpu")
    profile = Profile.from_prompts("widget", "widget", ["scratch", "crack"])
    profile.size_threshold = 1000.0  # keep every box: SAM sees them all
    images = _images(2, 2)
    got = Pipeline(ovd, sam, PipelineConfig(device="cpu")).run(images, profile)
    want = Pipeline(eager, sam, PipelineConfig(device="cpu")).run(images, profile)
    for g, w in zip(got, want):
        _same_sets(w.kept, g.kept)
        order = [int(np.argmin([np.abs(gb - wb).max() + (gp != wp) for gb, gp in zip(g.kept.boxes, g.kept.phrases)]))
                 for wb, wp in zip(w.kept.boxes, w.kept.phrases)]
        agree = (g.masks[order] == w.masks).all(axis=0)
        assert agree.mean() > 0.999  # a box moved by float rounding flips at most a few edge pixels
        assert np.abs(g.anomaly_map - w.anomaly_map)[agree].max() <= SCORE_TOL * len(w.kept)


def test_openvino_conversion_of_the_tiny_detector_is_cached_on_disk(ov_detectors, tiny_models) -> None:
    from iapas.models.factory import load_detector

    _, ovd, cache_dir = ov_detectors
    again = load_detector(str(tiny_models["grounding-dino"]), runtime="openvino", ov_cache=cache_dir)
    again.detect(_images(3, 1), "crack .")
    assert again.ov.conversions == 0  # read from the cache the fixture filled
    assert ovd.conversion_seconds < 60, ovd.conversion_seconds  # CPU seconds, not minutes, for the tiny model


def test_the_openvino_detector_called_from_several_threads_gives_each_call_its_own_results(ov_detectors) -> None:
    """One compiled model has one infer request: threads took it from each other ('Infer Request
    is busy', or another call's boxes). Each call now gets what it gets alone."""
    import threading

    _, ovd, _ = ov_detectors
    images = _images(7, 4)
    captions = ["crack .", "a long hole . stain . crack . dent ."]
    alone = {(i, c): ovd.detect([images[i]], c)[0] for i in range(len(images)) for c in captions}
    problems: list[str] = []

    def work(seed: int) -> None:
        rng = np.random.default_rng(seed)
        for _ in range(12):
            i, c = int(rng.integers(len(images))), captions[int(rng.integers(2))]
            try:
                got = ovd.detect([images[i]], c)[0]
            except Exception as exc:  # noqa: BLE001 - what the test looks for
                problems.append(repr(exc))
                continue
            want = alone[i, c]
            if not (np.array_equal(got.boxes, want.boxes) and np.array_equal(got.scores, want.scores) and got.phrases == want.phrases):
                problems.append(f"image {i}, {c!r}: another call's results")

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert problems == []


def test_ov_int8_without_nncf_is_refused_when_loading_not_after_each_conversion(tiny_models, monkeypatch) -> None:
    import sys

    from iapas.models.factory import load_detector
    from iapas.models.ov.cache import OpenVinoMissingError

    monkeypatch.setitem(sys.modules, "nncf", None)  # what 'import nncf' meets when it is not installed
    with pytest.raises(OpenVinoMissingError) as raised:
        load_detector(str(tiny_models["grounding-dino"]), runtime="openvino", ov_int8=True)
    assert str(raised.value) == "--ov-int8 needs nncf: pip install 'iapas[openvino]'"


def test_the_detectors_ir_is_not_reused_across_transformers_versions(
    ov_detectors, tiny_models, monkeypatch: pytest.MonkeyPatch
) -> None:
    """transformers' modelling code is what is traced: another version converts again (as SAM's
    graphs do), beside the entry the fixture made, which the installed version still reads."""
    import transformers

    from iapas.models.factory import load_detector

    _, ovd, cache_dir = ov_detectors
    version = transformers.__version__
    assert ovd.ov.fingerprint.startswith("sha256:")  # the folder's content, not its path
    assert ovd.ov.fingerprint.endswith(f";transformers={version};gdino-graph=1")
    before = sorted(p.name for p in cache_dir.iterdir() if p.is_dir())
    monkeypatch.setattr(transformers, "__version__", version + ".post-other")
    other = load_detector(str(tiny_models["grounding-dino"]), runtime="openvino", ov_cache=cache_dir)
    other.detect(_images(3, 1), "crack .")
    assert other.ov.conversions == 1
    after = sorted(p.name for p in cache_dir.iterdir() if p.is_dir())
    assert set(before) < set(after) and len(after) == len(before) + 1
    monkeypatch.setattr(transformers, "__version__", version)
    again = load_detector(str(tiny_models["grounding-dino"]), runtime="openvino", ov_cache=cache_dir)
    again.detect(_images(3, 1), "crack .")
    assert again.ov.conversions == 0


# --- the runtime's refusals and the command line ---------------------------------------------------


@pytest.mark.parametrize("kind,model", [("detector", "owlv2"), ("detector", "sam3"), ("segmenter", "sam2")])
def test_adapters_without_openvino_refuse_the_runtime_in_one_line(tiny_models, kind: str, model: str) -> None:
    from iapas.models.factory import load_detector, load_segmenter

    load = load_detector if kind == "detector" else load_segmenter
    with pytest.raises(ValueError) as info:
        load(str(tiny_models[model]), runtime="openvino")
    message = str(info.value)
    assert "\n" not in message and message.startswith("--runtime openvino supports Grounding DINO / MM-Grounding-DINO")
    assert f"{kind} {tiny_models[model]}" in message and message.endswith("runs on torch only")


def test_openvino_runs_float32_on_the_cpu_only(tiny_models) -> None:
    """A GPU or a half-precision dtype with the runtime: the same one line for both models,
    before either loads (the detector once took float32 silently where SAM refused)."""
    from iapas.models.detector import GroundingDinoDetector
    from iapas.models.factory import load_detector, load_segmenter

    for load, kind in ((load_detector, "grounding-dino"), (load_segmenter, "sam")):
        with pytest.raises(ValueError, match=r"^--runtime openvino runs on the CPU; got --device cuda \(use --device cpu or auto\)$"):
            load(str(tiny_models[kind]), device="cuda", runtime="openvino")
        for dtype in ("float16", "bfloat16"):
            with pytest.raises(ValueError, match=rf"^--runtime openvino runs float32 models; got --dtype {dtype} \(use --dtype float32 or auto\)$"):
                load(str(tiny_models[kind]), dtype=dtype, runtime="openvino")
    folder = str(tiny_models["grounding-dino"])
    with pytest.raises(ValueError, match=r"^detector .*: the openvino runtime converts float32 models; got float16 \(use --dtype float32\)$"):
        GroundingDinoDetector.from_pretrained(folder, dtype="float16", runtime="openvino")
    with pytest.raises(ValueError, match=r"^detector .*: the openvino runtime runs on the CPU; got device cuda \(use --device cpu\)$"):
        GroundingDinoDetector.from_pretrained(folder, device="cuda", runtime="openvino")


def _cli(*args: str):
    from typer.testing import CliRunner

    from iapas.cli import app

    return CliRunner().invoke(app, list(args))


def test_segment_and_serve_take_the_runtime_and_say_one_line_when_it_cannot_run(tiny_models, tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    Image = pytest.importorskip("PIL.Image")
    Image.fromarray(_images(5, 1)[0]).save(tmp_path / "in" / "a.png")
    from iapas.product.profile import Profile

    profile = Profile.from_prompts("widget", "widget", ["scratch"]).save(tmp_path / "widget.yaml")
    owl = str(tiny_models["owlv2"])
    for command in (["segment", str(tmp_path / "in"), "--mode", "base", "--out", str(tmp_path / "out")],
                    ["serve", "--profile", str(profile), "--port", "0"]):
        result = _cli(*command, "--runtime", "openvino", "--detector", owl, "--device", "cpu")
        assert result.exit_code == 2, result.output
        assert "runs on torch only" in result.output and "Traceback" not in result.output
        bad = _cli(*command, "--runtime", "onnx")
        assert bad.exit_code == 2 and "'onnx' is not one of torch, openvino" in bad.output
        int8 = _cli(*command, "--ov-int8", "--detector", str(tiny_models["grounding-dino"]), "--device", "cpu")
        assert int8.exit_code == 2 and "--ov-int8 needs --runtime openvino" in int8.output


def test_export_openvino_fills_the_cache_a_run_then_reads(ov_detectors, tiny_models, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from iapas.cli import app

    _, _, cache_dir = ov_detectors
    args = ["export", "openvino", "--detector", str(tiny_models["grounding-dino"]), "--segmenter", "none",
            "--out", str(cache_dir), "--image-size", "200x200"]  # resizes to 320x320: the fixture's graph, read, not converted
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "IR entries in" in result.output and f"IAPAS_OPENVINO_CACHE={cache_dir}" in result.output.replace("\n", "")
    entries = [p.name for p in cache_dir.iterdir() if p.is_dir()]
    assert any("-gdino-320x320-" in name for name in entries)
    bad = CliRunner().invoke(app, [*args[:-1], "big"])
    assert bad.exit_code == 2 and "--image-size 'big': expected HEIGHTxWIDTH" in bad.output
    owl = CliRunner().invoke(app, ["export", "openvino", "--detector", str(tiny_models["owlv2"]), "--out", str(tmp_path)])
    assert owl.exit_code == 2 and "runs on torch only" in owl.output
    (tmp_path / "file").write_text("a file where the folder's parent should be")
    nowhere = CliRunner().invoke(app, [*args[:7], str(tmp_path / "file" / "ir")])
    assert nowhere.exit_code == 2
    assert " ".join(nowhere.output.split()) == f"error: cannot make the IR cache folder {tmp_path / 'file' / 'ir'}: Not a directory"


def _limit_file_size() -> None:
    import resource
    import signal

    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails (EFBIG), as on a full disk
    resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, 64 * 1024))


def test_export_fails_in_one_line_when_the_ir_cannot_be_saved(tiny_models, tmp_path: Path) -> None:
    import subprocess
    import sys

    out = tmp_path / "ir"
    cmd = [sys.executable, "-m", "iapas", "export", "openvino", "--detector", str(tiny_models["grounding-dino"]),
           "--segmenter", "none", "--out", str(out), "--image-size", "200x200"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, preexec_fn=_limit_file_size)
    assert done.returncode == 2, done.stdout + done.stderr
    error = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(error) == 1 and error[0].startswith(f"error: cannot save OpenVINO IR into {out}: "), done.stderr
    assert error[0].endswith("(free space there, or choose another folder)")
    assert "Traceback" not in done.stderr and "TracerWarning" not in done.stderr
    assert [p.name for p in out.iterdir() if not p.name.endswith(".lock")] == []  # no half-written entry


def test_the_runtime_enters_the_run_signature_only_when_not_torch() -> None:
    from iapas.engine.signature import other_settings
    from iapas.pipeline.stage2 import PipelineConfig

    assert "runtime" not in other_settings(PipelineConfig(), ())
    assert other_settings(PipelineConfig(runtime="openvino"), ())["runtime"] == "openvino"
    assert other_settings(PipelineConfig(runtime="openvino", ov_int8=True), ())["ov_int8"] is True


def test_ray_workers_on_the_openvino_runtime_reserve_no_gpu(monkeypatch) -> None:
    """On a GPU machine, --device auto gave each Ray worker a GPU even with --runtime openvino,
    which runs on the CPU: GPUs held idle, and workers beyond the GPU count never placed."""
    from iapas.engine.ray_executor import default_gpus
    from iapas.models import loading

    monkeypatch.setattr(loading, "resolve_device", lambda device="auto": "cuda")  # a machine with a GPU
    assert default_gpus("auto") == 1.0 and default_gpus("auto", "torch") == 1.0
    assert default_gpus("auto", "openvino") == 0.0 and default_gpus("cpu", "openvino") == 0.0


def test_a_ray_worker_builds_its_pipeline_on_the_drivers_runtime(ov_detectors, tiny_models, monkeypatch) -> None:
    """The config a Ray actor gets (the driver's PipelineConfig as a plain dict) carries the
    runtime, and the actor's detector runs on OpenVINO (read from the driver's IR cache)."""
    import dataclasses

    from iapas.engine.ray_executor import Stage2Actor
    from iapas.models import factory
    from iapas.pipeline.stage2 import PipelineConfig

    _, _, cache_dir = ov_detectors
    monkeypatch.setenv("IAPAS_OPENVINO_CACHE", str(cache_dir))
    torch_sam = factory.load_segmenter
    asked = {}

    def segmenter(name, device="auto", dtype="auto", **runtime):  # SAM's conversion is tested beside it
        asked.update(runtime)
        return torch_sam(name, device=device, dtype=dtype)

    monkeypatch.setattr(factory, "load_segmenter", segmenter)
    config = PipelineConfig(detector=str(tiny_models["grounding-dino"]), segmenter=str(tiny_models["sam"]),
                            device="cpu", runtime="openvino")
    actor = Stage2Actor(dataclasses.asdict(config), job=None, expected={}, fault=None)
    assert actor.pipeline.config.runtime == "openvino" and asked == {"runtime": "openvino"}
    actor.pipeline.detector.detect(_images(7, 1), "crack .")
    assert actor.pipeline.detector.ov is not None and actor.pipeline.detector.ov.conversions == 0


def test_segment_on_openvino_end_to_end_and_no_resume_across_runtimes(ov_detectors, tiny_models, tmp_path: Path,
                                                                      monkeypatch) -> None:
    """`iapas segment --runtime openvino` with the tiny models (the detector's graph from the
    fixture's cache, SAM converted here): the same kept (phrase, box) sets as a torch run of the
    same images; the folder then refuses a resume on torch."""
    import json

    from PIL import Image

    from iapas.product.profile import Profile

    _, _, cache_dir = ov_detectors
    monkeypatch.setenv("IAPAS_OPENVINO_CACHE", str(cache_dir))
    (tmp_path / "in").mkdir()
    for i, image in enumerate(_images(11, 2)):
        Image.fromarray(image).save(tmp_path / "in" / f"{i}.png")
    profile = Profile.from_prompts("widget", "widget", ["scratch"])
    profile.size_threshold = 1000.0  # keep every box
    path = profile.save(tmp_path / "widget.yaml")
    common = [str(tmp_path / "in"), "--profile", str(path), "--detector", str(tiny_models["grounding-dino"]),
              "--segmenter", str(tiny_models["sam"]), "--device", "cpu"]
    runs = {}
    for runtime in ("openvino", "torch"):
        out = tmp_path / runtime
        result = _cli("segment", *common, "--out", str(out), "--runtime", runtime)
        assert result.exit_code == 0, result.output
        runs[runtime] = sorted((json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()),
                               key=lambda r: r["image"])
    assert json.loads((tmp_path / "openvino" / "run.json").read_text())["signature"]["runtime"] == "openvino"
    from iapas.core.types import Detections

    def kept(record) -> Detections:
        boxes = record["kept"]
        return Detections(np.array([b["box"] for b in boxes], np.float32).reshape(-1, 4),
                          np.array([b["score"] for b in boxes], np.float32), tuple(b["phrase"] for b in boxes))

    for ov_record, torch_record in zip(runs["openvino"], runs["torch"]):
        assert len(torch_record["kept"]) > 0
        # results.jsonl rounds scores to 5 decimals and boxes to 2: one rounding step more than the bounds
        _same_sets(kept(torch_record), kept(ov_record), score_tol=SCORE_TOL + 1e-5, box_tol=BOX_TOL + 0.01)
    again = _cli("segment", *common, "--out", str(tmp_path / "openvino"), "--runtime", "torch")
    assert again.exit_code != 0 and "runtime" in again.output and "Traceback" not in again.output
