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


# --- the station's set-up before it serves (``iapas serve``, or a Python program) ---------------------------


class StationError(ValueError):
    """A station that cannot start; the message is one line."""


def missing_extras() -> list[str]:
    """The packages of the 'serve' extra that are not installed."""
    from importlib.util import find_spec

    return [name for name, modules in (("fastapi", ["fastapi"]), ("uvicorn", ["uvicorn"]),
                                       ("python-multipart", ["python_multipart", "multipart"]))
            if not any(find_spec(m) for m in modules)]


def check_hosts(allowed_hosts: list[str], cors: list[str]) -> None:
    """Refuse an --allowed-host or --cors value that could never match a request."""
    from iapas.serve.policy import origin_of, split_host

    for name in allowed_hosts:
        parsed = split_host(name if not (":" in name and not name.startswith("[")) else f"[{name}]")
        if parsed is None or parsed[1] is not None:
            raise StationError(f"--allowed-host {name!r}: give a host name or address, without a scheme or a port")
    for origin in cors:
        if origin_of(origin) is None:
            raise StationError(f"--cors {origin!r}: give an origin such as http://host:port")


def load_profiles(paths: list[Any], detector: str) -> dict[str, Any]:
    """The profiles to serve by category: one each, each caption readable by ``detector``."""
    from iapas.models.detector import check_caption_length
    from iapas.product.profile import Profile, ProfileError

    if not paths:
        raise StationError("give at least one --profile (or --review RUN_DIR)")
    profiles: dict[str, Any] = {}
    for path in paths:
        try:
            profile = Profile.load(path)
        except ProfileError as exc:
            raise StationError(str(exc)) from None
        if profile.category in profiles:
            raise StationError(f"{path}: a second profile of category {profile.category!r}")
        try:
            check_caption_length(profile.caption, detector)
        except ValueError as exc:
            raise StationError(f"{path}: {exc}") from None
        profiles[profile.category] = profile
    return profiles


def store_folders(store: Any, categories: list[str]) -> list[Any]:
    """The run folder of each category under ``store`` (a folder, new or not)."""
    from iapas.serve.store import category_folder

    if store.exists() and not store.is_dir():
        raise StationError(f"--store {store} is a file; it must be a folder")
    try:
        return [category_folder(store, category) for category in categories]
    except ValueError as exc:
        raise StationError(f"--store {store}: {exc}") from None


def serve_settings(token: str | None, host: str, settings: Any, *, cors: list[str] | None,
                   allowed_host: list[str] | None, max_upload_mb: float, max_inflight_mb: float,
                   pixel_budget_mpx: float, **rest: Any) -> Any:
    """The station's :class:`~iapas.serve.app.ServeSettings` from ``iapas serve``'s options (sizes
    in MB and megapixels there, bytes and pixels here); ``rest``: fields taken as they are
    (body_timeout, audit_rate, audit_seed, max_escape_rate)."""
    from iapas.serve.app import ServeSettings

    return ServeSettings(max_upload=int(max_upload_mb * 2**20), max_pixels=settings.max_pixels, token=token,
                         cors=list(cors or []), device=settings.device, dtype=settings.dtype,
                         allowed_hosts=list(allowed_host or []), bound_host=host,
                         max_inflight_bytes=max(int(max_inflight_mb * 2**20), int(max_upload_mb * 2**20)),
                         pixel_budget=int(pixel_budget_mpx * 1e6), **rest)
