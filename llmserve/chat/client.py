"""A small synchronous client of an OpenAI-compatible server: list models, stream a chat answer.

Shared by `llmserve chat --base-url` and `llmserve test-message`. Every failure becomes a
`ChatError` with a one-line message (server down, bad key, unknown model, error mid-stream);
a 400 whose code is `context_length_exceeded` becomes `ContextTooLongError`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import httpx

from llmserve.bench.sse import DONE, SseDecoder
from llmserve.chat.backends import ChatError, ContextTooLongError, Message
from llmserve.tls import client_verify

# Seconds to wait for a connection, and between two chunks of an answer.
_CONNECT_TIMEOUT_S = 10.0
_READ_TIMEOUT_S = 600.0
_MAX_ERROR_CHARS = 300


class ChatStream:
    """One streaming chat completion: iterate for text deltas; counts and timings fill in as it goes."""

    def __init__(self, response: httpx.Response, started_s: float) -> None:
        self._response = response
        self.started_s = started_s
        self.first_token_s: float | None = None
        self.finished_s: float | None = None
        self.num_chunks = 0
        self.num_completion_tokens: int | None = None
        self.finish_reason: str | None = None
        self.is_closed = False

    @property
    def num_output_tokens(self) -> int:
        """Tokens generated: the server's usage count, else the number of content chunks."""
        return self.num_completion_tokens if self.num_completion_tokens is not None else self.num_chunks

    def __iter__(self) -> Iterator[str]:
        try:
            yield from self._deltas()
        except httpx.HTTPError as exc:
            if not self.is_closed:
                raise ChatError(f"the stream broke off: {describe_http_error(exc)}") from None
        finally:
            self.close()

    def close(self) -> None:
        """Stop reading; the server sees the disconnect and aborts the request."""
        if self.finished_s is None:
            self.finished_s = time.perf_counter()
        if not self.is_closed:
            self.is_closed = True
            self._response.close()

    def _deltas(self) -> Iterator[str]:
        decoder = SseDecoder()
        for line in self._response.iter_lines():
            data = decoder.feed(line)
            if data is None:
                continue
            if data == DONE:
                break
            text = self._consume(_parse_chunk(data))
            if text:
                if self.first_token_s is None:
                    self.first_token_s = time.perf_counter()
                self.num_chunks += 1
                yield text
            if self.is_closed:
                return

    def _consume(self, chunk: dict[str, Any]) -> str:
        """Record usage and finish reason; the content delta of this chunk ('' if none)."""
        if isinstance(chunk.get("error"), dict):
            raise ChatError(f"server error: {_error_message(chunk)}")
        usage = chunk.get("usage")
        if isinstance(usage, dict) and isinstance(usage.get("completion_tokens"), int):
            self.num_completion_tokens = usage["completion_tokens"]
        parts = []
        for choice in chunk.get("choices") or []:
            if choice.get("finish_reason"):
                self.finish_reason = choice["finish_reason"]
            delta = choice.get("delta") or {}
            if isinstance(delta.get("content"), str):
                parts.append(delta["content"])
        return "".join(parts)


class OpenAIClient:
    """Talks to `base_url` (which includes `/v1`), optionally with a bearer key; an https URL is
    verified against `ca_cert` when given, else the system's CAs or `SSL_CERT_FILE`."""

    def __init__(self, base_url: str, api_key: str | None = None,
                 transport: httpx.BaseTransport | None = None, ca_cert: str | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        timeout = httpx.Timeout(_READ_TIMEOUT_S, connect=_CONNECT_TIMEOUT_S)
        try:
            verify = client_verify(ca_cert)
        except ValueError as exc:
            raise ChatError(str(exc)) from None
        self._http = httpx.Client(headers=headers, timeout=timeout, transport=transport, verify=verify)

    def list_models(self) -> list[str]:
        """Ids of the served models (GET /models)."""
        response = self._send("GET", "/models")
        try:
            data = response.json()["data"]
            return [str(card["id"]) for card in data]
        except (ValueError, KeyError, TypeError):
            raise ChatError(f"{self.base_url}/models did not answer with a model list") from None

    def stream_chat(self, model: str, messages: list[Message], **fields: Any) -> ChatStream:
        """Send a streaming chat completion; raises now if the server refuses it."""
        body = {"model": model, "messages": messages, "stream": True,
                "stream_options": {"include_usage": True}, **fields}
        started_s = time.perf_counter()
        return ChatStream(self._send("POST", "/chat/completions", body=body, stream=True), started_s)

    def close(self) -> None:
        self._http.close()

    def _send(self, method: str, path: str, *, body: Any = None, stream: bool = False) -> httpx.Response:
        request = self._http.build_request(method, f"{self.base_url}{path}", json=body)
        try:
            response = self._http.send(request, stream=stream)
        except httpx.HTTPError as exc:
            raise ChatError(f"cannot reach {self.base_url}: {describe_http_error(exc)}") from None
        if response.status_code != 200:
            response.read()
            response.close()
            raise _status_error(response)
        return response


def describe_http_error(exc: httpx.HTTPError) -> str:
    """A short reason for a transport failure ("connection refused", "timed out", ...)."""
    if isinstance(exc, httpx.ConnectError):
        text = str(exc).lower()
        if "certificate" in text:
            return f"TLS certificate not trusted ({str(exc)[:150]}); pass the server's CA with --ca-cert"
        return "connection refused" if "refused" in text else f"cannot connect ({str(exc)[:100]})"
    if isinstance(exc, httpx.TimeoutException):
        return "timed out"
    return f"{type(exc).__name__}: {str(exc)[:_MAX_ERROR_CHARS]}"


def _status_error(response: httpx.Response) -> ChatError:
    try:
        body = response.json()
    except ValueError:
        body = {}
    message = _error_message(body) if isinstance(body, dict) else ""
    message = message or response.text[:_MAX_ERROR_CHARS].strip() or response.reason_phrase
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict) and error.get("code") == "context_length_exceeded":
        return ContextTooLongError(message)
    return ChatError(f"HTTP {response.status_code}: {message}")


def _error_message(body: dict[str, Any]) -> str:
    error = body.get("error")
    if isinstance(error, dict):
        return str(error.get("message", ""))[:_MAX_ERROR_CHARS]
    return str(error or "")[:_MAX_ERROR_CHARS]


def _parse_chunk(data: str) -> dict[str, Any]:
    try:
        chunk = json.loads(data)
    except ValueError:
        raise ChatError(f"the server sent a chunk that is not JSON: {data[:80]!r}") from None
    if not isinstance(chunk, dict):
        raise ChatError(f"the server sent an unexpected chunk: {data[:80]!r}")
    return chunk
