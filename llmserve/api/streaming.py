"""Engine outputs -> OpenAI results: collecting whole answers, SSE streams, client disconnects.

A stream always ends with `data: [DONE]`; an engine error mid-stream becomes an `error`
event first (the SDK raises it). A client that goes away cancels the handler, and leaving
`Worker.generate` aborts the request, which frees its cache within one step.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from sse_starlette.sse import EventSourceResponse
from starlette.requests import Request
from starlette.responses import Response

from llmserve.api.json_body import OFF_LOOP_BYTES
from llmserve.engine.engine import SequenceOutput
from llmserve.engine.request import SamplingParams, TokenLogprob
from llmserve.errors import EngineError, LLMServeError, error_body, render_error
from llmserve.request_stream import RequestStream
from llmserve.worker import Worker

_T = TypeVar("_T")
log = logging.getLogger(__name__)


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def now_s() -> int:
    return int(time.time())


# Characters that str.splitlines() breaks lines at and that JSON leaves as they are (it escapes the
# other ones, all below U+0020): a client reading an SSE stream by lines that way (httpx's
# `aiter_lines`, and so many SDKs) would cut a chunk whose text holds one.
_LINE_BREAKS = str.maketrans({"\x85": "\\u0085", "\u2028": "\\u2028", "\u2029": "\\u2029"})


def escape_line_breaks(json_text: str) -> str:
    """JSON text with U+0085, U+2028 and U+2029 written as escapes (the same JSON value)."""
    if "\x85" in json_text or "\u2028" in json_text or "\u2029" in json_text:
        return json_text.translate(_LINE_BREAKS)
    return json_text


def compact_json(value: Any) -> str:
    """The value as compact JSON for an SSE event: UTF-8 kept, line separators escaped."""
    return escape_line_breaks(json.dumps(value, ensure_ascii=False, separators=(",", ":")))


def sse_event(data: dict) -> bytes:
    """One SSE event of a JSON object."""
    return b"data: " + compact_json(data).encode() + b"\n\n"


class ChunkFormat:
    """Builds the SSE events of one stream: same id, object and created on every chunk; `usage` is
    present (null until the final usage chunk) only when the client asked for it.

    `text_field` names where a choice's new text goes ("text", or "delta.content" for chat). A chunk
    that only carries new text (and its logprobs), most of a stream, is filled into a template made
    once per stream (its bytes equal `sse_event` of the same chunk) instead of encoding the whole
    object per token.
    """

    def __init__(self, chunk_id: str, object: str, model: str, include_usage: bool, text_field: str) -> None:
        self.chunk_id = chunk_id
        self.object = object
        self.model = model
        self.include_usage = include_usage
        self.created = int(time.time())
        self._text_path = text_field.split(".")
        marker = "\x00"
        sample = self._text_choice(0, marker)
        head, _, tail = compact_json(self._object([sample])).partition(compact_json(sample))
        choice_head, _, choice_tail = compact_json(sample).partition(compact_json(marker))
        index_key = '{"index":0,'
        assert choice_head.startswith(index_key)
        self._head = "data: " + head + '{"index":'
        self._middle = "," + choice_head[len(index_key):]
        before, null_logprobs, after = choice_tail.partition('"logprobs":null')
        assert null_logprobs
        self._before_logprobs = before + '"logprobs":'
        self._after_logprobs = after + tail + "\n\n"

    def _object(self, choices: list[dict], usage: dict | None = None) -> dict:
        out: dict[str, Any] = {"id": self.chunk_id, "object": self.object, "created": self.created,
                               "model": self.model, "system_fingerprint": None, "choices": choices}
        if self.include_usage:
            out["usage"] = usage
        return out

    def _text_choice(self, index: int, text: str) -> dict:
        value: Any = text
        for key in reversed(self._text_path):
            value = {key: value}
        return {"index": index, **value, "logprobs": None, "finish_reason": None}

    def __call__(self, choices: list[dict], usage: dict | None = None) -> bytes:
        """The SSE event of a chunk with these choices."""
        return sse_event(self._object(choices, usage))

    def text(self, index: int, text: str, logprobs: dict | None = None) -> bytes:
        """The SSE event of a chunk whose one choice brings new text (and its logprobs), nothing else."""
        return (self._head + str(index) + self._middle + compact_json(text) + self._before_logprobs
                + ("null" if logprobs is None else compact_json(logprobs)) + self._after_logprobs).encode()


@dataclass
class ChoiceResult:
    """Everything one choice produced."""

    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[TokenLogprob] = field(default_factory=list)
    finish_reason: str | None = None
    num_prompt_tokens: int = 0
    num_output_tokens: int = 0
    prompt_logprobs: list[TokenLogprob | None] | None = None


def raise_if_error(output: SequenceOutput) -> None:
    if output.error is not None:
        raise EngineError(output.error)


async def collect(stream: RequestStream) -> list[ChoiceResult]:
    """Wait for every choice of a request to finish."""
    results = [ChoiceResult() for _ in stream.seq_ids]
    async for index, output in stream:
        raise_if_error(output)
        result = results[index]
        result.text += output.text
        result.token_ids += output.token_ids
        result.logprobs += output.logprobs
        result.finish_reason = output.finish_reason
        result.num_prompt_tokens = output.num_prompt_tokens
        result.num_output_tokens = output.num_output_tokens
        if output.prompt_logprobs is not None:
            result.prompt_logprobs = output.prompt_logprobs
    return results


async def until_disconnect(request: Request, work: Awaitable[_T]) -> _T | None:
    """Run `work` unless the client disconnects first (then cancel it and return None)."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_wait_disconnect(request))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
        if not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    return None if task.cancelled() else task.result()


