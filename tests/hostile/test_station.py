"""The station against a hostile page on the same machine and against its own resources and
faults (issue 18, parts 2 and 5): a real uvicorn on a free loopback port, raw sockets where an
HTTP client would tidy the request up. Every case asserts the exact status and JSON message,
and that nothing was written outside the store (nor inside it for a refused request)."""

from __future__ import annotations

import errno
import io
import json
import logging
import os
import signal
import socket
import struct
import subprocess
import sys
import time
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")

import iapas  # noqa: E402
from iapas.product.profile import Profile  # noqa: E402
from iapas.serve import build_station  # noqa: E402
from iapas.serve.app import ServeSettings  # noqa: E402
from iapas.serve.server import BackgroundServer  # noqa: E402

HOST_REFUSED = ("Host {!r} is not this station's: use a loopback name or address (localhost, 127.0.0.1, [::1]) "
                "or a name given with --allowed-host")
CROSS_ORIGIN = "cross-origin request refused: {} {!r} is neither this station's own origin nor a --cors origin"
UNSUPPORTED = ("unsupported Content-Type {!r}: send multipart/form-data (fields 'file', 'category') or the raw image "
               "as application/octet-stream or image/png, image/jpeg, image/bmp, image/tiff, image/webp")
MALFORMED = "malformed HTTP request (the request line, a header or Content-Length is invalid)"
CORS_ORIGIN = "http://ui.example:3000"


@pytest.fixture(scope="module")
def pipeline(tiny_models: dict[str, Path]):
    from iapas.pipeline.stage2 import Pipeline, PipelineConfig

    return Pipeline.from_config(PipelineConfig(detector=str(tiny_models["grounding-dino"]), segmenter=str(tiny_models["sam"]),
                                               device="cpu"))


def png(seed: int = 0, size: tuple[int, int] = (64, 80)) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (*size, 3), dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def header_only_png(width: int, height: int) -> bytes:
    """A PNG of a few dozen bytes whose header says ``width`` x ``height`` (a pixel bomb)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


@contextmanager
def station(pipeline, root: Path, **settings_kwargs) -> Iterator[tuple[str, object, object]]:
    """(url, app, worker) of a station storing into ``root/store`` on a real uvicorn."""
    settings = ServeSettings(max_upload=2**20)
    for name, value in settings_kwargs.items():  # attributes, so that the tests run (and fail) on the old station too
        setattr(settings, name, value)
    profiles = {"bottle": Profile.from_prompts("bottle", "bottle", ["scratch", "crack"])}
    app, worker = build_station(pipeline, profiles, store_dir=root / "store", settings=settings)
    try:
        with BackgroundServer(app) as url:
            yield url, app, worker
    finally:
        worker.stop()


@pytest.fixture
def served(pipeline, tmp_path: Path):
    with station(pipeline, tmp_path, allowed_hosts=["station.example"], cors=[CORS_ORIGIN], body_timeout=1.0) as s:
        yield s
    assert sorted(p.name for p in tmp_path.iterdir()) == ["store"]  # nothing written outside the store


def stored(root: Path) -> list[str]:
    """The inspections kept in the store: its uploads and results lines."""
    folder = root / "store" / "bottle"
    uploads = sorted(p.name for p in (folder / "uploads").glob("*")) if (folder / "uploads").exists() else []
    lines = (folder / "results.jsonl").read_text().splitlines() if (folder / "results.jsonl").exists() else []
    return uploads + lines


def raw(url: str, head: str, body: bytes = b"") -> tuple[int, dict]:
    """Send ``head`` (request line and headers, without the blank line) and ``body`` as they
    are; the status and the JSON answer."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(head.replace("\n", "\r\n").encode("latin-1") + b"\r\n\r\n" + body)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    status_line, _, rest = answer.partition(b"\r\n")
    headers, _, content = rest.partition(b"\r\n\r\n")
    assert b"content-type: application/json" in headers.lower(), answer
    return int(status_line.split()[1]), json.loads(content)


