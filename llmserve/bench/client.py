"""One streaming request against an OpenAI-compatible endpoint, timed token by token."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx

from llmserve.bench.dataset import BenchPrompt
from llmserve.bench.sse import DONE, SseDecoder

# Error messages are cut to this many characters so reports stay readable.
_MAX_ERROR_CHARS = 300


@dataclass
class RequestResult:
    """What one request produced: outcome, token counts and timings (seconds)."""

    is_success: bool = False
    num_prompt_tokens: int = 0
    num_output_tokens: int = 0
    ttft_s: float | None = None
    """Time from sending to the first non-empty content chunk."""
    itls_s: list[float] = field(default_factory=list)
    """Gaps between consecutive content chunks."""
    latency_s: float = 0.0
    """Time from sending to the end of the stream."""
    error: str | None = None


def build_payload(endpoint: str, model: str, prompt: BenchPrompt, temperature: float,
                  logprobs: int | None = None, ignore_eos: bool = True,
                  json_schema: dict[str, Any] | None = None) -> dict[str, Any]:
    """The JSON body of a streaming request for `prompt`, asking for `logprobs` top alternatives per
    token when set (chat: `logprobs` + `top_logprobs`). With `ignore_eos` (a vLLM extension) every
    answer has exactly the asked length; without it the body holds only OpenAI's own fields, which
    any server takes (some answer 422 to fields they do not know), and lengths come from `usage`."""
    body: dict[str, Any] = {
        "model": model,
        "max_tokens": prompt.num_output_tokens,
        "temperature": temperature,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if ignore_eos:
        body["ignore_eos"] = True
    if endpoint == "chat":
        body["messages"] = [{"role": "user", "content": prompt.text}]
        if logprobs is not None:
            body["logprobs"] = True
            body["top_logprobs"] = logprobs
        if json_schema is not None:
            body["response_format"] = {"type": "json_schema",
                                       "json_schema": {"name": "bench", "schema": json_schema, "strict": True}}
    else:
        body["prompt"] = prompt.text
        if logprobs is not None:
            body["logprobs"] = logprobs
    return body


def chunk_text(chunk: dict[str, Any]) -> str:
    """Generated text in a chat (`delta.content`) or completions (`text`) chunk; '' if none."""
    parts: list[str] = []
    for choice in chunk.get("choices") or []:
        delta = choice.get("delta")
        text = delta.get("content") if isinstance(delta, dict) else choice.get("text")
        if isinstance(text, str):
            parts.append(text)
    return "".join(parts)


def error_message(payload: Any) -> str:
    """A short message from an OpenAI error body (`{"error": {"message": ...}}`) or raw text."""
    if isinstance(payload, dict) and "error" in payload:
        error = payload["error"]
        text = error.get("message", error) if isinstance(error, dict) else error
        return str(text)[:_MAX_ERROR_CHARS]
    return str(payload)[:_MAX_ERROR_CHARS]


class _StreamTracker:
    """Accumulates timings and counts while one response streams in."""

    def __init__(self, num_prompt_tokens_hint: int) -> None:
        self.start_s = time.perf_counter()
        self.result = RequestResult(num_prompt_tokens=num_prompt_tokens_hint)
        self._last_content_s: float | None = None
        self._num_content_chunks = 0
        self._usage: dict[str, Any] | None = None
        self._num_finished_choices = 0

    def on_chunk(self, chunk: dict[str, Any], now_s: float) -> None:
        """Record one parsed chunk received at `now_s`."""
        if "error" in chunk:
            raise _StreamError(error_message(chunk))
        if isinstance(chunk.get("usage"), dict):
            self._usage = chunk["usage"]
        self._num_finished_choices += sum(1 for c in chunk.get("choices") or [] if c.get("finish_reason"))
        if not chunk_text(chunk):
            return
        if self._last_content_s is None:
            self.result.ttft_s = now_s - self.start_s
        else:
            self.result.itls_s.append(now_s - self._last_content_s)
        self._last_content_s = now_s
        self._num_content_chunks += 1

    def finish(self, is_done: bool) -> RequestResult:
        """Close the record. A stream that ended without `[DONE]` counts as cut off unless it had
        finished and sent its usage, the last thing OpenAI streams before `[DONE]` (`transformers
        serve` closes the stream there)."""
        is_done = is_done or (self._num_finished_choices > 0 and self._usage is not None)
        self.result.latency_s = time.perf_counter() - self.start_s
        usage = self._usage or {}
        self.result.num_output_tokens = int(usage.get("completion_tokens", self._num_content_chunks))
        self.result.num_prompt_tokens = int(usage.get("prompt_tokens", self.result.num_prompt_tokens))
        self.result.is_success = is_done
        if not is_done:
            self.result.error = "stream ended without data: [DONE]"
        return self.result

    def fail(self, message: str) -> RequestResult:
        """Close the record as failed with `message`."""
        self.result.latency_s = time.perf_counter() - self.start_s
        self.result.is_success = False
        self.result.error = message[:_MAX_ERROR_CHARS]
        return self.result


class _StreamError(Exception):
    """The server reported an error inside the stream."""


async def _consume(lines: AsyncIterator[str], tracker: _StreamTracker) -> bool:
    """Feed SSE lines to the tracker; True when the stream ended with `[DONE]`."""
    decoder = SseDecoder()
    async for line in lines:
        data = decoder.feed(line)
        if data is None:
            continue
        if data == DONE:
            return True
        tracker.on_chunk(json.loads(data), time.perf_counter())
    tail = decoder.flush()
    return tail == DONE


async def send_request(
    client: httpx.AsyncClient, url: str, payload: dict[str, Any], num_prompt_tokens_hint: int = 0
) -> RequestResult:
    """POST `payload` to `url`, stream the answer and time it. Never raises for request errors."""
    tracker = _StreamTracker(num_prompt_tokens_hint)
    try:
        async with client.stream("POST", url, json=payload) as response:
            if response.status_code != 200:
                body = (await response.aread()).decode("utf-8", "replace")
                return tracker.fail(f"HTTP {response.status_code}: {_body_error(body)}")
            is_done = await _consume(response.aiter_lines(), tracker)
    except _StreamError as exc:
        return tracker.fail(f"stream error: {exc}")
    # One broken request must not end the run: record any other failure and go on.
    except Exception as exc:
        return tracker.fail(f"{type(exc).__name__}: {exc}")
    return tracker.finish(is_done)


def _body_error(body: str) -> str:
    """The error message of a non-200 body, JSON or not."""
    try:
        return error_message(json.loads(body))
    except ValueError:
        return body.strip()[:_MAX_ERROR_CHARS] or "(empty body)"
