"""`iapas serve`'s REST API with the tiny models, through httpx against a real uvicorn on a free
loopback port (in a thread of this process, so the tests can count detector forwards)."""

from __future__ import annotations

import io
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")

from iapas.cli import app as cli_app  # noqa: E402
from iapas.product.decision import Decision  # noqa: E402
from iapas.core.images import ImageReadError, read_image  # noqa: E402
from iapas.core.maps import decode_map  # noqa: E402
from iapas.product.profile import Profile  # noqa: E402
from iapas.serve import build_station  # noqa: E402
from iapas.serve.app import ServeSettings  # noqa: E402
from iapas.serve.server import BackgroundServer  # noqa: E402
from iapas.serve.store import ID_PATTERN  # noqa: E402

TOKEN = "0123456789abcdef0123"
runner = CliRunner()


@pytest.fixture(scope="module")
def pipeline(tiny_models: dict[str, Path]):
    from iapas.pipeline.stage2 import Pipeline, PipelineConfig

    return Pipeline.from_config(PipelineConfig(detector=str(tiny_models["grounding-dino"]), segmenter=str(tiny_models["sam"]),
                                               device="cpu"))


def make_profiles() -> dict[str, Profile]:
    """bottle: calibrated (threshold 0.05, normalised score over [0, 0.1]); screw: uncalibrated."""
    bottle = Profile.from_prompts("bottle", "bottle", ["scratch", "crack"])
    bottle.decision = Decision(threshold=0.05, score_min=0.0, score_max=0.1, n_calibration=20, target_rate=0.1)
    return {"bottle": bottle, "screw": Profile.from_prompts("screw", "screw", ["scratch"])}


def png(seed: int = 0, size: tuple[int, int] = (96, 128)) -> bytes:
    rng = np.random.default_rng(seed)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


@contextmanager
def station(pipeline, token: str | None = None, max_upload: int = 2**20, **kwargs):
    """(url, worker) of a station on a real uvicorn on a free loopback port."""
    settings = ServeSettings(max_upload=max_upload, token=token)
    app, worker = build_station(pipeline, make_profiles(), settings=settings, **kwargs)
    try:
        with BackgroundServer(app) as url:
            yield url, worker
    finally:
        worker.stop()


def inspect(client, data: bytes, category: str = "bottle", name: str = "part.png", **headers):
    return client.post("/v1/inspect", files={"file": (name, data, "application/octet-stream")},
                       data={"category": category}, headers=headers)


def test_a_good_image_gets_verdict_scores_boxes_timings_and_pngs(pipeline):
    with station(pipeline) as (url, _), httpx.Client(base_url=url, timeout=60) as client:
        response = inspect(client, png(1))
        assert response.status_code == 200, response.text
        body = response.json()
        assert ID_PATTERN.fullmatch(body["id"]) and body["category"] == "bottle" and body["filename"] == "part.png"
        assert body["decision"] in ("OK", "NG") and body["threshold"] == 0.05
        # the normalised score is the calibrated decision's (score - threshold) / (max - min) + 0.5 in [0, 1]
        expected = min(1.0, max(0.0, (body["decision_score"] - 0.05) / 0.1 + 0.5))
        assert body["normalized_score"] == pytest.approx(expected, abs=1e-5)
        assert body["decision"] == ("NG" if body["decision_score"] > 0.05 else "OK")
        assert {"decode", "queue", "detection", "segmentation", "fusion", "outputs", "total"} <= set(body["timings_ms"])
        assert (body["width"], body["height"]) == (128, 96)
        assert set(body["object"]) == {"box", "score", "size", "source"}
        for box in body["kept"] + body["dropped"]:
            assert set(box) == {"box", "score", "phrase"}
        pictures = {}
        for kind, link in body["urls"].items():
            got = client.get(link)
            assert got.status_code == 200 and got.headers["content-type"] == "image/png"
            pictures[kind] = np.asarray(Image.open(io.BytesIO(got.content)))
        assert pictures["map"].dtype == np.uint16 and pictures["map"].shape == (96, 128)
        assert decode_map(pictures["map"]).max() == pytest.approx(min(body["image_score"], 6.5535), abs=1e-4)
        assert set(np.unique(pictures["mask"])) <= {0, 255}
        assert (pictures["mask"].max() == 255) == (body["decision"] == "NG")  # the decision mask: empty exactly when OK
        assert pictures["overlay"].shape == (96, 128, 3)
        # the overlay is drawn on its first request, then kept: the same bytes again
        assert client.get(body["urls"]["overlay"]).content == client.get(body["urls"]["overlay"]).content
        # the raw body with ?category= gives the same answer for the same image
        raw = client.post("/v1/inspect?category=bottle&filename=raw.png", content=png(1))
        assert raw.status_code == 200, raw.text
        assert {k: raw.json()[k] for k in ("image_score", "kept", "dropped", "decision")} == \
            {k: body[k] for k in ("image_score", "kept", "dropped", "decision")}
        # uncalibrated: no verdict, null normalised score
        screw = inspect(client, png(2), category="screw").json()
        assert screw["decision"] is None and screw["normalized_score"] is None and screw["threshold"] is None