def multipart(data: bytes, category: str = "bottle") -> tuple[bytes, str]:
    boundary = "hostileboundary1234"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"category\"\r\n\r\n{category}\r\n"
            f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"part.png\"\r\n"
            f"Content-Type: image/png\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


def port_of(url: str) -> str:
    return url.rsplit(":", 1)[1]


# --- part 2: Host (DNS rebinding) -------------------------------------------------------------

@pytest.mark.parametrize("host", ["evil.com", "127.0.0.1.evil.com", "localhost:80@evil", "", "localhost.evil.com:8000",
                                  "[::2]", "::1", "[::1", "[fe80::1%25lo]", "127.0.0.1:99999", "evil.com:{port}",
                                  "localhost evil.com"])
def test_a_foreign_host_is_refused_before_any_route(served, tmp_path: Path, host: str):
    url, _, worker = served
    host = host.format(port=port_of(url))
    for head in (f"GET /v1/results HTTP/1.1\nHost: {host}\nConnection: close",
                 f"POST /v1/inspect?category=bottle HTTP/1.1\nHost: {host}\nContent-Type: image/png\n"
                 f"Content-Length: {len(png())}\nConnection: close"):
        assert raw(url, head, png() if head.startswith("POST") else b"") == (400, {"detail": HOST_REFUSED.format(host)})
    assert worker.images_served == 0 and stored(tmp_path) == []


@pytest.mark.parametrize(("host", "lookalike"), [
    ("localhost:{port}", "localhost.evil.com:{port}"), ("127.0.0.1:{port}", "127.0.0.1.evil.com:{port}"),
    ("127.5.6.7", "128.0.0.1"), ("[::1]:{port}", "[::2]:{port}"), ("[::ffff:127.0.0.1]", "[::ffff:10.0.0.1]"),
    ("station.example:{port}", "station.example.evil:{port}"), ("LOCALHOST", "LOCALHOST."),
])
def test_loopback_names_addresses_and_allowed_hosts_pass_their_lookalikes_do_not(served, host: str, lookalike: str):
    url, _, _ = served
    status, body = raw(url, f"GET /v1/health HTTP/1.1\nHost: {host.format(port=port_of(url))}\nConnection: close")
    assert status == 200 and body["status"] == "ok"
    lookalike = lookalike.format(port=port_of(url))
    assert raw(url, f"GET /v1/health HTTP/1.1\nHost: {lookalike}\nConnection: close") == (
        400, {"detail": HOST_REFUSED.format(lookalike)})


def test_the_page_itself_is_refused_to_a_rebinding_name(served):
    url, _, _ = served
    with httpx.Client(base_url=url, timeout=30) as client:
        assert client.get("/", headers={"Host": "attacker.example"}).json() == {"detail": HOST_REFUSED.format("attacker.example")}
        assert client.get("/").status_code == 200


# --- part 2: cross-origin state-changing requests and upload types ------------------------------

@pytest.mark.parametrize("kind", ["text/plain", "multipart", "octet-stream"])
@pytest.mark.parametrize("origin", ["http://evil.com", "null", "http://localhost:1", "https://127.0.0.1.evil.com"])
def test_a_cross_origin_post_is_refused_whatever_its_type(served, tmp_path: Path, kind: str, origin: str):
    url, _, worker = served
    if kind == "multipart":
        body, content_type = multipart(png())
    else:
        body, content_type = png(), ("text/plain" if kind == "text/plain" else "application/octet-stream")
    with httpx.Client(base_url=url, timeout=30) as client:
        response = client.post("/v1/inspect?category=bottle", content=body,
                               headers={"Origin": origin, "Content-Type": content_type})
    assert (response.status_code, response.json()) == (403, {"detail": CROSS_ORIGIN.format("Origin", origin)})
    assert worker.images_served == 0 and stored(tmp_path) == []