async def _wait_disconnect(request: Request) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


def sse_response(events: AsyncIterator[bytes]) -> EventSourceResponse:
    """An SSE response of encoded events, an error event if one is raised, then `[DONE]`."""

    async def framed() -> AsyncIterator[bytes]:
        try:
            async for event in events:
                yield event
        except LLMServeError as exc:
            yield sse_event(render_error(exc))
        except Exception:
            log.exception("stream failed")
            yield sse_event(error_body("internal server error", "internal_error"))
        yield b"data: [DONE]\n\n"

    return _EventStream(framed(), ping=15, sep="\n", headers={"Cache-Control": "no-cache"})


class _EventStream(EventSourceResponse):
    """sse-starlette's response without a cancel scope around every send when no send timeout is
    set: the scope costs more than the write of a token's chunk on this hot path."""

    async def _send_with_timeout(self, send: Any, message: Any) -> None:
        if self.send_timeout is None:
            await send(message)
        else:
            await super()._send_with_timeout(send, message)


def submit(worker: Worker, prompts: list[tuple[list[int], SamplingParams]], id_prefix: str,
           log_prompt: bool) -> RequestStream:
    """Queue a request on its worker under a fresh id (its prompt logged only when configured)."""
    stream = worker.submit(prompts, new_id(id_prefix))
    if log_prompt:
        log.info("request %s prompt: %r", stream.request_id, worker.tokenizer.decode(prompts[0][0]))
    return stream


async def respond(request: Request, worker: Worker, stream: RequestStream,
                  chunks: Callable[[], AsyncIterator[bytes]] | None,
                  whole: Callable[[], Awaitable[Response]]) -> Response:
    """SSE from `chunks` when the client streams, else the `whole` answer unless the client leaves
    first; either way the request is aborted if it is left unfinished."""
    if chunks is not None:
        return sse_response(chunks())  # the chunk generator releases the stream itself
    try:
        response = await until_disconnect(request, whole())
    finally:
        worker.release(stream)
    return response if response is not None else Response(status_code=499)


async def off_loop_if_large(request: Request, fn: Callable[..., _T], *args: Any) -> _T:
    """`fn(*args)`, in a thread when the request body is large (over the size whose JSON is parsed
    off the loop too): a huge prompt is rendered and encoded without holding up every other stream."""
    if len(await request.body()) > OFF_LOOP_BYTES:
        return await asyncio.to_thread(fn, *args)
    return fn(*args)
