"""What an anonymous battle's answer may carry: nothing that tells its model from the other one.

A battle side is answered by the ordinary chat route under its alias, and `ui/delivery.py` passes
the answer through a `BattleAnswer` on its way out. Audited byte by byte, the chat route would tell
the two models apart by:

- `usage`: prompt and completion token counts differ per tokenizer;
- stream chunks, one per token: their boundaries are the tokenizer's, and their number is the token
  count; the text is re-cut here into one chunk per word (or per `MAX_HELD_CHARS` characters of a
  longer run), so the chunks depend on the text alone;
- fields only some models produce: `reasoning_content` (a reasoning parser), `tool_calls` (a tool
  parser), `logprobs` (token strings and bytes); the answer is rebuilt from its content and finish
  reason only, under a fresh id, with the same keys for every model;
- error messages that quote the model: its maximum context ("This model's maximum context length
  is ..."), its vocabulary size (`logit_bias`), its chat template's own errors, a worker that is not
  ready (503 with Retry-After); every failure after the alias resolved is one `GENERIC_ERROR`, the
  same status, headers and body for every model, in a whole answer or as a stream's error event;
- headers: only a fixed set goes out (`content-length` recomputed).

Request fields whose effect depends on the model are refused with a 400 naming them before any
model is involved (`check_battle_request`): token-level fields (`logprobs`, `logit_bias`,
`stop_token_ids`, `ignore_eos`), `n`, tools, response formats, template knobs, and
`stream_options.include_usage`. `max_tokens` is required: an answer without it runs until the
model's context is full, and its length would give the context away.

What is left is what the voter judges: the text of the answers, and their timing, which no body
field carries. The text still says something about the tokenizer: an answer cut by `max_tokens`
(finish reason "length") is as long as that many of the model's tokens make.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
import uuid
from typing import Any

from llmserve.api.json_body import OFF_LOOP_BYTES, parse_json
from llmserve.api.schemas import ChatCompletionRequest
from llmserve.api.streaming import compact_json
from llmserve.errors import InvalidRequestError, error_body

ALIAS_MARK = b"battle-"
"""In the raw body of every request that names a battle alias without escapes."""
GENERIC_STATUS = 400
GENERIC_ERROR = error_body("the answer could not be generated for this prompt; start a new battle",
                           "invalid_request_error", None, "battle_answer_failed")
GENERIC_BODY = json.dumps(GENERIC_ERROR, separators=(",", ":")).encode()

# Request fields a battle answers with; every other field of a chat request is refused when set.
BATTLE_FIELDS = frozenset({"model", "messages", "max_tokens", "max_completion_tokens", "temperature", "top_p",
                           "top_k", "min_p", "presence_penalty", "frequency_penalty", "repetition_penalty", "seed",
                           "stop", "stream", "stream_options", "user"})
# Response headers a battle answer keeps (lower case); the rest (Retry-After, ...) is dropped.
KEPT_HEADERS = frozenset({b"content-type", b"cache-control", b"connection", b"x-accel-buffering"})
MAX_HELD_CHARS = 32
"""A stream holds back at most this many characters of a run without whitespace."""
FINISH_REASONS = ("stop", "length")
_NEXT_WORD = re.compile(r"\s(?=\S)")  # whitespace followed by a word: a piece ends after it


async def read_battle_request(raw: bytes) -> dict[str, Any] | None:
    """The JSON object of a chat request body that may name a battle alias, for `check_battle_request`;
    None for any other body (or one the chat route will refuse itself). Large bodies parse in a thread."""
    if ALIAS_MARK not in raw:
        return None
    try:
        data = await asyncio.to_thread(parse_json, raw) if len(raw) > OFF_LOOP_BYTES else parse_json(raw)
    except InvalidRequestError:
        return None
    return data if isinstance(data, dict) else None


def check_battle_request(data: dict[str, Any] | None) -> None:
    """Refuse (400 naming the field) a chat request for a battle side whose answer would depend on the
    model beyond its text. `data` is `read_battle_request`'s object of a body the chat route accepted."""
    if data is None:  # it names the alias only through JSON escapes: not worth a second parse
        raise InvalidRequestError("write the battle's model name without JSON escapes", param="model")
    for name, spec in ChatCompletionRequest.model_fields.items():
        value = data.get(name)
        if name not in BATTLE_FIELDS and value is not None and value != spec.default:
            raise InvalidRequestError(f"'{name}' is not available in an arena battle: its effect would tell "
                                      "the models apart", param=name, code="unsupported_in_battle")
    options = data.get("stream_options")
    if isinstance(options, dict) and options.get("include_usage"):
        raise InvalidRequestError("a battle answer carries no token counts (they differ per tokenizer): leave "
                                  "stream_options.include_usage out", param="stream_options.include_usage",
                                  code="unsupported_in_battle")
    if data.get("max_tokens") is None and data.get("max_completion_tokens") is None:
        raise InvalidRequestError("a battle answer needs max_tokens: without it the answer runs to the end of "
                                  "the model's context, and its length would tell the models apart",
                                  param="max_tokens", code="unsupported_in_battle")