def test_a_referer_only_cross_site_post_is_refused(served, tmp_path: Path):
    url, _, worker = served
    referer = "http://evil.com/page.html"
    with httpx.Client(base_url=url, timeout=30) as client:
        response = client.post("/v1/inspect?category=bottle", content=png(), headers={"Referer": referer, "Content-Type": "image/png"})
    assert (response.status_code, response.json()) == (403, {"detail": CROSS_ORIGIN.format("Referer", referer)})
    assert worker.images_served == 0 and stored(tmp_path) == []


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", "application/json", "image/gif"])
def test_an_undocumented_upload_type_is_415_without_work(served, tmp_path: Path, content_type: str):
    url, _, worker = served
    with httpx.Client(base_url=url, timeout=30) as client:
        response = client.post("/v1/inspect?category=bottle", content=png(), headers={"Content-Type": content_type + "; charset=x"})
    assert (response.status_code, response.json()) == (415, {"detail": UNSUPPORTED.format(content_type)})
    assert worker.images_served == 0 and stored(tmp_path) == []


def test_the_pages_own_requests_and_cors_origins_pass(served, tmp_path: Path):
    """The page posts a FormData (multipart) from the station's origin; a --cors origin and a
    same-origin Referer pass too, and so does a client that sends no Origin (curl)."""
    url, _, worker = served
    body, content_type = multipart(png(1))
    with httpx.Client(base_url=url, timeout=60) as client:
        for headers in ({"Origin": url}, {"Origin": CORS_ORIGIN}, {"Referer": url + "/"}, {}):
            response = client.post("/v1/inspect", content=body, headers={"Content-Type": content_type, **headers})
            assert response.status_code == 200, response.text
        assert client.post("/v1/inspect?category=bottle", content=png(1), headers={"Content-Type": "image/png"}).status_code == 200
        other = CORS_ORIGIN.replace("3000", "3001")  # the --cors origin on another port: another origin
        response = client.post("/v1/inspect", content=body, headers={"Content-Type": content_type, "Origin": other})
        assert (response.status_code, response.json()) == (403, {"detail": CROSS_ORIGIN.format("Origin", other)})
    assert worker.images_served == 5 and len(stored(tmp_path)) == 10


def test_a_multipart_type_written_in_capitals_is_parsed_as_multipart(served, tmp_path: Path):
    """Media types are case-insensitive: the policy lets `Multipart/Form-Data` through, so the
    upload must be read as the form it is (it was decoded as one raw image: 'corrupt image')."""
    url, _, worker = served
    body, content_type = multipart(png(2))
    shouted = content_type.replace("multipart/form-data", "Multipart/Form-Data")
    assert shouted != content_type
    with httpx.Client(base_url=url, timeout=60) as client:
        response = client.post("/v1/inspect", content=body, headers={"Content-Type": shouted})
    assert response.status_code == 200, response.text
    assert response.json()["category"] == "bottle" and worker.images_served == 1


# --- part 5: the HTTP layer ---------------------------------------------------------------------

@pytest.mark.parametrize("length", ["abc", "-1", "1, 2", "99999999999999999999999"])
def test_a_malformed_content_length_is_json(served, length: str):
    url, _, worker = served
    head = f"POST /v1/inspect?category=bottle HTTP/1.1\nHost: 127.0.0.1\nContent-Type: image/png\nContent-Length: {length}"
    assert raw(url, head, b"x") == (400, {"detail": MALFORMED})
    assert worker.images_served == 0


