"""The station's side of the feedback loop (issue 23): dispositions through the REST API, the
audit draw in the record, the observed rates and drift alarms on /v1/health, a restart of a
store, and bad input. A real uvicorn on a loopback port, the tiny models; the products are set
up so that the verdict is known: ``screw`` judges every part NG (threshold 0, no box dropped),
``bottle`` every part OK (threshold 100 on scores in [0, 1])."""

from __future__ import annotations

import io
import json
import logging
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")

from iapas.product.decision import Decision  # noqa: E402
from iapas.product.profile import Profile  # noqa: E402
from iapas.serve import build_station  # noqa: E402
from iapas.serve.app import ServeSettings, create_app  # noqa: E402
from iapas.serve.review import ReviewStore  # noqa: E402
from iapas.serve.server import BackgroundServer  # noqa: E402


@pytest.fixture(scope="module")
def pipeline(tiny_models: dict[str, Path]):
    from iapas.pipeline.stage2 import Pipeline, PipelineConfig

    return Pipeline.from_config(PipelineConfig(detector=str(tiny_models["grounding-dino"]), segmenter=str(tiny_models["sam"]),
                                               device="cpu"))


def profiles() -> dict[str, Profile]:
    screw = Profile.from_prompts("screw", "screw", ["scratch"], size_threshold=1000.0)
    screw.decision = Decision(threshold=0.0, score_min=0.0, score_max=0.1, n_calibration=20, target_rate=0.1)
    bottle = Profile.from_prompts("bottle", "bottle", ["scratch"])
    bottle.decision = Decision(threshold=100.0, score_min=0.0, score_max=0.1, n_calibration=20, target_rate=0.1)
    return {"screw": screw, "bottle": bottle}


