"""Runs that must stay safe: a full disk, two runs into one folder, progress in a log file."""

from __future__ import annotations

import errno
import json
import logging
import os
import shlex
import socket
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from iapas.cli import app
from iapas.workflows.progress import LogProgress
from iapas.evaluation import EvalSettings, evaluate_dataset
from iapas.core.lock import LOCK_FILE, OutputLockedError, output_lock
from iapas.engine.runner import ResultsLog, run_segmentation
from iapas.core.storage import is_disk_full, resume_command
from tests.test_evaluation import fake_pipeline, make_mvtec, widget_profile

runner = CliRunner()
REPO = Path(__file__).resolve().parents[1]


def child_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO / "src") + os.pathsep + str(REPO), **extra)
    env.pop("COLUMNS", None)
    return env


def make_images(folder: Path, n: int, seed: int = 0) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        path = folder / f"img_{i:02d}.png"
        Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


def read_lines(path: Path) -> list[dict]:
    """Every line of a JSON-lines file; fails on a torn one."""
    text = path.read_text(encoding="utf-8")
    assert text == "" or text.endswith("\n"), f"{path} ends in a torn line"
    return [json.loads(line) for line in text.splitlines()]


def assert_no_orphans(out: Path) -> set[str]:
    """Every map/mask/overlay belongs to an image whose ok record was written; no temp files."""
    records = read_lines(out / "results.jsonl")
    ok = {r["key"] for r in records if r["status"] == "ok"}
    for folder in ("maps", "masks", "overlays"):
        stored = {p.relative_to(out / folder).with_suffix("").as_posix() for p in (out / folder).rglob("*.png")} if (out / folder).is_dir() else set()
        assert stored == ok, folder
    assert not [p for p in out.rglob(".*") if p.name != LOCK_FILE], "temporary files left behind"
    return ok


# `python -c FAKE_CLI GO N iapas-args...`: the CLI with the fake models of test_evaluation; model run
# number N (0: none) waits until the file GO exists, so that a test can look at a run in progress.
FAKE_CLI = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from iapas.pipeline.stage2 import Pipeline
    from tests.test_evaluation import fake_pipeline

    go, hold = Path(sys.argv[1]), int(sys.argv[2])
    real = Pipeline.run
    calls = [0]

    def run(self, images, profile):
        calls[0] += 1
        if calls[0] == hold:  # hold the run until the test has seen the progress lines
            while not go.exists():
                time.sleep(0.02)
        return real(self, images, profile)

    fake = fake_pipeline()
    Pipeline.run = run
    Pipeline.from_config = classmethod(lambda cls, config: Pipeline(fake.detector, fake.segmenter, config))
    from iapas.cli import app
    sys.argv = ["iapas", *sys.argv[3:]]  # as the installed command sees it
    app(sys.argv[1:], prog_name="iapas")
    """
)


# --- 5. one run per output folder ------------------------------------------------------------------------------


def hold_lock_in_child(folder: Path, command: str = "segment") -> subprocess.Popen:
    """A second process that holds the lock of ``folder`` until its stdin closes."""
    code = textwrap.dedent(
        f"""
        import sys
        from iapas.core.lock import output_lock
        with output_lock({str(folder)!r}, {command!r}):
            print("locked", flush=True)
            sys.stdin.read()
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", code], env=child_env(), stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "locked"
    return proc


def release(proc: subprocess.Popen) -> None:
    assert proc.stdin is not None
    proc.stdin.close()
    assert proc.wait(timeout=30) == 0