@pytest.mark.parametrize(("headers", "body"), [
    ("Transfer-Encoding: chunked", b"zz\r\nabc\r\n0\r\n\r\n"),  # a chunk size that is not hex
    ("Transfer-Encoding: chunked\nContent-Length: 3", b"3\r\nabc\r\n0\r\n\r\n"),  # both framings: smuggling
    ("Bad Header: x", b""),  # a space in a header name
])
def test_other_requests_the_http_parser_refuses_are_json(served, headers: str, body: bytes):
    url, _, worker = served
    head = f"POST /v1/inspect?category=bottle HTTP/1.1\nHost: 127.0.0.1\nContent-Type: image/png\n{headers}"
    assert raw(url, head, body) == (400, {"detail": MALFORMED})
    assert worker.images_served == 0


def test_a_stalled_upload_is_dropped_after_the_body_timeout_and_gives_its_bytes_back(served, tmp_path: Path):
    url, app, worker = served
    host, port = url.removeprefix("http://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(b"POST /v1/inspect?category=bottle HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/png\r\n"
                     b"Content-Length: 100000\r\n\r\n" + b"\x89PNG" * 1000)
        started = time.monotonic()
        answer = b""
        while chunk := sock.recv(65536):  # the server closes the connection
            answer += chunk
        waited = time.monotonic() - started
    assert 0.9 < waited < 10
    assert answer.startswith(b"HTTP/1.1 408 ")
    assert json.loads(answer.partition(b"\r\n\r\n")[2]) == {"detail": "the upload stalled: no data for 1 s (--body-timeout)"}
    assert app.state.budgets["bytes"].used == 0 and app.state.budgets["bytes"].peak == 4000
    assert worker.images_served == 0 and stored(tmp_path) == []


def test_a_client_gone_mid_upload_is_one_log_line(served, caplog: pytest.LogCaptureFixture):
    url, app, _ = served
    host, port = url.removeprefix("http://").rsplit(":", 1)
    with caplog.at_level(logging.INFO):
        with socket.create_connection((host, int(port)), timeout=30) as sock:
            sock.sendall(b"POST /v1/inspect?category=bottle HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 5000\r\n\r\nabc")
            time.sleep(0.2)
        deadline = time.monotonic() + 10
        while not any("disconnected" in r.getMessage() for r in caplog.records) and time.monotonic() < deadline:
            time.sleep(0.05)
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.INFO and "uvicorn" not in r.name or r.exc_info]
    assert lines == ["POST /v1/inspect: the client disconnected mid-upload (after 3 bytes)"]
    assert app.state.budgets["bytes"].used == 0


# --- part 5: pixels and bytes in flight -----------------------------------------------------------

@pytest.mark.parametrize("side", [12_000, 14_000])  # 14,000^2 = 196 Mpx: over PIL's own 2 x 89.5 Mpx bomb limit
def test_a_pixel_bomb_under_max_pixels_but_over_the_budget_is_413_before_decoding(served, tmp_path: Path, side: int):
    url, app, worker = served
    bomb = header_only_png(side, side)  # 144 or 196 Mpx in 100 bytes
    assert len(bomb) < 200
    with httpx.Client(base_url=url, timeout=30) as client:
        response = client.post("/v1/inspect?category=bottle", content=bomb, headers={"Content-Type": "image/png"})
    assert (response.status_code, response.json()) == (413, {"detail": (
        f"the image has {side * side:,} pixels, over the station's budget of 64,000,000 pixels in flight (--pixel-budget-mpx)")})
    assert app.state.budgets["pixels"].peak == 0 and worker.images_served == 0 and stored(tmp_path) == []