def test_broken_image_is_400_with_the_reason_segment_gives(pipeline, tmp_path: Path):
    broken = png(3)[:200]  # a truncated PNG
    (tmp_path / "part.png").write_bytes(broken)
    with pytest.raises(ImageReadError) as info:
        read_image(tmp_path / "part.png")
    expected = str(info.value).replace(str(tmp_path / "part.png"), "part.png")
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    with pytest.raises(ImageReadError) as info2:
        read_image(text)
    with station(pipeline) as (url, worker), httpx.Client(base_url=url, timeout=60) as client:
        response = inspect(client, broken)
        assert response.status_code == 400 and response.json() == {"detail": expected}
        response = inspect(client, b"not an image", name="notes.png")
        assert response.json() == {"detail": str(info2.value).replace(str(text), "notes.png")}
        assert "not an image file PIL can read" in response.json()["detail"]
        assert inspect(client, b"").json() == {"detail": "part.png: empty file (0 bytes)"}
        gif = io.BytesIO()
        Image.new("RGB", (32, 32)).save(gif, format="GIF")  # PIL reads GIF, uploads may not be GIF
        assert inspect(client, gif.getvalue(), name="part.gif").json() == {
            "detail": "part.gif: not an image file PIL can read (unknown or unsupported format)"}
        assert worker.images_served == 0
        jpeg = io.BytesIO()
        Image.new("RGB", (64, 48), (200, 10, 10)).save(jpeg, format="JPEG")
        named_png = inspect(client, jpeg.getvalue(), name="really-a-jpeg.png")  # the type comes from the content
        assert named_png.status_code == 200 and named_png.json()["width"] == 64


def test_decompression_bomb_guard_applies_to_uploads(pipeline):
    settings = ServeSettings(max_pixels=1000)
    app, worker = build_station(pipeline, make_profiles(), settings=settings)
    try:
        with BackgroundServer(app) as url, httpx.Client(base_url=url, timeout=60) as client:
            response = inspect(client, png(4))
            assert response.status_code == 400
            assert response.json()["detail"].startswith("part.png: 128x96 pixels is over the limit of 1,000 (a decompression-bomb guard)")
    finally:
        worker.stop()


def test_overlay_of_an_upload_over_the_default_pixel_limit_but_under_max_pixels(pipeline, monkeypatch):
    """A raised --max-pixels accepts a 128x96 image over the default limit (lowered here to
    5000); its overlay, decoded again from the upload, is served too, not a 500."""
    from iapas.core import images as iapas_io

    settings = ServeSettings(max_pixels=20_000)
    monkeypatch.setattr(iapas_io.read_image_bytes, "__defaults__", (5000,))
    app, worker = build_station(pipeline, make_profiles(), settings=settings)
    try:
        with BackgroundServer(app) as url, httpx.Client(base_url=url, timeout=60) as client:
            body = inspect(client, png(4)).json()
            overlay = client.get(f"/v1/results/{body['id']}/overlay.png")
            assert overlay.status_code == 200
            assert Image.open(io.BytesIO(overlay.content)).size == (128, 96)
    finally:
        worker.stop()


