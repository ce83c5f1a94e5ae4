"""Pure ASGI middleware: API-key authentication, the request-body size limit, security headers."""

from __future__ import annotations

import hmac
import json
from collections.abc import Collection, Mapping

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from llmserve.errors import (
    AuthenticationError,
    InvalidRequestError,
    LLMServeError,
    RequestTooLargeError,
    render_error,
)


async def send_error(send: Send, exc: LLMServeError) -> None:
    """Answer with an OpenAI-shaped error body."""
    body = json.dumps(render_error(exc)).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
               (b"x-content-type-options", b"nosniff")]
    headers += [(k.lower().encode(), v.encode()) for k, v in exc.headers().items()]
    await send({"type": "http.response.start", "status": exc.status_code, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def key_matches(presented: str, keys: Collection[str]) -> bool:
    """Constant-time comparison against every configured key (no early exit on a match)."""
    given = presented.encode()
    matched = False
    for key in keys:
        matched |= hmac.compare_digest(given, key.encode())
    return matched


class APIKeyMiddleware:
    """Requires `Authorization: Bearer <key>` on every HTTP route except the open ones."""

    def __init__(self, app: ASGIApp, keys: Collection[str], open_paths: Collection[str],
                 open_prefixes: Collection[str] = ()) -> None:
        self.app = app
        self.keys = tuple(keys)
        self.open_paths = frozenset(open_paths)
        self.open_prefixes = tuple(open_prefixes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.keys or self._is_open(scope["path"]):
            await self.app(scope, receive, send)
            return
        presented = [value for name, value in scope["headers"] if name == b"authorization"]
        if len(presented) > 1:  # which one would count is ambiguous between proxies and servers
            await send_error(send, InvalidRequestError("send exactly one Authorization header, got "
                                                       f"{len(presented)}"))
            return
        scheme, _, token = (presented[0] if presented else b"").decode("latin-1").partition(" ")
        if scheme.lower() != "bearer" or not token:
            await send_error(send, AuthenticationError("Missing API key: send 'Authorization: Bearer <key>'"))
            return
        if not key_matches(token.strip(), self.keys):
            await send_error(send, AuthenticationError("Incorrect API key provided"))
            return
        await self.app(scope, receive, send)

    def _is_open(self, path: str) -> bool:
        return path in self.open_paths or (bool(self.open_prefixes) and path.startswith(self.open_prefixes))


class BodySizeLimitMiddleware:
    """Rejects bodies over `max_bytes` with 413, by Content-Length or while streaming in."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        too_large = RequestTooLargeError(f"request body exceeds {self.max_bytes} bytes")
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            await send_error(send, too_large)
            return
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise _BodyTooLarge(too_large.message)
            return message

        # `send` is passed through untouched: it is on the per-token path of every stream. A body
        # that grows too large is read before any response starts, so the app's error handler
        # renders the 413 itself.
        await self.app(scope, limited_receive, send)


class _BodyTooLarge(RequestTooLargeError):
    """Raised from `receive()`; the app's error handler renders it as a 413."""


class SecurityHeadersMiddleware:
    """Adds headers to every response that lacks them: `X-Content-Type-Options: nosniff` everywhere
    (JSON and scripts are never sniffed as HTML), and more under path prefixes (the UI's static
    files get its pages' Content-Security-Policy)."""

    def __init__(self, app: ASGIApp, headers: Mapping[str, str],
                 prefix_headers: Mapping[str, Mapping[str, str]] | None = None) -> None:
        self.app = app
        self.headers = _encoded(headers)
        self.prefix_headers = {prefix: _encoded({**headers, **extra})
                               for prefix, extra in (prefix_headers or {}).items()}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        extra = next((h for prefix, h in self.prefix_headers.items() if path.startswith(prefix)), self.headers)

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                present = {name.lower() for name, _ in message.get("headers", ())}
                missing = [(name, value) for name, value in extra if name not in present]
                if missing:
                    message["headers"] = [*message.get("headers", ()), *missing]
            await send(message)

        await self.app(scope, receive, send_with_headers)


def _encoded(headers: Mapping[str, str]) -> list[tuple[bytes, bytes]]:
    return [(name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in headers.items()]