def test_pixels_or_bytes_held_by_others_answer_503_with_retry_after(served, tmp_path: Path):
    url, app, worker = served
    pixels, upload = app.state.budgets["pixels"], app.state.budgets["bytes"]
    with httpx.Client(base_url=url, timeout=60) as client:
        assert pixels.take(pixels.total - 64 * 80 + 1)  # others hold all but one pixel too few
        response = client.post("/v1/inspect?category=bottle", content=png(), headers={"Content-Type": "image/png"})
        assert (response.status_code, response.headers["retry-after"], response.json()) == (503, "1", {"detail": (
            "too many pixels in flight (at most 64,000,000 together, --pixel-budget-mpx); retry later")})
        pixels.give(pixels.total - 64 * 80 + 1)
        assert upload.take(upload.total - 10)
        response = client.post("/v1/inspect?category=bottle", content=png(), headers={"Content-Type": "image/png"})
        assert (response.status_code, response.headers["retry-after"], response.json()) == (503, "1", {"detail": (
            "too many uploads in flight (at most 256 MB together, --max-inflight-mb); retry later")})
        upload.give(upload.total - 10)
        assert worker.images_served == 0 and stored(tmp_path) == []
        assert client.post("/v1/inspect?category=bottle", content=png(), headers={"Content-Type": "image/png"}).status_code == 200
    assert pixels.used == 0 and upload.used == 0 and pixels.peak == pixels.total - 64 * 80 + 1


# --- part 5: a full or unwritable store --------------------------------------------------------------