def test_too_large_is_413_declared_or_streamed(pipeline):
    with station(pipeline, max_upload=50_000) as (url, worker), httpx.Client(base_url=url, timeout=60) as client:
        big = png(5, size=(300, 300))
        assert len(big) > 50_000
        response = client.post("/v1/inspect?category=bottle", content=big)  # Content-Length over the limit
        assert response.status_code == 413 and "over the limit of" in response.json()["detail"]

        def chunks():  # no Content-Length: the bytes read are counted
            for i in range(0, len(big), 8192):
                yield big[i:i + 8192]

        response = client.post("/v1/inspect?category=bottle", content=chunks())
        assert response.status_code == 413 and "--max-upload-mb" in response.json()["detail"]
        assert worker.images_served == 0


def test_bad_or_missing_token_is_401_and_no_work_is_done(pipeline):
    with station(pipeline, token=TOKEN) as (url, worker), httpx.Client(base_url=url, timeout=60) as client:
        before = pipeline.detector.forward_count
        for headers in ({}, {"Authorization": "Bearer wrong-token-wrong-token"}, {"Authorization": TOKEN}):
            response = inspect(client, png(6), **headers)
            assert response.status_code == 401 and response.headers["www-authenticate"] == "Bearer"
            assert "token" in response.json()["detail"]
        assert client.get("/v1/health").status_code == 401
        assert pipeline.detector.forward_count == before and worker.images_served == 0
        good = {"Authorization": f"Bearer {TOKEN}"}
        assert inspect(client, png(6), **good).status_code == 200
        assert client.get("/v1/health", headers=good).json()["images_served"] == 1
        assert client.get("/").status_code == 200  # the page itself holds no data


def test_unknown_category_is_404_listing_the_known_ones(pipeline):
    with station(pipeline) as (url, _), httpx.Client(base_url=url, timeout=60) as client:
        response = inspect(client, png(7), category="tyre")
        assert response.status_code == 404
        assert response.json() == {"detail": "unknown category 'tyre'; known: bottle, screw"}
        missing = client.post("/v1/inspect", content=png(7))
        assert missing.status_code == 400 and "known: bottle, screw" in missing.json()["detail"]


def test_full_queue_is_503_with_retry_after(pipeline):
    """The worker is held inside its first batch; one more request fills the queue of 1; the
    next is refused at once with 503 and Retry-After; released, the two held ones finish."""
    entered, release = threading.Event(), threading.Event()
    run = pipeline.run

    def held(images, profile=None):
        entered.set()
        assert release.wait(60)
        return run(images, profile)

    pipeline.run = held
    try:
        with station(pipeline, batch_size=1, max_wait_ms=0, queue_size=1) as (url, worker), \
                httpx.Client(base_url=url, timeout=60) as client, ThreadPoolExecutor(2) as pool:
            first = pool.submit(inspect, client, png(8))
            assert entered.wait(30)
            second = pool.submit(inspect, client, png(9))
            for _ in range(3000):
                if worker.depth == 1:
                    break
                time.sleep(0.01)
            assert client.get("/v1/health").json()["queue_depth"] == 1
            refused = inspect(client, png(10))
            assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
            assert "queue is full" in refused.json()["detail"]
            release.set()
            assert first.result().status_code == 200 and second.result().status_code == 200
    finally:
        release.set()
        pipeline.run = run


