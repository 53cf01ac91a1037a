"""The HTTP edge of the recall service: who may call it, how much a request may send, how long it may take.

`EdgeGuard` is a plain ASGI middleware in front of the FastAPI routes (Starlette's
BaseHTTPMiddleware would add a task group to every request). For each HTTP request, in order:

1. the bearer token, when authentication is on: 401 unless `Authorization: Bearer <token>`
   matches (compared in constant time). `/healthz` stays open so that probes need no secret;
2. the body size: 413 when `Content-Length` says too much, before anything is read, or as soon
   as the bytes received pass the limit (a chunked body declares no length);
3. the body time: 408 unless the whole body has arrived within `body_timeout_s`, so a client that
   sends slowly (or never finishes) gives its replica slot back instead of holding it forever;
4. the answer time: 504 unless the app has started its answer within `request_timeout_s`.

Every refusal is JSON `{"error": ...}` like the API's own errors. The token is read once, when
a replica starts (`required_token`): nothing here touches a file per request.

`TokenBucket` is the rate limit of cold-text requests, which run the model's text encoder.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import json
import os
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from precise.config import ServeAuthConfig

OPEN_PATHS = frozenset({"/healthz"})
MIN_TOKEN_CHARS = 16
_TOKEN_CHARS = re.compile(r"^[\x21-\x7e]+$")  # what an HTTP header carries: visible ASCII, no spaces
_BODYLESS = frozenset({"GET", "HEAD", "OPTIONS"})  # methods whose body no route reads

Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


class AuthConfigError(ValueError):
    """Authentication is on but no usable token is configured; the message says how to fix it."""


def is_loopback(host: str | None) -> bool:
    """Whether a listen address is reachable from this machine only."""
    if host is None:
        return False
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


def auth_is_on(auth: ServeAuthConfig, listen_host: str | None) -> bool:
    """`mode: auto` is on unless Serve listens on loopback only (an unknown host counts as beyond)."""
    return auth.mode == "on" or (auth.mode == "auto" and not is_loopback(listen_host))


def read_token(auth: ServeAuthConfig, environ: Mapping[str, str] = os.environ) -> bytes | None:
    """The configured token (from `token_file`, else the `token_env` variable), or None if neither
    holds one. Raises AuthConfigError for a file that cannot be read or a token that is unusable."""
    if auth.token_file:
        try:
            token = Path(auth.token_file).read_text().strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise AuthConfigError(f"serve.auth.token_file {auth.token_file}: cannot read it: {exc}") from None
        source = f"serve.auth.token_file {auth.token_file}"
    else:
        token = environ.get(auth.token_env, "").strip()
        source = f"environment variable {auth.token_env}"
    if not token:
        return None
    if len(token) < MIN_TOKEN_CHARS or not _TOKEN_CHARS.match(token):
        raise AuthConfigError(f"the token in {source} is unusable: it needs at least {MIN_TOKEN_CHARS} visible "
                              f"ASCII characters and no spaces (e.g. `openssl rand -hex 32`)")
    return token.encode()


def required_token(auth: ServeAuthConfig, listen_host: str | None,
                   environ: Mapping[str, str] = os.environ) -> bytes | None:
    """The token every request must carry, or None when authentication is off."""
    if not auth_is_on(auth, listen_host):
        return None
    token = read_token(auth, environ)
    if token is None:
        why = "serve.auth.mode is on" if auth.mode == "on" else (
            f"Serve listens on {listen_host or 'an unknown address'}, beyond loopback")
        raise AuthConfigError(
            f"the HTTP API needs a bearer token ({why}) and none is configured: set {auth.token_env} in the "
            f"environment of the Ray nodes or serve.auth.token_file (a file holding the token), or set "
            f"serve.auth.mode: off to serve without authentication (only behind a proxy that authenticates)")
    return token


@dataclass(frozen=True)
class EdgeSettings:
    token: bytes | None  # None: authentication off
    max_body_bytes: int
    body_timeout_s: float
    request_timeout_s: float


class _TooLarge(Exception):
    pass


class _ClientGone(Exception):
    pass


class EdgeGuard:
    """ASGI middleware applying `settings()` (None: pass everything through, e.g. before start-up)."""

    def __init__(self, app: Any, settings: Callable[[], EdgeSettings | None]) -> None:
        self.app = app
        self.settings = settings

    async def __call__(self, scope: dict, receive: Receive, send: Send) -> None:
        edge = self.settings()
        if scope["type"] != "http" or edge is None:
            await self.app(scope, receive, send)
            return
        if edge.token is not None and _route(scope) not in OPEN_PATHS and not _authorized(scope, edge.token):
            await reply(send, 401, "missing or invalid bearer token: send 'Authorization: Bearer <token>'",
                        [(b"www-authenticate", b"Bearer")])
            return
        has_body = scope["method"] not in _BODYLESS
        limit = edge.max_body_bytes
        if has_body:
            declared = _header(scope, b"content-length")
            if declared is not None and (not declared.isdigit() or int(declared) > limit):
                await reply(send, 413, f"request body over {limit} bytes")
                return
        started = False

        async def send_noting_start(message: dict[str, Any]) -> None:
            nonlocal started
            started = True
            await send(message)

        # One timer for both phases (a timer costs a few microseconds): the body's deadline,
        # then moved to the answer's once the body is in.
        deadline = asyncio.timeout(edge.body_timeout_s if has_body else edge.request_timeout_s)
        reading = has_body
        try:
            async with deadline:
                if has_body:
                    receive = _replay(await _read_body(receive, limit), receive)
                    deadline.reschedule(asyncio.get_running_loop().time() + edge.request_timeout_s)
                    reading = False
                await self.app(scope, receive, send_noting_start)
        except TimeoutError:
            if not deadline.expired():
                raise  # the app's own TimeoutError: not ours to turn into an answer
            if reading:
                await reply(send, 408, f"request body not received within {edge.body_timeout_s:g} s")
            elif not started:
                await reply(send, 504, f"no answer within {edge.request_timeout_s:g} s")
            # else the answer was cut short; the server closes the connection
        except _TooLarge:
            await reply(send, 413, f"request body over {limit} bytes")
        except _ClientGone:
            pass  # nobody to answer


def _route(scope: dict) -> str:
    path, root = scope["path"], scope.get("root_path", "")
    return path[len(root):] if root and path.startswith(root) else path


def _header(scope: dict, name: bytes) -> bytes | None:
    for key, value in scope["headers"]:
        if key == name:
            return value
    return None


def _authorized(scope: dict, token: bytes) -> bool:
    value = _header(scope, b"authorization")
    if value is None or value[:7].lower() != b"bearer ":
        return False
    return hmac.compare_digest(value[7:].strip(), token)


async def _read_body(receive: Receive, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _ClientGone
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise _TooLarge
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def _replay(body: bytes, receive: Receive) -> Receive:
    """A `receive` that gives the app the body already read, then the connection's own messages."""
    pending = True

    async def replayed() -> dict[str, Any]:
        nonlocal pending
        if pending:
            pending = False
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replayed


async def reply(send: Send, status: int, error: str, headers: list[tuple[bytes, bytes]] | None = None) -> None:
    """A JSON `{"error": ...}` answer, sent straight to ASGI."""
    body = json.dumps({"error": error}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            *(headers or [])]})
    await send({"type": "http.response.body", "body": body})


class TokenBucket:
    """`rate_per_s` operations per second on average, up to `burst` at once; for one event loop."""

    def __init__(self, rate_per_s: float, burst: int, clock: Callable[[], float] = time.monotonic) -> None:
        if rate_per_s <= 0 or burst < 1:
            raise ValueError("rate_per_s must be > 0 and burst >= 1")
        self.rate_per_s = rate_per_s
        self.burst = burst
        self._clock = clock
        self._tokens = float(burst)
        self._at = clock()

    def take(self) -> float:
        """0.0 if the operation may run now (a token is spent), else the seconds until it may."""
        now = self._clock()
        self._tokens = min(float(self.burst), self._tokens + (now - self._at) * self.rate_per_s)
        self._at = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return 0.0
        return (1.0 - self._tokens) / self.rate_per_s
