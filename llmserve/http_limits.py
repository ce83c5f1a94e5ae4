"""HTTP/1.1 limits production servers have, on uvicorn's httptools protocol.

uvicorn (0.55) buffers a request's line and header block without bound and waits for them, and
for a body, as long as a client likes. `LimitedHttpToolsProtocol` is its httptools protocol with:

- the request line capped at `max_request_line_bytes` (414), the header block at
  `max_header_bytes` and `max_headers` fields (431), measured while the bytes arrive, so a
  connection never holds more than the limit plus one socket read (uvicorn reads up to 256 KiB);
- `header_timeout_s` from the connection's start (or the first byte of a keep-alive request) to
  the end of the header block, and `body_timeout_s` from there to the end of the body (408);
- at most `max_connections` open connections: one more is answered 503 on its first request;
- every refusal an OpenAI-shaped JSON error with `Connection: close`, then the connection closed.

Idle keep-alive connections close after `keep_alive_timeout_s` (uvicorn's own timer).
`uvicorn_options(server)` gives the uvicorn.Config arguments that install all of it.
"""

from __future__ import annotations

import asyncio
import http
import json
import logging
from dataclasses import dataclass
from typing import Any, ClassVar

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol  # httptools is a dependency

from llmserve.config import ServerConfig
from llmserve.errors import error_body

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class HTTPLimits:
    """The `[server]` limits the protocol enforces."""

    max_request_line_bytes: int
    max_header_bytes: int
    max_headers: int
    header_timeout_s: float
    body_timeout_s: float
    max_connections: int

    @classmethod
    def from_config(cls, server: ServerConfig) -> HTTPLimits:
        return cls(server.max_request_line_bytes, server.max_header_bytes, server.max_headers,
                   server.header_timeout_s, server.body_timeout_s, server.max_connections)


def error_response(status: int, message: str, extra_headers: tuple[tuple[bytes, bytes], ...] = ()) -> bytes:
    """A whole HTTP/1.1 response with an OpenAI-shaped error body that closes the connection."""
    error_type = "service_unavailable" if status == 503 else "invalid_request_error"
    body = json.dumps(error_body(message, error_type)).encode()
    head = [f"HTTP/1.1 {status} {http.HTTPStatus(status).phrase}".encode(), b"content-type: application/json",
            b"content-length: " + str(len(body)).encode(), b"x-content-type-options: nosniff",
            b"connection: close", *(name + b": " + value for name, value in extra_headers)]
    return b"\r\n".join(head) + b"\r\n\r\n" + body


