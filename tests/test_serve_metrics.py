"""``GET /metrics`` of the station (issue 24): scraped after a known sequence of requests on a real uvicorn,
read back with prometheus_client's own parser, every count checked exactly."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("prometheus_client")
httpx = pytest.importorskip("httpx")

from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from iapas.product.decision import Decision  # noqa: E402
from iapas.product.profile import Profile  # noqa: E402
from iapas.serve import build_station  # noqa: E402
from iapas.serve.app import ServeSettings  # noqa: E402
from iapas.serve.server import BackgroundServer  # noqa: E402
from iapas.serve.sink_targets import WebhookSink  # noqa: E402
from iapas.serve.sinks import Policy, Sinks  # noqa: E402
from iapas.testing.plant import WebhookReceiver  # noqa: E402
from tests.test_serve_api import TOKEN, pipeline, png  # noqa: E402,F401

AUTH = {"Authorization": f"Bearer {TOKEN}"}


def scrape(text: str) -> dict[tuple[str, frozenset], float]:
    """Every sample by (name, labels)."""
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(samples: dict, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


def profiles() -> dict[str, Profile]:
    """okpart: never NG (threshold far above any score); ngpart: NG for any score above 0, and
    every box kept (no size filter: the tiny detector's random boxes are large)."""
    ok = Profile.from_prompts("okpart", "part", ["scratch"])
    ok.decision = Decision(threshold=1e9, score_min=0.0, score_max=1.0)
    ng = Profile.from_prompts("ngpart", "part", ["scratch"])
    ng.decision = Decision(threshold=0.0, score_min=0.0, score_max=1.0)
    ng.size_threshold = 1.0
    return {"okpart": ok, "ngpart": ng}


def post(client, data: bytes, category: str, headers=AUTH):  # type: ignore[no-untyped-def]
    return client.post("/v1/inspect", params={"category": category}, content=data,
                       headers={"Content-Type": "image/png", **headers})


def test_metrics_count_a_known_sequence_exactly(pipeline, tmp_path: Path):  # noqa: F811
    settings = ServeSettings(max_upload=200_000, token=TOKEN)
    with WebhookReceiver() as good, WebhookReceiver(answers=[503] * 20) as bad:
        sinks = Sinks([WebhookSink(good.url, b"k"), WebhookSink(bad.url, b"k")], Policy(retries=1, backoff=0.01)).start()
        app, worker = build_station(pipeline, profiles(), store_dir=tmp_path / "store", settings=settings, queue_size=7,
                                    sinks=sinks)
        try:
            with BackgroundServer(app) as url, httpx.Client(base_url=url, timeout=60) as client:
                answers = [post(client, png(i), "okpart") for i in range(3)] + [post(client, png(i), "ngpart") for i in (3, 4)]
                assert [a.status_code for a in answers] == [200] * 5
                assert [a.json()["decision"] for a in answers] == ["OK"] * 3 + ["NG"] * 2, \
                    [a.json()["image_score"] for a in answers]
                assert post(client, b"\0" * 300_000, "okpart").status_code == 413  # over --max-upload-mb
                assert post(client, png(5)[:200], "okpart").status_code == 400  # a truncated PNG
                assert post(client, png(6), "okpart", headers={}).status_code == 401  # no token
                assert client.get("/metrics").status_code == 401  # behind the token too
                good.wait_for(5)
                bad.wait_for(10)  # each verdict: an attempt and one retry
                deadline = time.monotonic() + 10
                while sinks.stats()[f"webhook:127.0.0.1:{bad.server.server_address[1]}"].failed < 5 and time.monotonic() < deadline:
                    time.sleep(0.02)
                got = client.get("/metrics", headers=AUTH)
                free = shutil.disk_usage(tmp_path).free
        finally:
            worker.stop()
            sinks.stop()
    assert got.status_code == 200 and got.headers["content-type"].startswith("text/plain; version=")
    m = scrape(got.text)
    assert value(m, "iapas_inspections_total", product="okpart", verdict="OK") == 3
    assert value(m, "iapas_inspections_total", product="ngpart", verdict="NG") == 2
    assert ("iapas_inspections_total", frozenset({"product": "okpart", "verdict": "NG"}.items())) not in m
    for reason, code in (("too_large", "413"), ("bad_request", "400"), ("unauthorized", "401")):
        assert value(m, "iapas_refusals_total", reason=reason, code=code) == 1
    assert sum(v for (name, _), v in m.items() if name == "iapas_refusals_total") == 3
    assert value(m, "iapas_requests_total", endpoint="/v1/inspect", code="200") == 5
    assert value(m, "iapas_requests_total", endpoint="/metrics", code="401") == 1
    assert value(m, "iapas_request_duration_seconds_count", endpoint="/v1/inspect") == 8
    assert value(m, "iapas_request_duration_seconds_bucket", endpoint="/v1/inspect", le="+Inf") == 8
    bodies = [a.json() for a in answers]
    for product, mine in (("okpart", bodies[:3]), ("ngpart", bodies[3:])):
        for stage in ("decode", "queue", "detection", "segmentation", "outputs"):
            assert value(m, "iapas_stage_duration_seconds_count", product=product, stage=stage) == len(mine)
            assert value(m, "iapas_stage_duration_seconds_sum", product=product, stage=stage) == pytest.approx(
                sum(b["timings_ms"][stage] for b in mine) / 1000, abs=1e-6)
    assert value(m, "iapas_batch_size_count") == 5 and value(m, "iapas_batch_size_sum") == sum(b["batch_size"] for b in bodies)
    assert value(m, "iapas_images_served_total") == 5 and value(m, "iapas_queue_depth") == 0
    assert value(m, "iapas_queue_capacity") == 7 and value(m, "iapas_inflight_requests") == 0
    assert abs(value(m, "iapas_store_free_bytes") - free) < 64 * 2**20
    good_label, bad_label = (f"webhook:127.0.0.1:{r.server.server_address[1]}" for r in (good, bad))
    assert value(m, "iapas_sink_deliveries_total", sink=good_label) == 5
    assert value(m, "iapas_sink_failures_total", sink=good_label) == 0
    assert value(m, "iapas_sink_deliveries_total", sink=bad_label) == 0
    assert value(m, "iapas_sink_failures_total", sink=bad_label) == 5
    assert value(m, "iapas_sink_retries_total", sink=bad_label) == 5
    assert value(m, "iapas_sink_dropped_total", sink=bad_label) == 0
    run = json.loads((tmp_path / "store" / "okpart" / "run.json").read_text())  # the fingerprints the store recorded
    info = next(dict(labels) for (name, labels) in m if name == "iapas_model_info")
    assert {k: info[k] for k in ("detector_fingerprint", "segmenter_fingerprint")} == \
        {k: run["signature"][k] for k in ("detector_fingerprint", "segmenter_fingerprint")}
    assert info["detector_fingerprint"].startswith("sha256:") and info["device"] == "cpu"


def test_two_stations_in_one_process_count_apart(pipeline):  # noqa: F811
    apps = [build_station(pipeline, profiles()) for _ in range(2)]
    try:
        with BackgroundServer(apps[0][0]) as one, BackgroundServer(apps[1][0]) as two, \
                httpx.Client(base_url=one, timeout=60) as first, httpx.Client(base_url=two, timeout=60) as second:
            assert post(first, png(1), "okpart", headers={}).status_code == 200
            scraped = [scrape(c.get("/metrics").text) for c in (first, second)]
        assert [value(m, "iapas_images_served_total") for m in scraped] == [1, 0]
        assert value(scraped[0], "iapas_inspections_total", product="okpart", verdict="OK") == 1
        assert not [name for name, _ in scraped[1] if name == "iapas_inspections_total"]
    finally:
        for _, worker in apps:
            worker.stop()
