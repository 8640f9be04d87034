"""Verdict sinks (issue 24) against real receivers on loopback: a threaded HTTP server for the
webhook (signature checked with hmac, retries after 500s, a receiver that hangs) and Debian's
mosquitto started on a free port with a paho subscriber (QoS 1, every verdict once)."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")

from iapas.cli import app as cli_app  # noqa: E402
from iapas.serve.sink_targets import MqttSink, WebhookSink, mqtt_target, open_sinks  # noqa: E402
from iapas.serve.sinks import Policy, SinkQueue, Sinks, verdict_payload  # noqa: E402
from iapas.testing.plant import Mosquitto, WebhookReceiver, mosquitto_path  # noqa: E402
from tests.test_serve_api import inspect, pipeline, png, runner, station  # noqa: E402,F401

SECRET = b"s3cret-key-of-the-plant"
FAST = Policy(retries=3, backoff=0.05, max_backoff=0.2, stop_deadline=5.0)


def expected_signature(body: bytes) -> str:  # the check a receiver writes, with the standard library alone
    return "sha256=" + hmac.new(SECRET, body, hashlib.sha256).hexdigest()


def test_a_verdict_is_posted_signed_with_the_answer_without_urls(pipeline):  # noqa: F811
    with WebhookReceiver() as hook:
        sinks = Sinks([WebhookSink(hook.url, SECRET)], FAST).start()
        try:
            with station(pipeline, sinks=sinks) as (url, _), httpx.Client(base_url=url, timeout=60) as client:
                before = datetime.now(timezone.utc)
                answers = [client.post("/v1/inspect", files={"file": ("a.png", png(i), "image/png")},
                                       data={"category": "bottle", "part_id": f"SN-{i}"}).json() for i in range(2)]
                got = hook.wait_for(2)
        finally:
            sinks.stop()
    for answer, delivery in zip(answers, got):
        assert delivery.path == "/hook" and delivery.headers["content-type"] == "application/json"
        assert delivery.headers["x-iapas-signature"] == expected_signature(delivery.body)
        message = json.loads(delivery.body)
        sent_at = datetime.strptime(message.pop("time"), "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc)
        assert before <= sent_at <= datetime.now(timezone.utc)
        assert message.pop("product") == "bottle"
        del answer["urls"]
        assert message == answer and message["part_id"] in ("SN-0", "SN-1")
    assert sinks.stats()[f"webhook:127.0.0.1:{hook.server.server_address[1]}"].delivered == 2


def test_two_500s_then_200_is_delivered_once_after_two_retries():
    with WebhookReceiver(answers=[500, 500]) as hook:
        sinks = Sinks([WebhookSink(hook.url, SECRET)], FAST).start()
        sinks.publish({"id": "x1", "category": "bottle", "decision": "NG", "urls": {"map": "/v1/results/x1/map.png"}})
        got = hook.wait_for(3)
        sinks.stop()
    assert [d.status for d in got] == [500, 500, 200] and len(hook.received) == 3
    assert got[0].body == got[1].body == got[2].body
    assert json.loads(got[2].body)["id"] == "x1" and "urls" not in json.loads(got[2].body)
    stats = next(iter(sinks.stats().values()))
    assert (stats.delivered, stats.retries, stats.failed, stats.dropped) == (1, 2, 0, 0)


def test_a_4xx_is_not_retried_and_the_failure_is_counted_and_logged(caplog: pytest.LogCaptureFixture):
    with WebhookReceiver(answers=[404]) as hook, caplog.at_level(logging.WARNING, "iapas.serve.sinks"):
        sinks = Sinks([WebhookSink(hook.url, SECRET)], FAST).start()
        sinks.publish({"id": "x2", "category": "bottle"})
        sinks.stop()
    stats = next(iter(sinks.stats().values()))
    assert (len(hook.received), stats.delivered, stats.failed, stats.retries) == (1, 0, 1, 0)
    lines = [r.getMessage() for r in caplog.records if "not delivered" in r.getMessage()]
    assert lines == [f"sink webhook:127.0.0.1:{hook.server.server_address[1]}: verdict x2 not delivered after 1 attempt: "
                     "HTTP 404 Not Found"]


def test_a_hanging_receiver_does_not_slow_inspections_and_its_failures_are_counted(
        pipeline, caplog: pytest.LogCaptureFixture):  # noqa: F811
    timeout = 30.0  # far longer than the inspections below take, even on a loaded machine
    with WebhookReceiver(hang=True) as hook, caplog.at_level(logging.WARNING, "iapas.serve.sinks"):
        sinks = Sinks([WebhookSink(hook.url, SECRET, timeout=timeout)], Policy(retries=0)).start()
        label = next(iter(sinks.stats()))
        with station(pipeline, sinks=sinks) as (url, _), httpx.Client(base_url=url, timeout=60) as client:
            assert inspect(client, png(0)).status_code == 200
            hook.wait_for(1)  # the sink is stuck in its first attempt now
            for i in range(3):
                assert inspect(client, png(i + 1)).status_code == 200
            # answered while the sink still waits for the receiver's answer to the first verdict
            stats = sinks.stats()[label]
            assert (hook.hanging, len(hook.received), stats.failed, stats.queued) == (1, 1, 0, 3)
            hook.release()  # the receiver now closes every connection without an answer
            deadline = time.monotonic() + 30
            while sinks.stats()[label].failed < 4 and time.monotonic() < deadline:
                time.sleep(0.02)
        sinks.stop(timeout=0)
    stats = sinks.stats()[label]
    assert (stats.failed, stats.delivered, stats.retries, len(hook.received)) == (4, 0, 0, 4)
    lines = [r.getMessage() for r in caplog.records if "not delivered" in r.getMessage()]
    assert len(lines) == 4 and all(line.startswith(f"sink {label}: verdict ") for line in lines)
    assert lines[0].endswith("not delivered after 1 attempt: the connection closed without an answer (RemoteDisconnected)")


def test_a_full_queue_drops_at_once_and_counts(caplog: pytest.LogCaptureFixture):
    q = SinkQueue(WebhookSink("http://127.0.0.1:9/hook", SECRET), Policy(queue_size=2))  # not started: nothing drains
    with caplog.at_level(logging.WARNING, "iapas.serve.sinks"):
        started = time.perf_counter()
        put = [q.put({"id": f"v{i}"}) for i in range(5)]
        elapsed = time.perf_counter() - started
    assert put == [True, True, False, False, False] and elapsed < 0.1
    assert (q.snapshot().dropped, q.snapshot().queued) == (3, 2)
    assert any("queue full (2 verdicts waiting): verdict v2 dropped (1 dropped so far)" in r.getMessage() for r in caplog.records)


def test_stop_sends_what_is_queued_then_counts_the_rest_at_the_deadline(caplog: pytest.LogCaptureFixture):
    with WebhookReceiver(hang=True) as hook, caplog.at_level(logging.WARNING, "iapas.serve.sinks"):
        sinks = Sinks([WebhookSink(hook.url, SECRET, timeout=1.0)], Policy(retries=0)).start()
        for i in range(3):
            sinks.publish({"id": f"q{i}", "category": "bottle"})
        hook.wait_for(1)
        started = time.perf_counter()
        sinks.stop(timeout=0.2)
        took = time.perf_counter() - started
    stats = next(iter(sinks.stats().values()))
    assert took < 3.0 and (stats.failed, stats.delivered, stats.queued) == (3, 0, 0)
    lines = [r.getMessage().split(": ", 1)[1] for r in caplog.records if r.levelno == logging.WARNING]
    assert sorted(lines) == ["2 verdicts not delivered: the station stopped with them queued",
                             "verdict q0 not delivered after 1 attempt: no answer within 1 s"]


def test_payload_time_is_utc_and_the_urls_are_gone():
    answer = {"id": "a", "category": "screw", "decision": None, "urls": {"map": "/m"}}
    when = datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=timezone.utc)
    assert verdict_payload(answer, when) == {"id": "a", "category": "screw", "decision": None, "product": "screw",
                                             "time": "2026-01-02T03:04:05.678Z"}


@pytest.mark.parametrize(("args", "message"), [
    (["--webhook", "ftp://mes/verdicts", "--webhook-secret-file", "{secret}"], "--webhook 'ftp://mes/verdicts': give an http:// or https:// URL"),
    (["--webhook", "http://mes:80x/v"], "--webhook needs --webhook-secret-file FILE"),
    (["--webhook", "http://mes:99999/v", "--webhook-secret-file", "{secret}"], "the port is not a number in 0..65535"),
    (["--webhook", "http://mes/v", "--webhook-secret-file", "{missing}"], "cannot read it: No such file or directory"),
    (["--webhook", "http://mes/v", "--webhook-secret-file", "{empty}"], "the file is empty"),
    (["--webhook-secret-file", "{secret}"], "--webhook-secret-file is given without --webhook"),
    (["--mqtt", "mqtt://broker:1883"], "--mqtt 'mqtt://broker:1883': give mqtt://HOST:PORT/TOPIC"),
    (["--mqtt", "mqtt://broker/plant/#"], "may hold no wildcard"),
])
def test_cli_refuses_bad_sink_options_in_one_line_before_loading_models(args, message, tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch):
    from iapas.pipeline.stage2 import Pipeline
    from tests.test_serve_api import make_profiles

    monkeypatch.setattr(Pipeline, "from_config", classmethod(lambda cls, *a, **k: pytest.fail("models loaded")))
    profile = make_profiles()["bottle"].save(tmp_path / "bottle.yaml")
    (tmp_path / "secret").write_text("key\n")
    (tmp_path / "empty").write_text("\n")
    files = {"secret": tmp_path / "secret", "missing": tmp_path / "missing", "empty": tmp_path / "empty"}
    result = runner.invoke(cli_app, ["serve", "--profile", str(profile), *[a.format(**files) for a in args]])
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], result.output


def test_mqtt_target_defaults():
    assert mqtt_target("mqtt://broker/plant/line1") == mqtt_target("mqtt://broker:1883/plant/line1/")
    assert mqtt_target("mqtts://broker/p").port == 8883 and mqtt_target("mqtts://broker/p").tls


# --- MQTT against Debian's mosquitto ----------------------------------------------------------

def broker() -> Mosquitto:
    if mosquitto_path() is None:
        if os.environ.get("CI") == "true":
            pytest.fail("mosquitto is not installed: .ci/run installs Debian's mosquitto")
        pytest.skip("mosquitto is not installed (apt-get install mosquitto)")
    pytest.importorskip("paho.mqtt")
    return Mosquitto()


class Subscriber:
    """A paho client subscribed (QoS 1) to ``topic``; ``messages``: (topic, JSON) in arrival order."""

    def __init__(self, port: int, topic: str) -> None:
        import paho.mqtt.client as mqtt

        self.messages: list[tuple[str, dict]] = []
        self.cond = threading.Condition()
        subscribed = threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="test-subscriber")
        self.client.on_subscribe = lambda *a: subscribed.set()
        self.client.on_message = self._message
        self.client.connect("127.0.0.1", port)
        self.client.subscribe(topic, qos=1)
        self.client.loop_start()
        assert subscribed.wait(10)

    def _message(self, client, userdata, message) -> None:  # type: ignore[no-untyped-def]
        with self.cond:
            self.messages.append((message.topic, json.loads(message.payload)))
            self.cond.notify_all()

    def wait_for(self, n: int, timeout: float = 30.0) -> list[tuple[str, dict]]:
        with self.cond:
            assert self.cond.wait_for(lambda: len(self.messages) >= n, timeout), self.messages
        time.sleep(0.3)  # a duplicate would arrive now
        return list(self.messages)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def test_mqtt_every_verdict_arrives_once_on_its_product_topic(pipeline):  # noqa: F811
    with broker() as mosquitto:
        sub = Subscriber(mosquitto.port, "plant/iapas/#")
        sinks = open_sinks(None, None, [f"mqtt://127.0.0.1:{mosquitto.port}/plant/iapas"], FAST).start()
        try:
            with station(pipeline, sinks=sinks) as (url, _), httpx.Client(base_url=url, timeout=60) as client:
                answers = [inspect(client, png(i), category=c).json() for i, c in enumerate(["bottle"] * 3 + ["screw"])]
                got = sub.wait_for(4)
        finally:
            sinks.stop()
            sub.close()
    assert len(got) == 4 and sorted(m["id"] for _, m in got) == sorted(a["id"] for a in answers)
    assert {m["id"]: t for t, m in got} == {a["id"]: f"plant/iapas/{a['category']}" for a in answers}
    assert all(m["product"] == m["category"] and "urls" not in m for _, m in got)
    assert next(iter(sinks.stats().values())).delivered == 4


def test_mqtt_reconnects_after_the_broker_restarts():
    with broker() as mosquitto:
        sink = MqttSink(mqtt_target(f"mqtt://127.0.0.1:{mosquitto.port}/plant"))
        sinks = Sinks([sink], Policy(retries=8, backoff=0.2, max_backoff=1.0)).start()
        try:
            sinks.publish({"id": "before", "category": "bottle"})
            deadline = time.monotonic() + 10
            while next(iter(sinks.stats().values())).delivered < 1 and time.monotonic() < deadline:
                time.sleep(0.02)
            mosquitto.stop()
            mosquitto.start()  # same port, nothing kept: the sink reconnects by itself
            sub = Subscriber(mosquitto.port, "plant/#")
            sinks.publish({"id": "after", "category": "bottle"})
            got = sub.wait_for(1)
            sub.close()
        finally:
            sinks.stop()
    assert [m["id"] for _, m in got] == ["after"]
    stats = next(iter(sinks.stats().values()))
    assert (stats.delivered, stats.failed) == (2, 0)


def test_iapas_serve_sends_verdicts_to_its_webhook_and_stops_cleanly(tiny_models: dict[str, Path], tmp_path: Path):
    """The command as a user runs it: ``iapas serve --webhook URL --webhook-secret-file FILE`` in a
    process of its own, one inspection, the signed verdict received, SIGTERM ends it (exit 0)."""
    import signal
    import subprocess
    import sys

    from tests.test_serve_api import make_profiles

    profile = make_profiles()["bottle"].save(tmp_path / "bottle.yaml")
    (tmp_path / "key").write_text(SECRET.decode() + "\n")
    with WebhookReceiver() as hook:
        proc = subprocess.Popen(
            [sys.executable, "-m", "iapas", "serve", "-p", str(profile), "--port", "0", "--device", "cpu",
             "--detector", str(tiny_models["grounding-dino"]), "--segmenter", str(tiny_models["sam"]),
             "--webhook", hook.url, "--webhook-secret-file", str(tmp_path / "key")],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=dict(os.environ, COLUMNS="200"))
        try:
            lines = iter(proc.stdout.readline, "")  # type: ignore[union-attr]
            line = next((line for line in lines if line.startswith("iapas serve: ")), "")
            assert line.startswith("iapas serve: http://127.0.0.1:"), line
            url = line.split()[2].rstrip("/")
            answer = httpx.post(f"{url}/v1/inspect", files={"file": ("p.png", png(1))},
                                data={"category": "bottle", "part_id": "SN-9"}, timeout=60).json()
            delivery = hook.wait_for(1)[0]
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(30) == 0
        finally:
            proc.kill()
    assert delivery.headers["x-iapas-signature"] == expected_signature(delivery.body)
    message = json.loads(delivery.body)
    assert (message["id"], message["part_id"], message["product"]) == (answer["id"], "SN-9", "bottle")