class _LimitExceeded(Exception):
    """Raised from a parser callback; `send_400_response` answers with this status instead."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class LimitedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with size limits, timeouts and a connection cap (module docstring)."""

    limits: ClassVar[HTTPLimits]  # set by `protocol_class`

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head_timer: asyncio.TimerHandle | None = None
        self._body_timer: asyncio.TimerHandle | None = None
        self._in_head = True  # reading a request line or header block (true from the connection's start)
        self._head_bytes = 0
        self._num_headers = 0
        self._header_bytes = 0
        self._limit_hit: _LimitExceeded | None = None
        self._is_answered = False

    # ---- connection ----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.limits.max_connections:
            self.app = self._refuse  # answered 503 on its first request, then closed
        self._head_timer = self.loop.call_later(self.limits.header_timeout_s, self._on_head_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timers()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._is_answered:
            return
        super().data_received(data)
        if self._in_head and not self._is_answered and self.parser is not None:
            # A line or header still incomplete sits in the parser's buffers, out of the callbacks'
            # sight: bound it by what has arrived since the request began.
            self._head_bytes += len(data)
            limit = self.limits.max_request_line_bytes + self.limits.max_header_bytes
            if self._head_bytes > limit:
                self._answer(431, f"the request line and headers exceed {limit} bytes")

    def send_400_response(self, msg: str) -> None:
        """Called by uvicorn on any parser error; a limit hit in a callback is answered as itself."""
        hit, self._limit_hit = self._limit_hit, None
        if hit is not None:
            self._answer(hit.status, hit.message)
        else:
            self._answer(400, "the request is not valid HTTP/1.1")

    # ---- parser callbacks ----------------------------------------------------------------

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_head, self._head_bytes, self._num_headers, self._header_bytes = True, 0, 0, 0
        if self._head_timer is None:
            self._head_timer = self.loop.call_later(self.limits.header_timeout_s, self._on_head_timeout)

    def on_url(self, url: bytes) -> None:
        super().on_url(url)
        if len(self.url) > self.limits.max_request_line_bytes:
            self._fail(414, f"the request target exceeds {self.limits.max_request_line_bytes} bytes")

    def on_header(self, name: bytes, value: bytes) -> None:
        self._num_headers += 1
        self._header_bytes += len(name) + len(value) + 4  # "name: value\r\n"
        if self._num_headers > self.limits.max_headers:
            self._fail(431, f"the request has more than {self.limits.max_headers} header fields")
        if self._header_bytes > self.limits.max_header_bytes:
            self._fail(431, f"the request headers exceed {self.limits.max_header_bytes} bytes")
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._cancel_timer("_head_timer")
        self._body_timer = self.loop.call_later(self.limits.body_timeout_s, self._on_body_timeout)
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._cancel_timer("_body_timer")
        super().on_message_complete()

    # ---- answers -------------------------------------------------------------------------

    def _fail(self, status: int, message: str) -> None:
        self._limit_hit = _LimitExceeded(status, message)
        raise self._limit_hit

    def _on_head_timeout(self) -> None:
        self._head_timer = None
        self._answer(408, f"the request headers did not arrive within {self.limits.header_timeout_s:g} s")

    def _on_body_timeout(self) -> None:
        self._body_timer = None
        self._answer(408, f"the request body did not arrive within {self.limits.body_timeout_s:g} s")

    def _answer(self, status: int, message: str) -> None:
        """Send an error (unless a response has begun on this connection) and close it."""
        if self._is_answered or self.transport.is_closing():
            return
        self._is_answered = True
        self._cancel_timers()
        cycle = self.cycle
        if cycle is None or not cycle.response_started:
            if cycle is not None:
                cycle.disconnected = True  # the app's receive() ends; nothing it sends goes out
                cycle.message_event.set()
            self.transport.write(error_response(status, message))
        log.debug("closed a connection from %s: %d %s", _peer(self.client), status, message)
        self.transport.close()

    async def _refuse(self, scope: Any, receive: Any, send: Any) -> None:
        message = (f"the server has {self.limits.max_connections} connections open, its limit; "
                   "retry shortly")
        body = json.dumps(error_body(message, "service_unavailable")).encode()
        await send({"type": "http.response.start", "status": 503, "headers": [
            (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
            (b"retry-after", b"1"), (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})

    def _cancel_timers(self) -> None:
        self._cancel_timer("_head_timer")
        self._cancel_timer("_body_timer")

    def _cancel_timer(self, name: str) -> None:
        timer = getattr(self, name)
        if timer is not None:
            timer.cancel()
            setattr(self, name, None)


def _peer(client: tuple[str, int] | None) -> str:
    return f"{client[0]}:{client[1]}" if client else "?"


def protocol_class(limits: HTTPLimits) -> type[asyncio.Protocol]:
    """The protocol class for uvicorn's `http=` argument, bound to these limits."""
    return type("LimitedHttpToolsProtocol", (LimitedHttpToolsProtocol,), {"limits": limits})


def uvicorn_options(server: ServerConfig) -> dict[str, Any]:
    """uvicorn.Config keyword arguments enforcing `[server]`'s HTTP limits."""
    return {"http": protocol_class(HTTPLimits.from_config(server)), "timeout_keep_alive": server.keep_alive_timeout_s}
