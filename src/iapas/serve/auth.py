"""Bearer tokens and the request guard that runs before any route: 401 and 413 with no work done."""

from __future__ import annotations

import hmac
import json
import os
from pathlib import Path
from typing import Any

LOOPBACK_HOSTS = ("127.0.0.1", "::1", "localhost")
GUARDED = ("/v1/", "/metrics")  # the paths behind the token
TOKEN_ENV = "IAPAS_TOKEN"


class TokenError(ValueError):
    """No usable token where one is required, or an unreadable token file."""


def load_token(token_file: Path | None, host: str) -> str | None:
    """The token from ``token_file`` (first line) or ``$IAPAS_TOKEN``; required off loopback."""
    token: str | None = None
    if token_file is not None:
        try:
            token = next(iter(token_file.read_text(encoding="utf-8").strip().splitlines()), "").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise TokenError(f"{token_file}: cannot read the token: {getattr(exc, 'strerror', None) or exc}") from None
        if not token:
            raise TokenError(f"{token_file}: the token file is empty")
    elif os.environ.get(TOKEN_ENV, "").strip():
        token = os.environ[TOKEN_ENV].strip()
    if token is None and host not in LOOPBACK_HOSTS:
        raise TokenError(
            f"--host {host} is reachable from other machines: give a token with --token-file FILE or "
            f"{TOKEN_ENV} (clients send 'Authorization: Bearer TOKEN'), or bind to 127.0.0.1"
        )
    if token is not None and len(token) < 16:
        raise TokenError("the token is too short: use at least 16 characters (e.g. python -c 'import secrets; print(secrets.token_hex(16))')")
    return token


def token_matches(header: str | None, token: str) -> bool:
    """Whether an ``Authorization`` header carries ``token`` (constant-time comparison)."""
    if not header or not header.startswith("Bearer "):
        return False
    return hmac.compare_digest(header[len("Bearer "):].strip().encode("utf-8"), token.encode("utf-8"))


class GuardMiddleware:
    """ASGI middleware for the API (``/v1/``, ``/metrics``): a wrong or missing token -> 401, a declared body
    over the upload limit -> 413, both answered before the body is read or a route runs. CORS
    preflights (OPTIONS, which carry no token) pass to the CORS middleware."""

    def __init__(self, app: Any, token: str | None, max_upload: int) -> None:
        self.app = app
        self.token = token
        self.max_upload = max_upload

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(GUARDED) or scope["method"] == "OPTIONS":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        if self.token is not None and not token_matches(headers.get("authorization"), self.token):
            await answer_json(send, 401, "missing or wrong token: send 'Authorization: Bearer TOKEN'",
                          [(b"www-authenticate", b"Bearer")])
            return
        length = headers.get("content-length")
        if length is not None:
            try:
                too_large = int(length) > self.max_upload
            except ValueError:
                await answer_json(send, 400, "invalid Content-Length")
                return
            if too_large:
                await answer_json(send, 413, upload_too_large(self.max_upload))
                return
        await self.app(scope, receive, send)


def upload_too_large(limit: int) -> str:
    return f"the upload is over the limit of {limit / 2**20:g} MB (--max-upload-mb)"


async def answer_json(send: Any, status: int, detail: str, extra: list[tuple[bytes, bytes]] | None = None) -> None:
    """Send ``{"detail": detail}`` with ``status`` and close the connection."""
    body = json.dumps({"detail": detail}).encode("utf-8")
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
               (b"connection", b"close"), *(extra or [])]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