def test_a_second_run_into_a_locked_folder_is_refused_with_the_holder_named(tmp_path: Path):
    images = tmp_path / "in"
    make_images(images, 2)
    out = tmp_path / "out"
    holder = hold_lock_in_child(out, "segment")
    try:
        holder_text = f"'iapas segment' (pid {holder.pid} on host {socket.gethostname()}"
        # refused before the models load (these folders do not even exist)
        result = runner.invoke(app, ["segment", str(images), "--mode", "base", "--out", str(out),
                                     "--detector", str(tmp_path / "no-detector"), "--segmenter", str(tmp_path / "no-sam")])
        assert result.exit_code == 2, result.output
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and holder_text in lines[0], result.output
        assert not (out / "results.jsonl").exists()  # refused before anything was written

        data = make_mvtec(tmp_path / "data", categories=("alpha",), n_good=1, n_bad=1)
        result = runner.invoke(app, ["evaluate", "--dataset", "mvtec", "--root", str(data), "--out", str(out), "--mode", "base"])
        assert result.exit_code == 2 and holder_text in result.output, result.output
        result = runner.invoke(app, ["bench", "--root-dir", str(tmp_path), "--out", str(out), "--mode", "base"])
        assert result.exit_code == 2 and holder_text in result.output, result.output
        from iapas.product.profile import Profile

        profile = Profile.from_prompts("alpha", "tile", ["crack"]).save(tmp_path / "alpha.yaml")
        result = runner.invoke(app, ["calibrate", "--profile", str(profile), "--normal", str(images), "--out", str(out),
                                     "--false-alarm-rate", "0.5",
                                     "--detector", str(tmp_path / "no-detector"), "--segmenter", str(tmp_path / "no-sam")])
        assert result.exit_code == 2 and holder_text in result.output, result.output
        with pytest.raises(OutputLockedError, match="in use by"):
            with output_lock(out, "calibrate"):
                pass
    finally:
        release(holder)
    assert not (out / LOCK_FILE).exists()  # released on exit
    with output_lock(out, "segment") as path:  # and free again
        assert json.loads(path.read_text())["pid"] == os.getpid()
    assert not path.exists()


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_stale_lock_of_a_dead_process_is_taken_over_with_a_log_line(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    pid = dead_pid()
    (tmp_path / LOCK_FILE).write_text(json.dumps({"pid": pid, "host": socket.gethostname(), "command": "segment"}))
    with caplog.at_level(logging.WARNING, logger="iapas.core.lock"):
        with output_lock(tmp_path, "evaluate") as path:
            assert json.loads(path.read_text())["pid"] == os.getpid()
    assert [r.getMessage() for r in caplog.records] == [
        f"{tmp_path}: taking over the stale lock of 'iapas segment' (pid {pid} on host {socket.gethostname()}): that process is gone"
    ]
    assert not (tmp_path / LOCK_FILE).exists()


def test_a_holder_killed_without_cleaning_up_leaves_a_lock_that_is_taken_over(tmp_path: Path):
    holder = hold_lock_in_child(tmp_path)
    holder.kill()  # SIGKILL: no chance to remove the lock file
    holder.wait(timeout=30)
    assert (tmp_path / LOCK_FILE).exists()
    with output_lock(tmp_path, "segment"):
        pass


def test_a_lock_from_another_host_is_refused_and_names_the_file(tmp_path: Path):
    (tmp_path / LOCK_FILE).write_text(json.dumps({"pid": 1, "host": "elsewhere.example", "command": "bench"}))
    with pytest.raises(OutputLockedError, match=r"'iapas bench' \(pid 1 on host elsewhere\.example\).*another host.*remove .*\.iapas\.lock"):
        with output_lock(tmp_path, "segment"):
            pass


# --- 4. a full disk ---------------------------------------------------------------------------------------------------


def test_resume_command_drops_restart_and_quotes():
    assert resume_command(["segment", "my parts", "--restart", "--out", "o"]) == "iapas segment 'my parts' --out o"
    assert is_disk_full(OSError(errno.EDQUOT, "quota")) and is_disk_full(OSError(errno.EROFS, "ro"))
    assert not is_disk_full(OSError(errno.EACCES, "denied"))


def test_a_failed_append_leaves_no_torn_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    log = ResultsLog(tmp_path / "results.jsonl")
    log.append({"key": "a", "status": "ok"})
    before = log.path.read_bytes()

    def no_space(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("iapas.engine.log.os.fsync", no_space)
    with pytest.raises(OSError):
        log.append({"key": "b", "status": "ok"})
    assert log.path.read_bytes() == before


def enospc_after(monkeypatch: pytest.MonkeyPatch, target: str, n_ok: int, *, partial: bool) -> list[int]:
    """Make ``target`` (a writer taking the output path first) fail with ENOSPC from call
    ``n_ok + 1`` on, after writing part of its file when ``partial``. Returns the call counter."""
    module, name = target.rsplit(".", 1)
    import importlib

    real = getattr(importlib.import_module(module), name)
    calls = [0]

    def writer(*args, **kwargs):
        calls[0] += 1
        if calls[0] <= n_ok:
            return real(*args, **kwargs)
        if partial:
            real(*args, **kwargs)  # e.g. the map is written, the mask is not
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(target, writer)
    return calls


def test_segment_stops_on_enospc_without_orphans(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    paths = make_images(tmp_path / "in", 12)
    pipeline = fake_pipeline()
    runs = [0]
    real_run = pipeline.run

    def counted(images, profile):
        runs[0] += 1
        return real_run(images, profile)

    monkeypatch.setattr(pipeline, "run", counted)
    enospc_after(monkeypatch, "iapas.engine.runner.write_image_outputs", 3, partial=True)
    out = tmp_path / "out"
    summary = run_segmentation(paths, pipeline, widget_profile("part"), out)
    assert summary.stopped == "no space left on device"
    assert (summary.done, summary.not_run, summary.failed) == (3, 9, [])
    assert runs[0] < len(paths)  # no model run for most of the remaining images
    assert assert_no_orphans(out) == {"img_00", "img_01", "img_02"}

    monkeypatch.undo()  # room again: the same call resumes
    summary = run_segmentation(paths, fake_pipeline(), widget_profile("part"), out)
    assert (summary.skipped, summary.done, summary.stopped) == (3, 9, None)
    assert len(assert_no_orphans(out)) == 12


def test_evaluate_cli_stops_on_enospc_with_the_summary_and_exit_1(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    data = make_mvtec(tmp_path / "data", categories=("alpha", "beta"), n_good=3, n_bad=3)
    out = tmp_path / "out"
    monkeypatch.setattr("iapas.pipeline.stage2.Pipeline.from_config", classmethod(lambda cls, config: fake_pipeline()))
    enospc_after(monkeypatch, "iapas.evaluation.core.save_map_file", 2, partial=True)
    argv = ["evaluate", "--dataset", "mvtec", "--root", str(data), "--out", str(out), "--mode", "base", "--protocol", "full",
            "--calibration-images", "0"]
    monkeypatch.setattr(sys, "argv", ["iapas", *argv, "--restart"])
    result = runner.invoke(app, argv)
    assert result.exit_code == 1, result.output
    assert "mean" in result.output  # the normal summary table
    assert "stopped early: no space left on device; categories not evaluated: alpha, beta" in result.output
    assert f"resume with: {shlex.join(['iapas', *argv])}" in result.output.replace("\n", " ")
    records = read_lines(out / "predictions" / "alpha.jsonl")
    assert [r["status"] for r in records] == ["ok", "ok"]
    assert sorted(p.relative_to(out).as_posix() for p in (out / "maps").rglob("*") if p.is_file()) == sorted(r["map"] for r in records)
    assert not (out / "predictions" / "beta.jsonl").exists()

    monkeypatch.undo()  # room again: the same run resumes, and says so
    messages: list[str] = []  # (the CLI replaced the root logger's handlers, caplog's among them)
    handler = logging.Handler()
    handler.emit = lambda record: messages.append(record.getMessage())  # type: ignore[method-assign]
    core_log = logging.getLogger("iapas.evaluation.core")
    core_log.addHandler(handler)
    try:
        again = evaluate_dataset("mvtec", data, out, fake_pipeline(), EvalSettings(protocol="full", mode="base"), report=False)
    finally:
        core_log.removeHandler(handler)
    assert not again.failed
    assert "alpha: resuming: 2 of 6 image(s) already done" in messages
    assert len(read_lines(out / "predictions" / "beta.jsonl")) == 6


def leave_free(mount: Path, nbytes: int) -> None:
    """Fill ``mount`` with ``filler`` until about ``nbytes`` are free: delete it to make room."""
    stat = os.statvfs(mount)
    (mount / "filler").write_bytes(b"\0" * (stat.f_bavail * stat.f_frsize - nbytes))


@pytest.fixture()
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs (root only), unmounted after the test."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=False)


def test_segment_on_a_full_tmpfs_stops_saves_and_resumes(small_disk: Path, tmp_path: Path):
    make_images(tmp_path / "in", 20)
    leave_free(small_disk, 48 * 1024)  # room for a few images' outputs (about 10 KB each)
    argv = ["segment", str(tmp_path / "in"), "--mode", "base", "--out", str(small_disk / "out")]
    done = subprocess.run([sys.executable, "-c", FAKE_CLI, "go", "0", *argv], env=child_env(), capture_output=True, text=True, timeout=300)
    log = done.stderr
    assert done.returncode == 1, log
    assert "segmented now" in log and "not segmented (stopped early)" in log  # the summary
    assert "stopped early: no space left on device" in log and "Traceback" not in log
    assert f"resume with: {shlex.join(['iapas', *argv])}" in log
    saved = assert_no_orphans(small_disk / "out")
    assert len(saved) < 20

    (small_disk / "filler").unlink()  # room again: the command given resumes
    done = subprocess.run([sys.executable, "-c", FAKE_CLI, "go", "0", *argv], env=child_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert f"resuming: {len(saved)} of 20 image(s) already done" in done.stderr
    assert len(assert_no_orphans(small_disk / "out")) == 20


def test_evaluate_on_a_full_tmpfs_stops_and_resumes_to_the_same_metrics(small_disk: Path, tmp_path: Path):
    data = make_mvtec(tmp_path / "data", categories=("alpha", "beta", "gamma"), n_good=4, n_bad=4, size=(400, 400))
    settings = EvalSettings(protocol="full", mode="base")
    out = small_disk / "out"
    leave_free(small_disk, 24 * 1024)  # room for a few maps (a few KB each)
    first = evaluate_dataset("mvtec", data, out, fake_pipeline(), settings, report=False)
    assert first.stopped == "no space left on device" and first.failed
    for path in (out / "predictions").glob("*.jsonl"):
        records = read_lines(path)
        assert sorted(p.relative_to(out).as_posix() for p in (out / "maps" / path.stem).rglob("*.npz")) == sorted(r["map"] for r in records)
    assert not [p for p in out.rglob(".*") if p.name != LOCK_FILE]

    (small_disk / "filler").unlink()
    second = evaluate_dataset("mvtec", data, out, fake_pipeline(), settings, report=False)
    reference = evaluate_dataset("mvtec", data, tmp_path / "reference", fake_pipeline(), settings, report=False)
    assert second.stopped is None and not second.failed
    assert [json.dumps(c.metrics.to_dict()) for c in second.categories] == [
        json.dumps(c.metrics.to_dict()) for c in reference.categories
    ]


# --- 11. progress when stderr is not a terminal -----------------------------------------------------------------------


def logged_progress(caplog: pytest.LogCaptureFixture, description: str, total: int, resumed: int, new: int, seconds: float) -> list[str]:
    """The lines of a step of ``total`` images: ``resumed`` done before, then ``new`` at
    ``seconds`` each (a fake clock), with the default 30 s interval."""
    now = [0.0]
    progress = LogProgress(interval=30.0, clock=lambda: now[0])
    with caplog.at_level(logging.INFO, logger="iapas.progress"):
        task = progress.add_task(description, total)
        for _ in range(resumed):
            progress.advance(task, resumed=True)  # an earlier run's: counted, not logged one by one
        for _ in range(new):
            now[0] += seconds
            progress.advance(task)
    return [r.getMessage() for r in caplog.records]


def test_log_progress_every_5_percent_or_interval_whichever_first(caplog: pytest.LogCaptureFixture):
    # one new image a second: a line every 5% (5 s, under the 30 s interval), ETA = images left
    assert logged_progress(caplog, "segmenting", 100, resumed=20, new=80, seconds=1.0) == [
        "segmenting: 25/100 (25%), 1.00 images/s, ETA 0:01:15 (20 already done)",
        "segmenting: 30/100 (30%), 1.00 images/s, ETA 0:01:10 (20 already done)",
        *[f"segmenting: {n}/100 ({n}%), 1.00 images/s, ETA 0:{(100 - n) // 60:02d}:{(100 - n) % 60:02d} (20 already done)"
          for n in range(35, 100, 5)],
        "segmenting: 100/100 (100%), done in 0:01:20, 1.00 images/s (20 already done)",
    ]


def test_log_progress_after_the_interval_even_below_5_percent(caplog: pytest.LogCaptureFixture):
    # 20 s per image: nothing at 20 s, a line at 40 s (30 s passed), none at 60 s (20 s since)
    assert logged_progress(caplog, "alpha", 1000, resumed=0, new=3, seconds=20.0) == [
        "alpha: 2/1000 (0%), 0.05 images/s, ETA 5:32:40"
    ]


def read_until(stream, marker: str) -> list[str]:
    lines = []
    for line in stream:
        lines.append(line.rstrip("\n"))
        if marker in line:
            return lines
    raise AssertionError(f"{marker!r} never came; got:\n" + "\n".join(lines))


def watch_held_run(go: Path, hold: int, argv: list[str], marker: str, **env: str) -> tuple[list[str], str]:
    """Run the CLI with model run ``hold`` held; read its stderr (a pipe: not a terminal) up to
    ``marker`` and check the run is still going; then let it finish. Returns the lines read
    while it was held and the rest of its stderr."""
    proc = subprocess.Popen([sys.executable, "-c", FAKE_CLI, str(go), str(hold), *argv], env=child_env(**env),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None
        seen = read_until(proc.stderr, marker)
        assert proc.poll() is None  # the run has not ended: it waits for the held model run
        go.touch()
        rest = proc.stderr.read()
        assert proc.wait(timeout=60) == 0, rest
        return seen, rest
    finally:
        go.touch()
        proc.kill()
        proc.wait()


def test_segment_in_a_log_file_shows_progress_lines_while_it_runs(tmp_path: Path):
    images = tmp_path / "in"
    make_images(images, 10)
    go = tmp_path / "go"
    out = tmp_path / "out"
    argv = ["segment", str(images), "--mode", "base", "--out", str(out)]
    seen, rest = watch_held_run(go, 9, argv, "segmenting: 8/10", IAPAS_PROGRESS_SECONDS="3600")  # 10% steps
    progress = [line for line in seen if line.startswith("info: segmenting:")]
    assert [line.split(",")[0] for line in progress] == [f"info: segmenting: {n}/10 ({10 * n}%)" for n in range(1, 9)]
    assert all("images/s, ETA " in line for line in progress)
    assert "info: segmenting: 10/10 (100%), done in" in rest

    # a resumed run says how many were already done
    done = subprocess.run([sys.executable, "-c", FAKE_CLI, str(go), "0", *argv], env=child_env(), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert f"info: resuming: 10 of 10 image(s) already done in {out}" in done.stderr
    assert "info: segmenting: 10/10 (100%), done in 0:00:00 (10 already done)" in done.stderr


def test_evaluate_in_a_log_file_shows_progress_per_category(tmp_path: Path):
    data = make_mvtec(tmp_path / "data", categories=("alpha", "beta"), n_good=2, n_bad=2)
    argv = ["evaluate", "--dataset", "mvtec", "--root", str(data), "--out", str(tmp_path / "out"), "--mode", "base", "--protocol", "full",
            "--calibration-images", "0"]
    seen, rest = watch_held_run(tmp_path / "go", 6, argv, "info: beta: 1/4 (25%)")
    assert "info: alpha: 4/4 (100%), done in" in "\n".join(seen)
    assert "info: beta: 4/4 (100%), done in" in rest