def test_concurrent_requests_share_detector_forwards(pipeline):
    """4 requests at once: one batch, 2 detector forwards (object tag + caption) instead of 8."""
    n = 4
    with station(pipeline, batch_size=n, max_wait_ms=5000) as (url, worker), \
            httpx.Client(base_url=url, timeout=60) as client, ThreadPoolExecutor(n) as pool:
        before = pipeline.detector.forward_count
        answers = list(pool.map(lambda seed: inspect(client, png(seed)), range(20, 20 + n)))
        forwards = pipeline.detector.forward_count - before
        assert [a.status_code for a in answers] == [200] * n
        assert forwards < n and forwards == 2
        assert [a.json()["batch_size"] for a in answers] == [n] * n and worker.batches == 1
        # each answer is its own image's: the same as a request alone
        alone = inspect(client, png(21)).json()
        assert alone["batch_size"] == 1
        assert alone["image_score"] == pytest.approx(answers[1].json()["image_score"], abs=1e-5)


def test_every_endpoint(pipeline):
    with station(pipeline) as (url, _), httpx.Client(base_url=url, timeout=60) as client:
        ids = [inspect(client, png(seed)).json() for seed in (30, 31, 32)]
        health = client.get("/v1/health").json()
        assert health["status"] == "ok" and health["images_served"] == 3 and health["queue_depth"] == 0
        assert health["device"] == "cpu" and set(health["models"]) == {"detector", "segmenter"}
        profiles = client.get("/v1/profiles").json()["profiles"]
        assert [p["category"] for p in profiles] == ["bottle", "screw"]
        assert profiles[0]["decision"]["threshold"] == 0.05 and profiles[1]["decision"] is None
        listed = client.get("/v1/results?limit=2").json()
        assert listed["total"] == 3 and [r["id"] for r in listed["results"]] == [ids[2]["id"], ids[1]["id"]]
        ng = client.get("/v1/results?decision=NG&limit=10").json()["results"]
        assert [r["id"] for r in ng] == [r["id"] for r in reversed(ids) if r["decision"] == "NG"]
        by_score = client.get("/v1/results?sort=score").json()["results"]
        assert [r["image_score"] for r in by_score] == sorted((r["image_score"] for r in ids), reverse=True)
        assert client.get("/v1/results?decision=maybe").status_code == 422
        assert client.get("/v1/results?limit=0").json() == {"detail": "limit must be in 1..1000"}
        # ids are validated; nothing else is a path
        for bad in ("../../etc/passwd", "0" * 31, "G" * 32, "%2e%2e%2fx"):
            response = client.get(f"/v1/results/{bad}/map.png")
            assert response.status_code == 404 and "detail" in response.json()
        assert client.get(f"/v1/results/{'0' * 32}/map.png").status_code == 404
        assert client.get(f"/v1/results/{ids[0]['id']}/image.png").status_code == 404
        page = client.get("/")
        assert page.status_code == 200 and "inspection station" in page.text and "/static/app.js" in page.text
        assert "http://" not in page.text and "https://" not in page.text  # nothing from a CDN
        assert client.get("/static/app.js").status_code == 200 and client.get("/static/style.css").status_code == 200
        assert client.get("/docs").status_code == 200
        paths = client.get("/openapi.json").json()["paths"]
        assert {"/v1/inspect", "/v1/results", "/v1/results/{result_id}/{name}", "/v1/profiles", "/v1/health",
                "/v1/results/{result_id}/thumb.png", "/v1/whatif"} <= set(paths)
        assert "access-control-allow-origin" not in client.get("/v1/health", headers={"Origin": "http://evil"}).headers


def test_memory_store_is_bounded(pipeline):
    with station(pipeline, keep=2) as (url, _), httpx.Client(base_url=url, timeout=60) as client:
        ids = [inspect(client, png(seed)).json()["id"] for seed in (40, 41, 42)]
        assert client.get(f"/v1/results/{ids[0]}/overlay.png").status_code == 404  # the oldest is dropped
        assert client.get(f"/v1/results/{ids[2]}/overlay.png").status_code == 200
        assert client.get("/v1/health").json()["results_kept"] == 2