def test_a_full_store_is_507_before_the_models_run_and_health_recovers(served, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    url, _, worker = served
    real = os.statvfs
    free = {"blocks": 1000}  # 4 MB of 4 KiB blocks: under the 32 MiB the store keeps free

    def fake_statvfs(path):
        result = real(path)
        return os.statvfs_result((result.f_bsize, 4096, result.f_blocks, free["blocks"], free["blocks"], *tuple(result)[5:]))

    monkeypatch.setattr(os, "statvfs", fake_statvfs)
    folder = tmp_path / "store" / "bottle"
    data = png()
    with httpx.Client(base_url=url, timeout=60) as client:
        response = client.post("/v1/inspect?category=bottle", content=data, headers={"Content-Type": "image/png"})
        need = (32 * 2**20 + len(data) + 8 * 64 * 80) / 2**20
        assert (response.status_code, response.json()) == (507, {"detail": (
            f"the store is full: 3.9 MiB free in {folder}, {need:.1f} MiB needed to keep an inspection; "
            "nothing was inspected: retry when the store can be written")})
        health = client.get("/v1/health").json()
        assert health["status"] == "degraded"
        assert health["degraded"] == f"the store is full: 3.9 MiB free in {folder}, 32.0 MiB needed to keep an inspection"
        assert worker.images_served == 0 and stored(tmp_path) == []
        free["blocks"] = 10**6  # space returns
        assert client.get("/v1/health").json()[("status")] == "ok"
        assert client.post("/v1/inspect?category=bottle", content=data, headers={"Content-Type": "image/png"}).status_code == 200
    assert not (folder / ".iapas-write-probe").exists()


@pytest.mark.parametrize(("code", "status"), [(errno.ENOSPC, 507), (errno.EROFS, 503), (errno.EIO, 503)])
def test_a_failed_write_degrades_the_store_and_stops_the_models_until_a_write_succeeds(
        served, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: int, status: int):
    from iapas.serve import store as store_module

    url, _, worker = served
    real = store_module.atomic_write_bytes

    def failing(path, data):
        raise OSError(code, os.strerror(code), str(path))

    monkeypatch.setattr(store_module, "atomic_write_bytes", failing)
    folder = tmp_path / "store" / "bottle"
    with httpx.Client(base_url=url, timeout=60) as client:
        first = client.post("/v1/inspect?category=bottle", content=png(), headers={"Content-Type": "image/png"})
        assert first.status_code == status
        upload = first.json()["detail"].split("(")[1].split(")")[0]
        assert upload.startswith(str(folder / "uploads"))
        reason = f"cannot write to the store: {os.strerror(code).lower()} ({upload})"
        assert first.json() == {"detail": f"{reason}; the inspection was not kept"}
        assert worker.images_served == 1 and stored(tmp_path) == []
        assert client.get("/v1/health").json()["degraded"].startswith("cannot write to the store: ")
        second = client.post("/v1/inspect?category=bottle", content=png(), headers={"Content-Type": "image/png"})
        assert second.status_code == status and second.json()["detail"].endswith(
            f"({folder / '.iapas-write-probe'}); nothing was inspected: retry when the store can be written")
        assert worker.images_served == 1  # the models did not run for it
        monkeypatch.setattr(store_module, "atomic_write_bytes", real)
        assert client.get("/v1/health").json()["status"] == "ok"
        assert client.post("/v1/inspect?category=bottle", content=png(), headers={"Content-Type": "image/png"}).status_code == 200
    assert len(stored(tmp_path)) == 2  # one upload, one line: nothing half-stored by the failed write
    assert sorted(p.name for p in folder.iterdir()) == ["maps", "masks", "overlays", "results.jsonl", "run.json", "uploads"]


def test_a_read_only_store_folder_is_503(served, tmp_path: Path):
    if os.geteuid() == 0:
        pytest.skip("root writes into a read-only folder anyway (the EROFS case above covers it)")
    url, _, worker = served
    folder = tmp_path / "store" / "bottle"
    folder.chmod(0o555)
    try:
        with httpx.Client(base_url=url, timeout=60) as client:
            response = client.post("/v1/inspect?category=bottle", content=png(), headers={"Content-Type": "image/png"})
            assert response.status_code == 503 and response.json()["detail"].startswith("cannot write to the store: ")
    finally:
        folder.chmod(0o755)


# --- part 5: a malformed record in the store ------------------------------------------------------

def test_a_malformed_record_never_breaks_listing(pipeline, tmp_path: Path, caplog: pytest.LogCaptureFixture):
    with station(pipeline, tmp_path) as (url, _, _), httpx.Client(base_url=url, timeout=60) as client:
        first = client.post("/v1/inspect?category=bottle", content=png(1), headers={"Content-Type": "image/png"}).json()
    log = tmp_path / "store" / "bottle" / "results.jsonl"
    good = json.loads(log.read_text().splitlines()[0])
    bad = [{**good, "key": "0" * 31 + str(i), **change} for i, change in enumerate(
        [{"image_score": "abc"}, {"decision": "MAYBE"}, {"kept": 3}, {"image_score": True}, {"outputs": [1]}])]
    with open(log, "a") as fh:
        for record in bad:
            fh.write(json.dumps(record) + "\n")
        fh.write('{"key": "' + "0" * 31 + '9", "status": "ok", "image_score": NaN}\n')
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="iapas.serve.store"):
        with station(pipeline, tmp_path) as (url, _, _), httpx.Client(base_url=url, timeout=60) as client:
            for sort in ("score", "time"):
                listed = client.get(f"/v1/results?sort={sort}")
                assert listed.status_code == 200
                assert [r["id"] for r in listed.json()["results"]] == [first["id"]]
            assert client.get("/v1/health").json()["records_skipped"] == 6
    skipped = [r.getMessage() for r in caplog.records if "skipping the record" in r.getMessage()]
    assert skipped[0] == f"{log}: skipping the record '{'0' * 31}0': image_score 'abc' is not a finite number"
    assert len(skipped) == 6


def test_a_review_of_a_folder_with_a_malformed_record_lists_the_others(pipeline, tmp_path: Path):
    from iapas.serve.app import create_app
    from iapas.serve.review import ReviewStore

    with station(pipeline, tmp_path) as (url, _, _), httpx.Client(base_url=url, timeout=60) as client:
        ids = [client.post("/v1/inspect?category=bottle", content=png(i), headers={"Content-Type": "image/png"}).json()["id"]
               for i in range(2)]
    log = tmp_path / "store" / "bottle" / "results.jsonl"
    records = [json.loads(line) for line in log.read_text().splitlines()]
    with open(log, "a") as fh:
        fh.write(json.dumps({**records[0], "key": "f" * 32, "image_score": "abc"}) + "\n")
    review = ReviewStore(tmp_path / "store")
    assert review.skipped == 1
    with BackgroundServer(create_app(review, {}, None)) as url, httpx.Client(base_url=url, timeout=30) as client:
        listed = client.get("/v1/results?sort=score").json()
    assert listed["total"] == 2 and sorted(r["key"] for r in listed["results"]) == sorted(ids)
    scores = [r["image_score"] for r in listed["results"]]
    assert scores == sorted(scores, reverse=True)


