"""``--engine ray`` (Ray Data, a local Ray of 2 CPUs): the same outputs as ``--engine local``, an
actor killed mid-run, a driver killed mid-run. Skipped without ray, except under CI (CI=true)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from iapas.cli import app
from tests import engine_golden
from tests.conftest import shared_data

try:
    import ray
except ImportError:  # pragma: no cover - the extra is not installed
    ray = None

pytestmark = pytest.mark.skipif(
    ray is None and os.environ.get("CI") != "true", reason="ray is not installed (pip install 'iapas[ray]')"
)
runner = CliRunner()


@pytest.fixture(scope="module")
def ray_session():
    import ray as the_ray  # under CI a missing ray fails here, it does not skip

    the_ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield the_ray
    the_ray.shutdown()


def records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines() if line.strip()]


def invoke(argv: list[str]) -> None:
    result = runner.invoke(app, argv)
    assert result.exit_code == 0, (result.output, result.exception)


def test_ray_writes_the_same_maps_masks_overlays_and_records_as_local(ray_session, tiny_models, tmp_path: Path):
    mtd = shared_data("MTD")
    models = tiny_models["sam"].parent
    local, distributed = tmp_path / "local", tmp_path / "ray"
    for out, extra in ((local, []), (distributed, ["--engine", "ray", "--workers", "1", "--cpus-per-worker", "1"])):
        commands = engine_golden.scenario_commands(tiny_models, mtd, out, extra)
        invoke(commands["segment-decided"])  # batches of 2, OK/NG decided
        evaluate = commands["evaluate"]
        evaluate[evaluate.index("--calibration-images") + 1] = "0"  # one category: one pool of actors
        invoke(evaluate)
    got, expected = engine_golden.digest(distributed, mtd, models), engine_golden.digest(local, mtd, models)
    assert sorted(got) == sorted(expected)
    for name in expected:  # PNG bytes, npz arrays, records and tables but timings (output folders as <OUT>)
        assert got[name] == expected[name], name
    assert len(records(distributed / "segment-decided")) == 6
    assert any(r["kept"] for r in records(distributed / "segment-decided"))  # maps that are not all zero


def test_an_actor_killed_on_its_second_batch_is_restarted_and_every_image_is_there_once(ray_session, tiny_models, tmp_path, monkeypatch):
    mtd = shared_data("MTD")
    marker = tmp_path / "killed"
    monkeypatch.setenv("IAPAS_TEST_KILL_ACTOR_AT_BATCH", "2")
    monkeypatch.setenv("IAPAS_TEST_KILL_MARKER", str(marker))
    out = tmp_path / "out"
    argv = engine_golden.scenario_commands(tiny_models, mtd, tmp_path, ["--engine", "ray"])["segment"]
    argv[argv.index("--out") + 1] = str(out)
    invoke(argv)
    assert marker.exists()  # the fault switch fired: one actor died
    keys = [r["key"] for r in records(out)]
    assert sorted(keys) == sorted({p.stem for p in engine_golden.mtd_images(mtd)}) and len(keys) == len(set(keys)) == 6
    assert all(r["status"] == "ok" for r in records(out))
    assert sorted(p.stem for p in (out / "maps").glob("*.png")) == sorted(keys)


def test_a_killed_driver_resumes_and_every_image_is_there_once(ray_session, tiny_models, tmp_path: Path):
    mtd = shared_data("MTD")
    images = sorted((mtd / "MT_Free" / "Imgs").glob("*.jpg"))[:12]
    out = tmp_path / "out"
    argv = ["segment", *map(str, images), "--mode", "base", "--out", str(out), "--detector", str(tiny_models["grounding-dino"]),
            "--segmenter", str(tiny_models["sam"]), "--device", "cpu", "--quiet", "--no-overlay", "--engine", "ray"]
    # the driver joins the test's Ray as a cluster (no second start-up); its --out is absolute
    address = ["--ray-address", ray_session.get_runtime_context().gcs_address]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1] / "src"), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, "-m", "iapas", *argv, *address], env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    log = out / "results.jsonl"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            if log.exists() and len(log.read_text().splitlines()) >= 2:
                break
            time.sleep(0.2)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)  # the driver (Ray removes its actors)
        proc.wait()
    first = len(records(out)) if log.exists() else 0
    assert 0 < first < len(images), f"the driver was not killed mid-run ({first} records)"
    invoke([*argv, *address])  # the same command again
    result = runner.invoke(app, [*argv[:argv.index("--out") + 1], "relative/out", *argv[argv.index("--out") + 2:], *address])
    assert result.exit_code == 2 and "is relative" in result.output
    keys = [r["key"] for r in records(out)]
    assert sorted(keys) == sorted(p.stem for p in images) and len(set(keys)) == len(keys)
    assert all(r["status"] == "ok" for r in records(out))


def test_a_batch_that_kills_every_retry_ends_with_one_line_and_no_traceback(tiny_models, tmp_path: Path):
    """A group whose actor dies on every try (restarts and retries used up) fails the run with
    one line naming the cause, not Ray's pages of traceback above it."""
    mtd = shared_data("MTD")
    argv = engine_golden.scenario_commands(tiny_models, mtd, tmp_path, ["--engine", "ray", "--workers", "1"])["segment"]
    env = {**os.environ, "IAPAS_TEST_KILL_ACTOR_AT_BATCH": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    env.pop("IAPAS_TEST_KILL_MARKER", None)  # no marker: the actor dies at its first batch every time
    done = subprocess.run([sys.executable, "-m", "iapas", *argv], capture_output=True, text=True, env=env, timeout=600)
    output = done.stdout + done.stderr
    assert done.returncode == 2, output
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert "Traceback" not in output and "Full stack trace" not in output, output
    assert lines[-1].startswith("error: the Ray run failed: a batch killed its worker on every try (4 restarts): "), output
    assert "Some common causes" not in lines[-1]