def test_memory_store_encodes_nothing_until_asked_and_then_the_disk_stores_bytes(pipeline, tmp_path: Path):
    """The memory store keeps the uint16 map, the packed mask and the upload, encodes each PNG on
    its first request (the bytes a --store folder, i.e. segment, holds) and keeps it."""
    from iapas.core.images import read_image_bytes
    from iapas.serve.store import DiskStore, MemoryStore

    profiles = make_profiles()
    image = read_image_bytes(png(60), "part.png")
    result = pipeline.run([image.rgb], profiles["bottle"])[0]
    verdict = profiles["bottle"].judge(result)
    memory, disk = MemoryStore(profiles), DiskStore(tmp_path / "station", pipeline, profiles)
    held_id = memory.add("bottle", image, png(60), result, verdict, {})["key"]
    disk_id = disk.add("bottle", image, png(60), result, verdict, {})["key"]
    held = memory._items[held_id]
    assert held.pngs == {} and held.encoded_map.dtype == np.uint16  # nothing encoded yet
    for kind in ("map", "mask"):
        assert memory.png(held_id, kind) == disk.png(disk_id, kind), kind
    overlay = memory.png(held_id, "overlay")
    assert Image.open(io.BytesIO(overlay)).size == (128, 96)
    assert set(held.pngs) == {"map", "mask", "overlay"} and memory.png(held_id, "overlay") is overlay  # kept


def test_memory_store_holds_at_most_max_bytes(pipeline):
    from iapas.core.images import read_image_bytes
    from iapas.serve.store import MemoryStore

    profiles = make_profiles()
    image = read_image_bytes(png(61), "part.png")
    result = pipeline.run([image.rgb], profiles["screw"])[0]
    one = 96 * 128 * 2 + 96 * 128 // 8 + len(png(61))  # uint16 map + packed mask + upload
    memory = MemoryStore(profiles, capacity=100, max_bytes=int(2.5 * one))
    ids = [memory.add("screw", image, png(61), result, None, {})["key"] for _ in range(4)]
    assert len(memory) == 2 and [r["key"] for r in memory.records()] == ids[2:]
    assert memory.png(ids[0], "map") is None and memory.png(ids[3], "map") is not None


def test_store_folder_reads_like_a_segment_run_of_the_same_image(pipeline, tiny_models: dict[str, Path], tmp_path: Path):
    from iapas.engine.runner import ResultsLog

    image = tmp_path / "in" / "part.png"
    image.parent.mkdir()
    image.write_bytes(png(50))
    profile_file = make_profiles()["bottle"].save(tmp_path / "bottle.yaml")
    store = tmp_path / "station"
    with station(pipeline, store_dir=store) as (url, _), httpx.Client(base_url=url, timeout=60) as client:
        body = inspect(client, image.read_bytes()).json()
    served = store / "bottle"
    result = runner.invoke(cli_app, ["segment", str(image), "--profile", str(profile_file), "--out", str(tmp_path / "seg"),
                                     "--detector", str(tiny_models["grounding-dino"]), "--segmenter", str(tiny_models["sam"]),
                                     "--device", "cpu"])
    assert result.exit_code == 0, result.output
    seg = tmp_path / "seg"
    ours, theirs = ResultsLog(served / "results.jsonl").read(), ResultsLog(seg / "results.jsonl").read()
    (key, rec), (_, ref) = next(iter(ours.items())), next(iter(theirs.items()))
    # segment's record, and the station's own fields (file name, part id, timings, batch size)
    assert key == body["id"] and set(rec) == set(ref) | {"filename", "part_id", "timings_ms", "batch_size"}
    assert rec["filename"] == "part.png" and rec["part_id"] is None and rec["batch_size"] == 1
    different = {"key", "image", "size", "mtime_ns", "outputs", "timings", "filename", "part_id", "timings_ms", "batch_size"}
    assert {k: rec[k] for k in rec if k not in different} == {k: ref[k] for k in ref if k not in different}
    assert rec["outputs"] == {"map": f"maps/{key}.png", "mask": f"masks/{key}.png", "overlay": f"overlays/{key}.png"}
    assert Path(rec["image"]).read_bytes() == image.read_bytes() and rec["size"] == ref["size"]
    for kind in ("map", "mask", "overlay"):
        assert (served / rec["outputs"][kind]).read_bytes() == (seg / ref["outputs"][kind]).read_bytes(), kind
    run, ref_run = json.loads((served / "run.json").read_text()), json.loads((seg / "run.json").read_text())
    assert run == ref_run
    assert not (tmp_path / "station" / "screw" / "results.jsonl").exists()  # nothing served there yet
    # the history is there after a restart, and the folder can be reviewed
    with station(pipeline, store_dir=store) as (url, _), httpx.Client(base_url=url, timeout=60) as client:
        assert [r["id"] for r in client.get("/v1/results").json()["results"]] == [key]
        assert client.get(f"/v1/results/{key}/map.png").content == (seg / ref["outputs"]["map"]).read_bytes()


