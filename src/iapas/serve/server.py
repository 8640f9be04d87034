"""Running the app on uvicorn: in the foreground (``iapas serve``) or in a thread (tests, benchmarks)."""

from __future__ import annotations

import contextlib
import json
import logging
import signal
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

logger = logging.getLogger(__name__)


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` (port 0: a free one); OSError when taken."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(2048)
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


MALFORMED = "malformed HTTP request (the request line, a header or Content-Length is invalid)"


def json_error_protocol() -> type:
    """uvicorn's HTTP protocol (httptools, else h11) whose own 400 for a request it cannot
    parse is JSON ``{"detail": ...}``, like every other error of the station."""
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol as Base
    except ImportError:  # no httptools: the pure-Python parser
        from uvicorn.protocols.http.h11_impl import H11Protocol as Base

    class JsonErrorProtocol(Base):  # type: ignore[misc, valid-type]
        def send_400_response(self, msg: str) -> None:
            body = json.dumps({"detail": MALFORMED}).encode("utf-8")
            head = (b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\n"
                    b"content-length: " + str(len(body)).encode() + b"\r\nconnection: close\r\n\r\n")
            self.transport.write(head + body)
            self.transport.close()

    return JsonErrorProtocol


def uvicorn_server(app: Any, sock: socket.socket, log_level: str = "warning") -> Any:
    import uvicorn

    class StationServer(uvicorn.Server):
        """SIGTERM (systemd, Docker) ends the server as Ctrl+C does: requests in flight are
        answered, then :meth:`run` returns (uvicorn would raise the signal again after a
        graceful exit, and SIGTERM's default action kills the process before any cleanup,
        leaving the output lock behind)."""

        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            with super().capture_signals():
                yield
                if self._captured_signals:
                    logger.info("stopping on signal %s", ", ".join(signal.Signals(s).name for s in self._captured_signals))
                self._captured_signals.clear()

    host, port = sock.getsockname()[:2]
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level, access_log=False,
                            lifespan="off", timeout_graceful_shutdown=5, http=json_error_protocol())
    return StationServer(config)


class BackgroundServer:
    """``app`` on a real uvicorn in a daemon thread: ``with BackgroundServer(app) as url: ...``."""

    def __init__(self, app: Any, host: str = "127.0.0.1", port: int = 0) -> None:
        self.sock = bind(host, port)
        self.server = uvicorn_server(app, self.sock)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True,
                                       name="iapas-uvicorn")

    @property
    def url(self) -> str:
        host, port = self.sock.getsockname()[:2]
        return f"http://{host}:{port}"

    def start(self, timeout: float = 30.0) -> str:
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.01)
        return self.url

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)
        self.sock.close()

    def __enter__(self) -> str:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()
