"""The verdict sinks ``iapas serve`` offers: a signed webhook (``--webhook``) and MQTT
(``--mqtt``), and :func:`open_sinks`, which checks the options where they come in.

- Webhook: ``POST`` of the JSON message (:func:`iapas.serve.sinks.verdict_payload`) with
  ``Content-Type: application/json`` and ``X-Iapas-Signature: sha256=<hex>``, the HMAC-SHA256 of
  the exact body under the key from ``--webhook-secret-file`` (:func:`sign`). A 2xx answer is a
  delivery; a 5xx, 408, 429, a time-out or a refused connection is retried; another 4xx or a
  redirect is not (repeating it cannot help). Standard library only (``http.client``, one
  kept-alive connection; no proxy).
- MQTT (the ``mqtt`` extra, paho-mqtt): the same JSON, QoS 1, to ``TOPIC/<category>``; paho's
  network thread reconnects on its own (1 s to 30 s apart) and a verdict sent while it is
  disconnected is retried by the sink's queue. ``mqtts://`` connects with TLS (system CAs).
"""

from __future__ import annotations

import hashlib
import hmac
import http.client
import logging
import secrets
import ssl
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from iapas.serve.sinks import ATTEMPT_TIMEOUT_S, Policy, SendError, Sink, SinkError, Sinks

logger = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-Iapas-Signature"
CONNECT_WAIT_S = 5.0  # how long start() waits for the broker before going on (paho keeps trying)


def sign(secret: bytes, body: bytes) -> str:
    """The ``X-Iapas-Signature`` value of ``body``: ``sha256=`` and the hex HMAC-SHA256."""
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


def _port(url: str, option: str) -> int | None:
    try:
        return urlsplit(url).port
    except ValueError:
        raise SinkError(f"{option} {url!r}: the port is not a number in 0..65535") from None


def webhook_url(url: str) -> str:
    """``url`` when it is an http(s) URL with a host, else :class:`SinkError`."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise SinkError(f"--webhook {url!r}: give an http:// or https:// URL with a host, e.g. http://mes:8080/verdicts")
    _port(url, "--webhook")
    return url


class WebhookSink(Sink):
    """POSTs on one kept-alive connection (reopened when the receiver closes it)."""

    kind = "webhook"

    def __init__(self, url: str, secret: bytes, timeout: float = ATTEMPT_TIMEOUT_S) -> None:
        from iapas.core.version import __version__

        parts = urlsplit(url)
        self.url, self.secret, self.timeout = url, secret, timeout
        self.https, self.host = parts.scheme == "https", str(parts.hostname)
        self.port = parts.port or (443 if self.https else 80)
        self.target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        self.label = f"webhook:{self.host}:{self.port}"
        self.agent = f"iapas/{__version__}"
        self._connection: http.client.HTTPConnection | None = None

    def _connect(self) -> http.client.HTTPConnection:
        if self.https:
            return http.client.HTTPSConnection(self.host, self.port, timeout=self.timeout,
                                               context=ssl.create_default_context())
        return http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    def send(self, body: bytes, payload: dict[str, Any]) -> None:
        headers = {"Content-Type": "application/json", "User-Agent": self.agent, SIGNATURE_HEADER: sign(self.secret, body),
                   "X-Iapas-Delivery": str(payload.get("id"))}
        while True:
            reused = self._connection is not None
            connection = self._connection or self._connect()
            self._connection = connection
            try:
                connection.request("POST", self.target, body=body, headers=headers)
                response = connection.getresponse()
                response.read()
            except (ConnectionResetError, BrokenPipeError, http.client.RemoteDisconnected) as exc:
                self.close()
                if reused:  # the receiver closed the kept-alive connection: once more on a new one
                    continue
                raise SendError(f"the connection closed without an answer ({type(exc).__name__})") from None
            except TimeoutError:
                self.close()
                raise SendError(f"no answer within {self.timeout:g} s") from None
            except (OSError, http.client.HTTPException) as exc:
                self.close()
                raise SendError(f"cannot reach it: {getattr(exc, 'strerror', None) or exc or type(exc).__name__}") from None
            if response.will_close:
                self.close()
            if 200 <= response.status < 300:
                return
            status = response.status  # a 3xx is an answer too: redirects are not followed
            raise SendError(f"HTTP {status} {response.reason}", retry=status >= 500 or status in (408, 429))


@dataclass(frozen=True)
class MqttTarget:
    host: str
    port: int
    topic: str  # the prefix: each verdict goes to <topic>/<category>
    tls: bool = False


def mqtt_target(url: str) -> MqttTarget:
    """``mqtt://HOST[:PORT]/TOPIC`` (or ``mqtts://``) checked; :class:`SinkError` when not."""
    parts = urlsplit(url)
    topic = parts.path.strip("/")
    if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname or not topic:
        raise SinkError(f"--mqtt {url!r}: give mqtt://HOST:PORT/TOPIC (or mqtts://), e.g. mqtt://broker:1883/plant/iapas")
    if "+" in topic or "#" in url or "//" in topic or parts.query:
        raise SinkError(f"--mqtt {url!r}: the topic {topic!r} may hold no wildcard (+, #) and no empty level")
    port = _port(url, "--mqtt") or (8883 if parts.scheme == "mqtts" else 1883)
    return MqttTarget(parts.hostname, port, topic, parts.scheme == "mqtts")