# --- part 5: SIGTERM ---------------------------------------------------------------------------------

def test_sigterm_answers_in_flight_requests_releases_the_lock_and_exits_0(tiny_models: dict[str, Path], tmp_path: Path):
    profile = tmp_path / "bottle.yaml"
    Profile.from_prompts("bottle", "bottle", ["scratch"]).save(profile)
    store = tmp_path / "store"
    env = {**os.environ, "PYTHONPATH": str(Path(iapas.__file__).parents[1]), "NO_COLOR": "1", "COLUMNS": "200"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "iapas", "serve", "-p", str(profile), "--store", str(store), "--port", "0",
         "--detector", str(tiny_models["grounding-dino"]), "--segmenter", str(tiny_models["sam"]), "--device", "cpu",
         "--allowed-host", "station.example", "--body-timeout", "5"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=tmp_path)
    try:
        line = ""
        deadline = time.monotonic() + 120
        while "iapas serve: http://" not in line and time.monotonic() < deadline:
            line = proc.stdout.readline()
            assert line or proc.poll() is None, "the station exited before serving"
        url = line.split("iapas serve: ")[1].split("/ ")[0]
        assert (store / "bottle" / ".iapas.lock").exists()
        with httpx.Client(base_url=url, timeout=60) as client:  # the CLI's --allowed-host and --body-timeout
            assert client.get("/v1/health", headers={"Host": "station.example"}).json()["limits"]["body_timeout_s"] == 5
            assert client.get("/v1/health", headers={"Host": "evil.example"}).json() == {"detail": HOST_REFUSED.format("evil.example")}
        host, port = url.removeprefix("http://").rsplit(":", 1)
        data = png()
        with socket.create_connection((host, int(port)), timeout=60) as sock:  # a request in flight
            sock.sendall(b"POST /v1/inspect?category=bottle HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/png\r\n"
                         + f"Content-Length: {len(data)}\r\n\r\n".encode() + data[:100])
            time.sleep(0.5)
            proc.send_signal(signal.SIGTERM)
            time.sleep(0.5)
            sock.sendall(data[100:])
            answer = b""
            while chunk := sock.recv(65536):
                answer += chunk
        assert answer.startswith(b"HTTP/1.1 200 "), answer
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out
    assert not (store / "bottle" / ".iapas.lock").exists()
    assert "Traceback" not in out
    assert len((store / "bottle" / "results.jsonl").read_text().splitlines()) == 1


@pytest.mark.parametrize(("option", "value", "message"), [
    ("--allowed-host", "http://station.example", "--allowed-host 'http://station.example': give a host name or address, "
                                                 "without a scheme or a port"),
    ("--allowed-host", "station.example:8000", "--allowed-host 'station.example:8000': give a host name or address, "
                                               "without a scheme or a port"),
    ("--cors", "ui.example", "--cors 'ui.example': give an origin such as http://host:port"),
])
def test_the_cli_refuses_an_allowed_host_or_cors_origin_that_could_never_match(tmp_path: Path, option: str, value: str, message: str):
    from typer.testing import CliRunner

    from iapas.cli import app as cli_app

    profile = tmp_path / "bottle.yaml"
    Profile.from_prompts("bottle", "bottle", ["scratch"]).save(profile)
    result = CliRunner().invoke(cli_app, ["serve", "--profile", str(profile), option, value])
    assert result.exit_code == 2
    assert " ".join(result.output.split()) == f"error: {message}"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bottle.yaml"]
