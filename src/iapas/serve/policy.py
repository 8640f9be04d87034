"""Who may talk to the station: the Host, Origin and upload-type policy, one ASGI middleware.

A page on another site, open in a browser on the station's machine, can reach 127.0.0.1. Two
ways in are closed here, before any route runs:

- DNS rebinding: the page's own name resolves to 127.0.0.1, so the browser lets it read the
  answers. The browser still sends the page's name as ``Host``, so a request whose ``Host`` is
  not a loopback name or address (``localhost``, ``127.0.0.0/8``, ``[::1]``), the address the
  station is bound to, or an ``--allowed-host`` is refused (400).
- Cross-site requests: a page can send a POST anywhere (as ``text/plain``, a form, or a
  multipart form) without reading the answer. A state-changing request whose ``Origin`` (or,
  without one, ``Referer``) is present and is neither the station's own origin nor a ``--cors``
  origin is refused (403); an upload whose ``Content-Type`` is none of the documented ones
  (:data:`UPLOAD_TYPES`) is refused (415).

Requests without ``Origin`` and ``Referer`` (curl, a camera, an MES) pass: a browser always
sends ``Origin`` with a cross-site POST.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from typing import Any
from urllib.parse import urlsplit

from iapas.serve.auth import answer_json

STATE_CHANGING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
UPLOAD_TYPES = frozenset({"multipart/form-data", "application/octet-stream", "image/png", "image/jpeg",
                          "image/bmp", "image/tiff", "image/webp"})
JSON_TYPE = "application/json"  # the body of the routes that take JSON (a disposition), never of an upload
UPLOAD_PATH = "/v1/inspect"
WILDCARD_HOSTS = frozenset({"", "0.0.0.0", "::", "[::]"})
DEFAULT_PORTS = {"http": 80, "https": 443}
_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*$")


def split_host(value: str) -> tuple[str, int | None] | None:
    """``(name, port)`` of a ``Host`` header value (lowercased; an IPv6 address without its
    brackets), or None when it is not a plain host name or address with an optional port."""
    value = value.strip().lower()
    if value.startswith("["):
        end = value.find("]")
        if end < 0:
            return None
        name, rest = value[1:end], value[end + 1:]
        try:
            ipaddress.IPv6Address(name)
        except ValueError:
            return None
    else:
        name, _, port_text = value.partition(":")
        rest = f":{port_text}" if _ else ""
        if not _NAME.fullmatch(name):
            return None
    if not rest:
        return name, None
    if not (rest.startswith(":") and rest[1:].isdigit() and len(rest) <= 6 and int(rest[1:]) <= 65535):
        return None
    return name, int(rest[1:])


def is_loopback(name: str) -> bool:
    if name == "localhost":
        return True
    try:
        address = ipaddress.ip_address(name)
    except ValueError:
        return False
    mapped = getattr(address, "ipv4_mapped", None)
    return address.is_loopback or (mapped is not None and mapped.is_loopback)


def origin_of(url: str) -> tuple[str, str, int] | None:
    """``(scheme, host, port)`` of an ``Origin`` or ``Referer`` value; None for ``null`` and
    anything that is not an http(s) URL."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        return None
    if parts.scheme not in DEFAULT_PORTS or not parts.hostname or parts.username or parts.password:
        return None
    return parts.scheme, parts.hostname.lower(), port or DEFAULT_PORTS[parts.scheme]


class RequestPolicyMiddleware:
    """ASGI middleware: refuse a foreign ``Host`` (400), a cross-site state-changing request
    (403) and an upload of an undocumented content type (415), each as JSON ``{"detail"}``."""

    def __init__(self, app: Any, *, allowed_hosts: Iterable[str] = (), bound_host: str | None = None,
                 cors: Iterable[str] = ()) -> None:
        self.app = app
        self.hosts = {h.strip().lower().strip("[]") for h in allowed_hosts if h.strip()}
        if bound_host is not None and bound_host.lower() not in WILDCARD_HOSTS:
            self.hosts.add(bound_host.lower().strip("[]"))
        self.cors = {o for o in (origin_of(c) for c in cors) if o is not None}

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers: dict[str, str] = {}
        for key, value in scope.get("headers", []):
            headers.setdefault(key.decode("latin-1").lower(), value.decode("latin-1"))
        refusal = self.refusal(scope["method"], headers, scope.get("path", ""))
        if refusal is not None:
            await answer_json(send, *refusal)
            return
        await self.app(scope, receive, send)

    def refusal(self, method: str, headers: dict[str, str], path: str = UPLOAD_PATH) -> tuple[int, str] | None:
        """``(status, message)`` of a refused request, None when it may pass. JSON passes to
        the routes other than the upload's (a browser sends it cross-site only after a preflight)."""
        raw_host = headers.get("host", "")
        host = split_host(raw_host)
        if host is None or not (is_loopback(host[0]) or host[0] in self.hosts):
            return 400, (f"Host {raw_host!r} is not this station's: use a loopback name or address "
                         "(localhost, 127.0.0.1, [::1]) or a name given with --allowed-host")
        if method not in STATE_CHANGING:
            return None
        source = "Origin" if "origin" in headers else "Referer" if "referer" in headers else None
        if source is not None:
            value = headers[source.lower()]
            origin = origin_of(value)
            if origin is None or not (self.same_origin(origin, host) or origin in self.cors):
                return 403, (f"cross-origin request refused: {source} {value!r} is neither this station's "
                             "own origin nor a --cors origin")
        content_type = headers.get("content-type")
        if content_type is not None:
            kind = content_type.split(";", 1)[0].strip().lower()
            if kind not in UPLOAD_TYPES and not (kind == JSON_TYPE and path != UPLOAD_PATH):
                return 415, (f"unsupported Content-Type {kind!r}: send multipart/form-data (fields 'file', "
                             "'category') or the raw image as application/octet-stream or image/png, "
                             "image/jpeg, image/bmp, image/tiff, image/webp")
        return None

    @staticmethod
    def same_origin(origin: tuple[str, str, int], host: tuple[str, int | None]) -> bool:
        """The page's origin is the station's: the same host name and the same port (the
        scheme's default port when ``Host`` names none, as behind a TLS proxy)."""
        scheme, name, port = origin
        return name.strip("[]") == host[0] and port == (host[1] if host[1] is not None else DEFAULT_PORTS[scheme])

