"""Pure ASGI middleware: API-key authentication and the request-body size limit."""

from __future__ import annotations

import hmac
import json
from collections.abc import Collection

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from llmserve.errors import AuthenticationError, LLMServeError, RequestTooLargeError, render_error


async def send_error(send: Send, exc: LLMServeError) -> None:
    """Answer with an OpenAI-shaped error body."""
    body = json.dumps(render_error(exc)).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
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
        headers = dict(scope["headers"])
        scheme, _, token = headers.get(b"authorization", b"").decode("latin-1").partition(" ")
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