def png(seed: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


@contextmanager
def station(pipeline, store_dir: Path | None = None, **settings):
    app, worker = build_station(pipeline, profiles(), store_dir=store_dir, settings=ServeSettings(**settings))
    try:
        with BackgroundServer(app) as url, httpx.Client(base_url=url, timeout=60) as client:
            yield client
    finally:
        worker.stop()


def inspect(client, category: str, seed: int) -> dict:
    response = client.post("/v1/inspect", files={"file": (f"p{seed}.png", png(seed), "image/png")}, data={"category": category})
    assert response.status_code == 200, response.text
    return response.json()


def dispose(client, result_id: str, disposition: str, **fields):
    return client.post(f"/v1/results/{result_id}/disposition", json={"disposition": disposition, **fields})


def test_dispositions_rates_filters_and_one_alarm_log_line_each(pipeline, caplog):
    with station(pipeline, audit_rate=1.0) as client:
        ng = [inspect(client, "screw", s) for s in range(4)]
        ok = [inspect(client, "bottle", s) for s in range(10, 13)]
        assert [r["decision"] for r in ng] == ["NG"] * 4 and [r["decision"] for r in ok] == ["OK"] * 3
        assert all(r["audit"] is True and r["disposition"] is None for r in ng + ok)
        first = dispose(client, ng[0]["id"], "confirmed_ng", who="ana", note="dent")
        assert first.status_code == 200, first.text
        with caplog.at_level(logging.WARNING, logger="iapas.serve.feedback"):
            body = dispose(client, ng[0]["id"], "false_call", who="bo").json()  # supersedes, history kept
            assert body["disposition"] == "false_call"
            assert [(h["disposition"], h["who"], h["note"]) for h in body["history"]] == [
                ("confirmed_ng", "ana", "dent"), ("false_call", "bo", None)]
            assert dispose(client, ng[1]["id"], "false_call").status_code == 200
            assert dispose(client, ng[2]["id"], "confirmed_ng").status_code == 200
            assert dispose(client, ok[0]["id"], "confirmed_ok").status_code == 200
            assert dispose(client, ok[1]["id"], "missed_defect").status_code == 200
            health = [client.get("/v1/health").json() for _ in range(3)][-1]
        assert health["status"] == "ok"
        screw, bottle = health["feedback"]["screw"], health["feedback"]["bottle"]
        # screw: the random sample of normal parts = the 2 audited false calls, both NG
        far = screw["false_alarm"]
        assert (far["k"], far["n"], far["rate"], far["method"]) == (2, 2, 1.0, "clopper-pearson")
        assert far["low"] == pytest.approx(0.025 ** 0.5) and far["high"] == 1.0  # 2/2: low = (a/2)^(1/n)
        assert (screw["ng_open"], screw["audits_open"], screw["escape"]["n"]) == (1, 0, 0)
        # the census floor: 2 false calls among the 3 parts not known defective (the open NG counts);
        # the Beta(2, 2) quantile at 2.5%: 3x^2 - 2x^3 = 0.025, solved by bisection
        lo, hi = 0.0, 1.0
        for _ in range(60):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if 3 * mid**2 - 2 * mid**3 < 0.025 else (lo, mid)
        assert (screw["false_calls_ng"], screw["possible_normals"]) == (2, 3)
        assert screw["false_alarm_floor"] == pytest.approx(lo, abs=1e-9)
        # bottle: audited OKs with a disposition: 1 missed defect in 2 -> [1 - sqrt(.975), sqrt(.975)]
        esc = bottle["escape"]
        assert (esc["k"], esc["n"], esc["rate"]) == (1, 2, 0.5)
        assert esc["low"] == pytest.approx(1 - 0.975 ** 0.5) and esc["high"] == pytest.approx(0.975 ** 0.5)
        assert (bottle["false_alarm"]["k"], bottle["false_alarm"]["n"]) == (0, 1)
        assert bottle["false_alarm"]["high"] == pytest.approx(0.975)  # 0/1: high = 1 - (a/2)^(1/n)
        assert (bottle["ng_open"], bottle["audits_open"]) == (0, 1)
        # alarms: screw's false-alarm interval lies above its target 0.1; bottle's escapes above 0.01
        assert len(health["drift"]) == 2
        assert health["drift"][0].startswith("screw: drift: observed false-alarm rate 2/2") or \
            health["drift"][1].startswith("screw: drift: observed false-alarm rate 2/2")
        assert any(d.startswith("bottle: drift: audits found escapes at 1/2") for d in health["drift"])
        assert screw["alarm"] and bottle["alarm"] and screw["target_rate"] == 0.1 and bottle["max_escape_rate"] == 0.01
        logged = [r.getMessage() for r in caplog.records if "drift:" in r.getMessage()]
        assert sorted(m.split(":")[0] for m in logged) == ["bottle", "screw"]  # once each, not per request
        # the list: the current disposition, and the filters
        listed = client.get("/v1/results?limit=50").json()["results"]
        assert {r["id"]: r["disposition"] for r in listed}[ng[0]["id"]] == "false_call"
        ids = lambda query: {r["id"] for r in client.get("/v1/results?" + query).json()["results"]}  # noqa: E731
        assert ids("disposition=false_call") == {ng[0]["id"], ng[1]["id"]}
        assert ids("disposition=none") == {ng[3]["id"], ok[2]["id"]}
        assert ids("disposition=none&decision=OK") == {ok[2]["id"]}
        assert ids("audit=true") == {r["id"] for r in ng + ok} and ids("audit=false") == set()
        one = client.get(f"/v1/results/{ng[0]['id']}").json()
        assert one["disposition"] == "false_call" and len(one["history"]) == 2
        assert one["history"][0]["at"].endswith("+00:00")


def test_bad_input_is_refused_with_one_line(pipeline):
    with station(pipeline) as client:
        ng, ok = inspect(client, "screw", 1), inspect(client, "bottle", 2)
        assert "audit_rate" not in client.get(f"/v1/results/{ng['id']}").json() and ng["audit"] is False  # --audit-rate 0
        cases = [
            (dispose(client, "0" * 32, "false_call"), 404, "no result '00000000000000000000000000000000' (unknown, or no longer kept)"),
            (dispose(client, "not-an-id", "false_call"), 404, "no result 'not-an-id' (unknown, or no longer kept)"),
            (dispose(client, ng["id"], "maybe"), 422,
             "disposition must be one of confirmed_ng, false_call, missed_defect, confirmed_ok, not 'maybe'"),
            (dispose(client, ok["id"], "false_call"), 422,
             "false_call is not a disposition of an OK verdict: use confirmed_ok or missed_defect"),
            (dispose(client, ng["id"], "false_call", who=3), 422, "who must be a string or null, not int"),
            (dispose(client, ng["id"], "false_call", note="x" * 1001), 422, "note is 1001 characters long: at most 1000"),
            (dispose(client, ng["id"], "false_call", by="me"), 422, "unknown field 'by': send disposition, who and note"),
            (client.post(f"/v1/results/{ng['id']}/disposition", content=b"{", headers={"Content-Type": "application/json"}),
             422, 'the body must be a JSON object: {"disposition": ..., "who": ..., "note": ...}'),
            (client.get("/v1/results?disposition=maybe"), 422,
             "disposition must be one of confirmed_ng, false_call, missed_defect, confirmed_ok or none (not yet given), not 'maybe'"),
        ]
        for response, status, detail in cases:
            assert (response.status_code, response.json()) == (status, {"detail": detail})
        assert client.get("/v1/results?audit=maybe").status_code == 422
        refused = client.post(f"/v1/results/{ng['id']}/disposition", content=b"disposition=false_call",
                              headers={"Content-Type": "text/plain"})
        assert refused.status_code == 415
        assert client.get(f"/v1/results/{ng['id']}").json()["history"] == []  # nothing was recorded


def test_the_audit_draw_is_the_seeded_generators_for_every_part_ok_and_ng(pipeline):
    with station(pipeline, audit_rate=0.5, audit_seed=7) as client:
        parts = [inspect(client, category, seed) for seed, category in enumerate(["screw", "bottle"] * 4)]
    expected = np.random.default_rng(7).random(8) < 0.5  # one draw per inspection, in order
    assert [p["audit"] for p in parts] == expected.tolist()
    assert 0 < expected.sum() < 8


def test_who_defaults_to_the_token_name(pipeline):
    token = "0123456789abcdef0123"
    with station(pipeline, token=token) as client:
        client.headers["Authorization"] = f"Bearer {token}"
        ng = inspect(client, "screw", 3)
        assert dispose(client, ng["id"], "confirmed_ng").json()["history"][0]["who"] == "token"
        assert dispose(client, ng["id"], "false_call", who="ana").json()["history"][1]["who"] == "ana"


def test_a_store_keeps_dispositions_over_a_restart_and_skips_a_torn_line(pipeline, tmp_path: Path, caplog):
    store = tmp_path / "station"
    with station(pipeline, store_dir=store, audit_rate=1.0) as client:
        a, b = inspect(client, "screw", 1), inspect(client, "screw", 2)
        assert dispose(client, a["id"], "confirmed_ng", who="ana").status_code == 200
        assert dispose(client, a["id"], "false_call", who="bo", note="dust").status_code == 200
    path = store / "screw" / "dispositions.jsonl"
    lines = path.read_text(encoding="utf-8").splitlines()
    assert [json.loads(x)["disposition"] for x in lines] == ["confirmed_ng", "false_call"]
    records = [json.loads(x) for x in (store / "screw" / "results.jsonl").read_text().splitlines()]
    assert [(r["audit"], r["audit_rate"]) for r in records] == [(True, 1.0), (True, 1.0)]
    assert all("disposition" not in r for r in records)  # the results log is never rewritten
    with open(path, "a", encoding="utf-8") as fh:
        fh.write('{"id": "%s", "disposition": "confirm' % b["id"])  # a writer killed mid-line
    with caplog.at_level(logging.WARNING, logger="iapas.engine.dispositions"), \
            station(pipeline, store_dir=store, audit_rate=1.0) as client:
        one = client.get(f"/v1/results/{a['id']}").json()
        assert one["disposition"] == "false_call"
        assert [(h["disposition"], h["who"], h["note"]) for h in one["history"]] == [("confirmed_ng", "ana", None),
                                                                                    ("false_call", "bo", "dust")]
        assert client.get(f"/v1/results/{b['id']}").json()["disposition"] is None
        assert client.get("/v1/health").json()["feedback"]["screw"]["false_alarm"]["k"] == 1
        assert dispose(client, b["id"], "confirmed_ng").status_code == 200  # not glued to the torn line
    assert any(f"{path}:3:" in r.getMessage() for r in caplog.records)
    # the folder as a read-only review: the dispositions show, none can be given
    with BackgroundServer(create_app(ReviewStore(store), {}, None)) as url, httpx.Client(base_url=url) as client:
        listed = {r["key"]: r for r in client.get("/v1/results").json()["results"]}
        assert listed[a["id"]]["disposition"] == "false_call" and listed[b["id"]]["disposition"] == "confirmed_ng"
        review_id = listed[a["id"]]["id"]
        refused = dispose(client, review_id, "confirmed_ng")
        assert (refused.status_code, refused.json()) == (405, {"detail": "this station is a read-only review: it records no dispositions"})


def test_a_disposition_the_store_cannot_write_is_503_and_not_kept(pipeline, tmp_path: Path):
    store = tmp_path / "station"
    with station(pipeline, store_dir=store) as client:
        part = inspect(client, "screw", 1)
        (store / "screw" / "dispositions.jsonl").mkdir()  # any write fails: not a file
        response = dispose(client, part["id"], "confirmed_ng")
        assert response.status_code == 503
        detail = response.json()["detail"]
        assert detail.startswith("cannot write to the store: is a directory (") and detail.endswith(
            "dispositions.jsonl); the disposition was not kept")
        assert client.get(f"/v1/results/{part['id']}").json()["history"] == []
