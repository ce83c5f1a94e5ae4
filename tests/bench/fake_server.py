"""A small fake OpenAI-compatible streaming server for the bench tests.

It streams exactly `max_tokens` content chunks, one every `token_delay_s`, then the finish
chunk, a usage chunk (prompt tokens = words in the prompt) and `[DONE]`. Special model names
trigger failures: `missing` (404), `broken` (error chunk mid-stream), `cut` (no [DONE]),
`no-usage` (no usage chunk); `strict` answers 422 to `ignore_eos` and, as `transformers serve`
does, ends its stream after the usage chunk without `[DONE]`.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from tests.live_server import uvicorn_thread

MODEL = "fake-model"


def _sse(payload: dict[str, Any]) -> str:
    """One SSE event."""
    return f"data: {json.dumps(payload)}\n\n"


def _chunk(body: dict[str, Any], text: str | None, finish: str | None = None) -> dict[str, Any]:
    """A chat or completions chunk carrying `text` (None: role-only / finish-only)."""
    if "messages" in body:
        delta: dict[str, Any] = {"role": "assistant"} if text is None and finish is None else {}
        if text is not None:
            delta["content"] = text
        choice: dict[str, Any] = {"index": 0, "delta": delta, "finish_reason": finish}
        return {"id": "c1", "object": "chat.completion.chunk", "choices": [choice], "usage": None}
    choice = {"index": 0, "text": text or "", "finish_reason": finish}
    return {"id": "c1", "object": "text_completion", "choices": [choice], "usage": None}


def _prompt_words(body: dict[str, Any]) -> int:
    """Prompt length as the fake server counts it: whitespace-separated words."""
    text = body["messages"][0]["content"] if "messages" in body else body["prompt"]
    return len(text.split())


@dataclass
class FakeOpenAI:
    """The fake server's state: what it received and how many requests overlapped."""

    token_delay_s: float = 0.0
    bodies: list[dict[str, Any]] = field(default_factory=list)
    auth_headers: list[str | None] = field(default_factory=list)
    num_in_flight: int = 0
    max_in_flight: int = 0

    def app(self) -> Starlette:
        """The ASGI app serving both endpoints and GET /v1/models."""
        routes = [
            Route("/v1/chat/completions", self.generate, methods=["POST"]),
            Route("/v1/completions", self.generate, methods=["POST"]),
            Route("/v1/models", self.models, methods=["GET"]),
        ]
        return Starlette(routes=routes)

    async def models(self, request: Request) -> Response:
        return JSONResponse({"object": "list", "data": [{"id": MODEL, "object": "model"}]})

    async def generate(self, request: Request) -> Response:
        body = await request.json()
        self.bodies.append(body)
        self.auth_headers.append(request.headers.get("authorization"))
        if body["model"] == "missing":
            return JSONResponse({"error": {"message": "model 'missing' not found"}}, status_code=404)
        if body["model"] == "strict" and "ignore_eos" in body:
            return JSONResponse({"detail": "Unexpected fields in the request: {'ignore_eos'}"}, status_code=422)
        return StreamingResponse(self._events(body), media_type="text/event-stream")

    async def _events(self, body: dict[str, Any]) -> AsyncIterator[str]:
        self.num_in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.num_in_flight)
        try:
            yield ": ping\n\n"
            if "messages" in body:
                yield _sse(_chunk(body, None))
            for i in range(body["max_tokens"]):
                await asyncio.sleep(self.token_delay_s)
                if body["model"] == "broken" and i == 2:
                    yield _sse({"error": {"message": "worker died", "type": "server_error"}})
                    return
                yield _sse(_chunk(body, f" tok{i}"))
            yield _sse(_chunk(body, None, finish="length"))
            if body["model"] == "cut":
                return
            if body["model"] != "no-usage":
                usage = {"prompt_tokens": _prompt_words(body), "completion_tokens": body["max_tokens"]}
                yield _sse({"id": "c1", "choices": [], "usage": usage})
            if body["model"] != "strict":
                yield "data: [DONE]\n\n"
        finally:
            self.num_in_flight -= 1


@contextmanager
def serve_in_thread(app: Starlette) -> Iterator[str]:
    """Run `app` with uvicorn on a free 127.0.0.1 port in a thread; yields the /v1 base URL."""
    with uvicorn_thread(app, lifespan="off", ws="none", http="h11") as port:
        yield f"http://127.0.0.1:{port}/v1"