def test_review_serves_a_segment_folder_read_only_sorted_by_score(pipeline, tmp_path: Path):
    from iapas.serve.app import create_app
    from iapas.serve.review import ReviewStore

    store = tmp_path / "station"
    with station(pipeline, store_dir=store) as (url, _), httpx.Client(base_url=url, timeout=60) as client:
        made = [inspect(client, png(seed)).json() for seed in (60, 61, 62)]
    review = ReviewStore(store / "bottle")
    with BackgroundServer(create_app(review, {}, None)) as url, httpx.Client(base_url=url, timeout=60) as client:
        assert client.get("/v1/health").json()["review"] is True
        assert [p["category"] for p in client.get("/v1/profiles").json()["profiles"]] == ["bottle"]
        listed = client.get("/v1/results?sort=score").json()["results"]
        assert [r["image_score"] for r in listed] == sorted((m["image_score"] for m in made), reverse=True)
        assert [r["decision"] for r in listed] == [m["decision"] for m in sorted(made, key=lambda m: -m["image_score"])]
        for r in listed:
            assert ID_PATTERN.fullmatch(r["id"])
            for kind in ("map", "mask", "overlay"):
                assert client.get(r["urls"][kind]).content == (store / "bottle" / f"{kind}s" / f"{r['key']}.png").read_bytes()
        refused = client.post("/v1/inspect?category=bottle", content=png(1))
        assert refused.status_code == 405 and "read-only" in refused.json()["detail"]