class MqttSink(Sink):
    kind = "mqtt"

    def __init__(self, target: MqttTarget, timeout: float = ATTEMPT_TIMEOUT_S) -> None:
        from importlib.util import find_spec

        if find_spec("paho") is None or find_spec("paho.mqtt") is None:
            raise SinkError("--mqtt needs the paho-mqtt package: pip install 'iapas[mqtt]'")
        self.target, self.timeout = target, timeout
        self.label = f"mqtt:{target.host}:{target.port}/{target.topic}"
        self.client: Any = None
        self._connected = threading.Event()

    def open(self) -> None:
        import paho.mqtt.client as mqtt

        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"iapas-{secrets.token_hex(6)}")
        if self.target.tls:
            client.tls_set()
        client.reconnect_delay_set(min_delay=1, max_delay=30)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.connect_async(self.target.host, self.target.port, keepalive=30)
        client.loop_start()
        self.client = client
        if not self._connected.wait(CONNECT_WAIT_S):
            logger.warning("sink %s: no connection to the broker yet; verdicts are retried while it reconnects", self.label)

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason: Any, properties: Any = None) -> None:
        if getattr(reason, "is_failure", False):
            logger.warning("sink %s: the broker refused the connection: %s", self.label, reason)
            return
        logger.info("sink %s: connected", self.label)
        self._connected.set()

    def _on_disconnect(self, client: Any, userdata: Any, flags: Any, reason: Any, properties: Any = None) -> None:
        if self._connected.is_set():
            logger.warning("sink %s: disconnected (%s); reconnecting", self.label, reason)
        self._connected.clear()

    def send(self, body: bytes, payload: dict[str, Any]) -> None:
        import paho.mqtt.client as mqtt

        if self.client is None or not self.client.is_connected():
            raise SendError("not connected to the broker (reconnecting)")
        info = self.client.publish(f"{self.target.topic}/{payload.get('product')}", body, qos=1)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            raise SendError(f"publish failed: {mqtt.error_string(info.rc)}")
        info.wait_for_publish(self.timeout)
        if not info.is_published():
            raise SendError(f"no PUBACK from the broker within {self.timeout:g} s")

    def close(self) -> None:
        if self.client is not None:
            self._connected.clear()  # a disconnection asked for: no warning
            self.client.disconnect()
            self.client.loop_stop()


def read_secret(path: Path) -> bytes:
    """The webhook key: the first line of ``path``; :class:`SinkError` when missing or empty."""
    try:
        lines = Path(path).read_text(encoding="utf-8").strip().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise SinkError(f"--webhook-secret-file {path}: cannot read it: {getattr(exc, 'strerror', None) or exc}") from None
    secret = lines[0].strip() if lines else ""
    if not secret:
        raise SinkError(f"--webhook-secret-file {path}: the file is empty (its first line is the HMAC key)")
    return secret.encode("utf-8")


def open_sinks(webhooks: list[str] | None, secret_file: Path | None, mqtt: list[str] | None,
               policy: Policy | None = None) -> Sinks | None:
    """The sinks ``iapas serve`` was given (``--webhook``, ``--webhook-secret-file``,
    ``--mqtt``), checked, not yet started; None when none. :class:`SinkError` (one line) for a
    bad URL, a missing or empty secret file, or MQTT without its extra."""
    webhooks, mqtt = list(webhooks or []), list(mqtt or [])
    if secret_file is not None and not webhooks:
        raise SinkError("--webhook-secret-file is given without --webhook")
    if webhooks and secret_file is None:
        raise SinkError("--webhook needs --webhook-secret-file FILE (its first line is the key that signs each POST)")
    sinks: list[Sink] = []
    if webhooks:
        secret = read_secret(secret_file)  # type: ignore[arg-type]
        sinks += [WebhookSink(webhook_url(url), secret) for url in webhooks]
    sinks += [MqttSink(mqtt_target(url)) for url in mqtt]
    seen: dict[str, int] = {}
    for sink in sinks:  # one label per sink, also for two on one host
        seen[sink.label] = seen.get(sink.label, 0) + 1
        if seen[sink.label] > 1:
            sink.label = f"{sink.label}#{seen[sink.label]}"
    return Sinks(sinks, policy or Policy()) if sinks else None