def battle_headers(headers: list[tuple[bytes, bytes]], body: bytes | None) -> list[tuple[bytes, bytes]]:
    """The fixed subset of a battle answer's headers; `content-length` of `body` when it is whole."""
    kept = [(name, value) for name, value in headers if name.lower() in KEPT_HEADERS]
    return kept + ([(b"content-length", str(len(body)).encode())] if body is not None else [])


def _finish_reason(value: object) -> str | None:
    if value is None:
        return None
    return value if value in FINISH_REASONS else "stop"


class BattleAnswer:
    """Rewrites one battle side's 200 answer (a whole JSON body or an SSE stream) into the fields
    every model shares; `is_failed` once it carried an error."""

    def __init__(self, alias: str) -> None:
        self.alias = alias
        self.answer_id = f"chatcmpl-{uuid.uuid4().hex}"
        self.created = int(time.time())
        self.is_failed = False
        self._pending = b""  # an SSE event not yet complete
        self._held = ""  # streamed text not yet cut at a word boundary

    def whole(self, body: bytes) -> bytes:
        """A non-streamed `chat.completion` rebuilt from its first choice's content and finish reason."""
        data = json.loads(body)
        choice = (data.get("choices") or [{}])[0]
        message = choice.get("message") or {}
        content = message.get("content")
        return _encode({"id": self.answer_id, "object": "chat.completion", "created": self.created,
                        "model": self.alias, "choices": [{
                            "index": 0, "message": {"role": "assistant", "content": content if isinstance(
                                content, str) else None},
                            "logprobs": None, "finish_reason": _finish_reason(choice.get("finish_reason"))}],
                        "system_fingerprint": None})

    def stream(self, data: bytes, is_last: bool) -> bytes:
        """The rewritten SSE bytes for the next piece of the stream (complete events only)."""
        self._pending += data.replace(b"\r\n", b"\n")
        *events, self._pending = self._pending.split(b"\n\n")
        if is_last and self._pending.strip():
            events.append(self._pending)
            self._pending = b""
        out = b"".join(self._event(event) for event in events)
        if is_last and not self.is_failed:  # a stream that ended without [DONE] still shows all its text
            out += self._text_chunks(self._take_held(everything=True))
        return out

    def _event(self, event: bytes) -> bytes:
        if self.is_failed:
            return b"data: [DONE]\n\n" if event.strip() == b"data: [DONE]" else b""
        if event.startswith(b":"):
            return b": ping\n\n"  # a keep-alive comment; sse-starlette's carries a timestamp
        if not event.startswith(b"data:"):
            return b""
        payload = event[5:].strip()
        if payload == b"[DONE]":
            return self._text_chunks(self._take_held(everything=True)) + b"data: [DONE]\n\n"
        chunk = json.loads(payload)
        if "error" in chunk:
            self.is_failed = True
            return _sse(GENERIC_ERROR)
        out = b""
        for choice in chunk.get("choices") or []:
            out += self._choice(choice)
        return out

    def _choice(self, choice: dict[str, Any]) -> bytes:
        delta = choice.get("delta") or {}
        out = b""
        if delta.get("role"):
            out += self._chunk({"role": "assistant", "content": ""}, None)
        if isinstance(delta.get("content"), str):
            self._held += delta["content"]
            out += self._text_chunks(self._take_held(everything=False))
        if choice.get("finish_reason") is not None:
            out += self._text_chunks(self._take_held(everything=True))
            out += self._chunk({}, _finish_reason(choice["finish_reason"]))
        return out

    def _take_held(self, everything: bool) -> list[str]:
        """The held text's complete pieces (all of it at the end), each to be a chunk of its own.

        A piece is a word with the whitespace after it, cut where whitespace meets the next word, or
        `MAX_HELD_CHARS` characters of a longer one: where the cuts fall depends on the text alone,
        not on how the tokenizer split it or on how much of it one engine step brought.
        """
        pieces = []
        while self._held:
            match = _NEXT_WORD.search(self._held, 0, MAX_HELD_CHARS + 1)
            cut = match.end() if match else MAX_HELD_CHARS if len(self._held) >= MAX_HELD_CHARS else 0
            if not cut:
                if not everything:
                    break
                cut = len(self._held)
            pieces.append(self._held[:cut])
            self._held = self._held[cut:]
        return pieces

    def _text_chunks(self, pieces: list[str]) -> bytes:
        return b"".join(self._chunk({"content": piece}, None) for piece in pieces)

    def _chunk(self, delta: dict[str, Any], finish_reason: str | None) -> bytes:
        return _sse({"id": self.answer_id, "object": "chat.completion.chunk", "created": self.created,
                     "model": self.alias, "system_fingerprint": None,
                     "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}]})


def _encode(value: dict[str, Any]) -> bytes:
    return compact_json(value).encode()


def _sse(value: dict[str, Any]) -> bytes:
    return b"data: " + _encode(value) + b"\n\n"