def test_cli_refuses_other_hosts_without_a_token_before_loading_models(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from iapas.pipeline.stage2 import Pipeline

    monkeypatch.delenv("IAPAS_TOKEN", raising=False)
    monkeypatch.setattr(Pipeline, "from_config", classmethod(lambda cls, *a, **k: pytest.fail("models loaded")))
    profile = make_profiles()["bottle"].save(tmp_path / "bottle.yaml")
    result = runner.invoke(cli_app, ["serve", "--profile", str(profile), "--host", "0.0.0.0"])
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: --host 0.0.0.0 is reachable from other machines")
    empty = tmp_path / "token"
    empty.write_text("")
    result = runner.invoke(cli_app, ["serve", "--profile", str(profile), "--host", "0.0.0.0", "--token-file", str(empty)])
    assert result.exit_code == 2 and "the token file is empty" in result.output
    result = runner.invoke(cli_app, ["serve", "--review", str(tmp_path), "--port", "0"])
    assert result.exit_code == 2 and "not a segment or evaluate folder" in result.output


def test_cli_binds_the_port_before_loading_models_and_closes_it_on_a_failed_load(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A taken port fails at once (exit 2, no model loaded); a load failing after the bind exits
    2 and leaves the port free."""
    from iapas.models.loading import ModelLoadError
    from iapas.pipeline.stage2 import Pipeline
    from iapas.serve.server import bind

    profile = make_profiles()["bottle"].save(tmp_path / "bottle.yaml")
    monkeypatch.setattr(Pipeline, "from_config", classmethod(lambda cls, *a, **k: pytest.fail("models loaded")))
    taken = bind("127.0.0.1", 0)
    try:
        port = taken.getsockname()[1]
        result = runner.invoke(cli_app, ["serve", "--profile", str(profile), "--port", str(port)])
        assert result.exit_code == 2 and f"cannot listen on 127.0.0.1:{port}" in result.output
    finally:
        taken.close()

    def failed_load(cls, *args, **kwargs):
        raise ModelLoadError("no such model")

    monkeypatch.setattr(Pipeline, "from_config", classmethod(failed_load))
    result = runner.invoke(cli_app, ["serve", "--profile", str(profile), "--port", str(port)])
    assert result.exit_code == 2 and "no such model" in result.output
    bind("127.0.0.1", port).close()  # free again: the failed run closed its socket


def test_a_whitespace_only_token_file_is_reported_empty(tmp_path: Path):
    from iapas.serve.auth import TokenError, load_token

    blank = tmp_path / "token"
    blank.write_text("  \n\t\n\n")
    with pytest.raises(TokenError, match=r"^.*token: the token file is empty$"):
        load_token(blank, "127.0.0.1")
    blank.write_text("\n  " + TOKEN + "  \nsecond line\n")
    assert load_token(blank, "127.0.0.1") == TOKEN  # the first non-blank line


def test_review_of_an_evaluate_folder_lists_every_image_by_score_with_verdicts(tmp_path: Path):
    import sys

    from iapas.evaluation import EvalSettings, evaluate_dataset
    from iapas.serve.app import create_app
    from iapas.serve.review import ReviewStore

    sys.path.insert(0, str(Path(__file__).parent))
    from test_evaluation import fake_pipeline, make_mvtec, write_profiles

    root = make_mvtec(tmp_path / "data", n_good=3, n_bad=3)
    out = tmp_path / "eval"
    write_profiles(out / "profiles", ["alpha", "beta"])
    evaluate_dataset("mvtec", root, out, fake_pipeline(), EvalSettings(protocol="full"), report=False)
    metrics = json.loads((out / "metrics.json").read_text())
    metrics["categories"]["alpha"]["decision"] = {"threshold": 0.7}  # as a calibrated evaluation records it
    (out / "metrics.json").write_text(json.dumps(metrics))
    with BackgroundServer(create_app(ReviewStore(out), {}, None)) as url, httpx.Client(base_url=url, timeout=60) as client:
        assert [p["category"] for p in client.get("/v1/profiles").json()["profiles"]] == ["alpha", "beta"]
        assert client.get("/v1/results?category=beta").json()["results"][0]["decision"] is None  # no threshold
        listed = client.get("/v1/results?sort=score&category=alpha").json()
        assert listed["total"] == 6
        scores = [r["image_score"] for r in listed["results"]]
        assert scores == sorted(scores, reverse=True)
        for r in listed["results"]:
            assert r["decision"] == ("NG" if r["decision_score"] > 0.7 else "OK") and r["threshold"] == 0.7
        top = listed["results"][0]
        pictures = {k: np.asarray(Image.open(io.BytesIO(client.get(top["urls"][k]).content))) for k in ("map", "mask", "overlay")}
        assert pictures["map"].dtype == np.uint16 and pictures["map"].shape == (400, 400)
        assert pictures["overlay"].shape == (400, 400, 3)
        assert (pictures["mask"] == 255).any() == (top["decision"] == "NG")


def test_a_store_made_with_other_settings_is_refused(pipeline, tmp_path: Path):
    from iapas.engine.runner import RunConflictError

    store = tmp_path / "station"
    with station(pipeline, store_dir=store) as (url, _), httpx.Client(base_url=url, timeout=60) as client:
        assert inspect(client, png(70)).status_code == 200
    run = json.loads((store / "bottle" / "run.json").read_text())
    run["signature"]["box_threshold"] = 0.2
    (store / "bottle" / "run.json").write_text(json.dumps(run))
    with pytest.raises(RunConflictError, match=r"station/bottle holds results made with other settings \(box_threshold\)"):
        build_station(pipeline, make_profiles(), store_dir=store)


class FakePipeline:
    """Records (category, first pixel of each image) per call; answers empty results; when
    ``hold`` is given, each call waits for it (after setting ``entered``)."""

    def __init__(self, hold: threading.Event | None = None) -> None:
        self.calls: list[tuple[str, list[int]]] = []
        self.hold, self.entered = hold, threading.Event()

    def run(self, images, profile=None):
        from iapas.core.types import Detections, SegmentationResult

        self.entered.set()
        if self.hold is not None:
            assert self.hold.wait(60)
        self.calls.append((profile.category, [int(im[0, 0, 0]) for im in images]))
        empty = Detections.empty()
        return [SegmentationResult(np.zeros(im.shape[:2], np.float32), empty, empty, np.zeros((0, *im.shape[:2]), bool),
                                   None, None, 1.0, "default") for im in images]


def small_image(value: int):
    from iapas.core.images import LoadedImage

    return LoadedImage(Path("x.png"), np.full((8, 8, 3), value, np.uint8), "RGB")


def test_worker_batches_the_same_category_only_and_keeps_the_others_in_order():
    """Jobs bottle, screw, bottle, bottle queued before the worker starts, batch size 2: the
    first batch is the first two bottles, then the screw (older than the third bottle), then it."""
    from iapas.serve.worker import ModelWorker

    pipeline = FakePipeline()
    calls = pipeline.calls
    worker = ModelWorker(pipeline, make_profiles(), batch_size=2, max_wait_ms=0, queue_size=4)
    futures = [worker.submit(c, small_image(v)) for c, v in (("bottle", 1), ("screw", 2), ("bottle", 3), ("bottle", 4))]
    with pytest.raises(Exception, match="queue is full"):
        worker.submit("bottle", small_image(5))
    worker.start()
    outcomes = [f.result(30) for f in futures]
    worker.stop()
    assert calls == [("bottle", [1, 3]), ("screw", [2]), ("bottle", [4])]
    assert [o.batch_size for o in outcomes] == [2, 1, 2, 1]
    assert worker.images_served == 4 and worker.batches == 3


def test_worker_drops_a_request_cancelled_while_queued_and_goes_on():
    """The worker is held inside its first batch; the request queued behind it is cancelled (as
    asyncio.wrap_future does when the client leaves); released, the worker skips it (no
    InvalidStateError killing the thread) and answers the next request."""
    from iapas.serve.worker import ModelWorker

    release = threading.Event()
    pipeline = FakePipeline(hold=release)
    worker = ModelWorker(pipeline, make_profiles(), batch_size=2, max_wait_ms=0, queue_size=4)
    worker.start()
    try:
        first = worker.submit("bottle", small_image(1))
        assert pipeline.entered.wait(30)
        cancelled = worker.submit("bottle", small_image(2))
        assert cancelled.cancel()
        release.set()
        assert first.result(30).batch_size == 1
        after = worker.submit("bottle", small_image(3))
        assert after.result(30).batch_size == 1
        assert worker._thread is not None and worker._thread.is_alive()
        assert pipeline.calls == [("bottle", [1]), ("bottle", [3])] and worker.images_served == 2
    finally:
        release.set()
        worker.stop()


def test_worker_stop_fails_the_queued_requests_and_skips_the_cancelled_ones():
    from iapas.serve.worker import ModelWorker

    worker = ModelWorker(FakePipeline(), make_profiles(), batch_size=2, max_wait_ms=0, queue_size=4)
    cancelled, waiting = worker.submit("bottle", small_image(1)), worker.submit("screw", small_image(2))
    assert cancelled.cancel()
    worker.stop()
    assert cancelled.cancelled()
    with pytest.raises(RuntimeError, match="shutting down"):
        waiting.result(1)
