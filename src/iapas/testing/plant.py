"""Stand-ins for the plant's systems on loopback, for tests and benchmarks of the verdict sinks:
a webhook receiver (:class:`WebhookReceiver`, standard library) and Debian's mosquitto MQTT
broker started on a free port (:class:`Mosquitto`).

    with WebhookReceiver(answers=[500, 500]) as hook, Mosquitto() as broker:
        ...  # hook.url, broker.port; hook.wait_for(3); hook.received
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

DEBIAN_MOSQUITTO = "/usr/sbin/mosquitto"


@dataclass
class Delivery:
    """One POST the receiver got: its path, headers (lower-case names) and exact body."""

    path: str
    headers: dict[str, str]
    body: bytes
    status: int  # what the receiver answered (0: it hung)


class WebhookReceiver:
    """A threaded HTTP server on 127.0.0.1 that records every POST. ``answers``: the statuses of
    the first requests, in order (then ``200``); ``hang``: never answer (until :meth:`stop`)."""

    def __init__(self, answers: list[int] | tuple[int, ...] = (), hang: bool = False) -> None:
        self.answers, self.hang = list(answers), hang
        self.received: list[Delivery] = []
        self.hanging = 0  # requests held open now
        self._cond = threading.Condition()
        self._release = threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:  # noqa: N802 - the http.server name
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                status = receiver._answer(self.path, {k.lower(): v for k, v in self.headers.items()}, body)
                if status:
                    self.send_response(status)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                else:  # released from hanging: close the connection without an answer
                    self.close_connection = True

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self._thread = threading.Thread(target=self.server.serve_forever, name="webhook-receiver", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def _answer(self, path: str, headers: dict[str, str], body: bytes) -> int:
        with self._cond:
            status = 0 if self.hang else (self.answers.pop(0) if self.answers else 200)
            self.received.append(Delivery(path, headers, body, status))
            self.hanging += status == 0
            self._cond.notify_all()
        if status == 0:
            self._release.wait()
        return status

    def wait_for(self, n: int, timeout: float = 30.0) -> list[Delivery]:
        """The deliveries once there are ``n`` (TimeoutError else)."""
        with self._cond:
            if not self._cond.wait_for(lambda: len(self.received) >= n, timeout):
                raise TimeoutError(f"the receiver got {len(self.received)} of {n} requests in {timeout:g} s")
            return list(self.received)

    def release(self) -> None:
        """End the hanging: the requests held open, and any later one, get no answer at all
        (the connection closes)."""
        self._release.set()

    def start(self) -> "WebhookReceiver":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._release.set()
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self) -> "WebhookReceiver":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def mosquitto_path() -> str | None:
    """Debian's mosquitto (``apt-get install mosquitto``), or one on the PATH; None when absent."""
    return DEBIAN_MOSQUITTO if os.access(DEBIAN_MOSQUITTO, os.X_OK) else shutil.which("mosquitto")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Mosquitto:
    """A mosquitto broker on 127.0.0.1:``port`` (a free one by default), anonymous, in memory."""

    def __init__(self, port: int | None = None) -> None:
        binary = mosquitto_path()
        if binary is None:
            raise FileNotFoundError("mosquitto is not installed (apt-get install mosquitto)")
        self.binary, self.port = binary, port or free_port()
        self.folder = Path(tempfile.mkdtemp(prefix="iapas-mosquitto-"))
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 10.0) -> "Mosquitto":
        config = self.folder / "mosquitto.conf"
        config.write_text(f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
        with open(self.folder / "log", "wb") as log:  # the child keeps its own copy of the descriptor
            self.process = subprocess.Popen([self.binary, "-c", str(config)], stdout=subprocess.DEVNULL, stderr=log)
        deadline = time.monotonic() + timeout
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return self
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    log = (self.folder / "log").read_text(errors="replace").strip()
                    self.stop()
                    raise RuntimeError(f"mosquitto did not start on port {self.port}: {log}") from None
                time.sleep(0.05)

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            self.process = None

    def __enter__(self) -> "Mosquitto":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()
        shutil.rmtree(self.folder, ignore_errors=True)
