"""Counting tokens with the served model's own tokenizer.

- `POST /v1/tokenize` (vLLM's shape): `{model, prompt}` or `{model, messages}`, optional
  `add_special_tokens` (default true for a prompt, false for messages, whose chat template adds
  its own) -> `{tokens, count, max_model_len}`.
- `POST /v1/detokenize`: `{model, tokens}` -> `{prompt}`.
- `POST /api/v1/token_check` (FastChat's shape): `{prompts: [{model, prompt, max_tokens}]}` ->
  `{prompts: [{fits, tokenCount, contextLength}]}`; a prompt fits when its tokens plus
  `max_tokens` fit the context.

Large requests are tokenized, and their answers encoded, in a worker thread (see
`streaming.off_loop_if_large`): a 4 MB prompt takes seconds, and other streams keep flowing. That
thread never holds the GIL long: the tokenizer runs in Rust without it, answers are encoded and big
lists freed a slice at a time (api/big_json.py), and token_check items are validated a slice at a
time. What is left: building a 4 MB prompt's 1.8M-id list from the Rust encoding (one call, ~30 ms)
and passing 1.8M ids to the Rust decoder (~20 ms).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated, Any, NamedTuple

from pydantic import Field, PlainValidator, ValidationError
from starlette.requests import Request
from starlette.responses import Response

from llmserve.api.big_json import (
    INTS_PER_SLICE,
    OBJECTS_PER_SLICE,
    array_pieces,
    pause,
    release,
    string_pieces,
)
from llmserve.api.chat import template_messages
from llmserve.api.json_body import read_body
from llmserve.api.schemas import INT64_MAX, ChatMessage, NonNegativeInt64, StrictRequest, TokenIds
from llmserve.api.state import server_state
from llmserve.api.streaming import off_loop_if_large
from llmserve.errors import InvalidRequestError
from llmserve.templates import count_tokens, decode_ids, encode_text, render_chat_prompt
from llmserve.worker import Worker


class TokenizeRequest(StrictRequest):
    model: str = Field(min_length=1)
    prompt: str | None = None
    messages: list[ChatMessage] | None = Field(default=None, min_length=1)
    add_special_tokens: bool | None = None


class DetokenizeRequest(StrictRequest):
    model: str = Field(min_length=1)
    tokens: TokenIds


class TokenCheckItem(StrictRequest):
    model: str = Field(min_length=1)
    prompt: str
    max_tokens: NonNegativeInt64 = 0


class TokenChecks(NamedTuple):
    """A token_check request's items column by column: 100k items as three lists rather than 100k
    objects, which the garbage collector traverses (a full collection held the GIL for 0.3-0.7 s)."""

    models: list[str]
    prompts: list[str]
    max_tokens: list[int]


def _token_checks(value: object) -> TokenChecks:
    """The items, each validated as `TokenCheckItem` would validate it (by a Python loop, which lets
    the GIL go: pydantic validates a list in one call that holds it); errors are pydantic's own, at
    the item's place (`prompts.7.prompt`). The input list is emptied a slice at a time (freeing 100k
    dicts in one go holds the GIL for tens of milliseconds)."""
    if not isinstance(value, list) or not value:
        raise ValueError("expected a non-empty list of {model, prompt, max_tokens} objects")
    checks = TokenChecks([], [], [])
    for start in range(0, len(value), OBJECTS_PER_SLICE):
        if start:
            pause()
        for index, item in enumerate(value[start:start + OBJECTS_PER_SLICE], start):
            if not _is_plain_item(item):
                item = _validated_item(index, item)
            checks.models.append(item["model"])
            checks.prompts.append(item["prompt"])
            checks.max_tokens.append(item.get("max_tokens", 0))
    release(value)
    return checks


def _is_plain_item(item: object) -> bool:
    """An item `TokenCheckItem` accepts as it is (anything else goes through pydantic)."""
    if type(item) is not dict:
        return False
    model, prompt, max_tokens = item.get("model"), item.get("prompt"), item.get("max_tokens", 0)
    return type(model) is str and model != "" and type(prompt) is str and type(max_tokens) is int \
        and 0 <= max_tokens <= INT64_MAX


def _validated_item(index: int, item: object) -> dict[str, Any]:
    try:
        return TokenCheckItem.model_validate(item).model_dump()
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        detail = {"type": first["type"], "loc": (index, *first["loc"]), "input": first["input"],
                  **({"ctx": first["ctx"]} if "ctx" in first else {})}
        raise ValidationError.from_exception_data(exc.title, [detail]) from None  # type: ignore[list-item]


class TokenCheckRequest(StrictRequest):
    prompts: Annotated[TokenChecks, PlainValidator(_token_checks)]


async def tokenize(request: Request) -> Response:
    state = server_state(request)
    body = await read_body(request, TokenizeRequest)
    if (body.prompt is None) == (body.messages is None):
        raise InvalidRequestError("give exactly one of 'prompt' and 'messages'", param="prompt")
    worker = state.choose_worker(body.model, task=None)
    if body.messages is not None and worker.task == "embed":
        raise InvalidRequestError(f"The model '{body.model}' is an embedding model and has no chat "
                                  "template; send 'prompt'", param="messages")
    return _json(await off_loop_if_large(request, _tokenize, worker.tokenizer, body, worker.max_model_len))


def _tokenize(tokenizer: Any, body: TokenizeRequest, max_model_len: int) -> bytes:
    if body.messages is not None:
        text = render_chat_prompt(tokenizer, template_messages(body.messages))
        add_special = bool(body.add_special_tokens)
    else:
        assert body.prompt is not None
        text = body.prompt
        add_special = body.add_special_tokens is not False
    tokens = encode_text(tokenizer, text, add_special)
    head = f'{{"count":{len(tokens)},"max_model_len":{max_model_len},"tokens":'.encode()
    answer = b"".join([head, *array_pieces(tokens), b"}"])
    release(tokens)
    return answer


async def detokenize(request: Request) -> Response:
    state = server_state(request)
    body = await read_body(request, DetokenizeRequest)
    worker = state.choose_worker(body.model, task=None)
    vocab_size = int(getattr(worker.engine, "vocab_size", 0))
    return _json(await off_loop_if_large(request, _detokenize, worker.tokenizer, body.tokens, vocab_size))


def _detokenize(tokenizer: Any, tokens: list[int], vocab_size: int) -> bytes:
    """The text of `tokens`; the list is emptied (freed here in a worker thread, in pieces, not where
    the request ends on the event loop)."""
    if any(value >= vocab_size for value in _slice_maxima(tokens)):
        release(tokens)
        raise InvalidRequestError(f"token ids must be in [0, {vocab_size})", param="tokens")
    text = decode_ids(tokenizer, tokens)
    release(tokens)
    return b"".join([b'{"prompt":', *string_pieces(text), b"}"])


def _slice_maxima(values: list[int]) -> Iterator[int]:
    """The maximum of each slice of `values` (ids are non-negative already: the schema checks them)."""
    for start in range(0, len(values), INTS_PER_SLICE):
        if start:
            pause()
        yield max(values[start:start + INTS_PER_SLICE])


async def token_check(request: Request) -> Response:
    state = server_state(request)
    body = await read_body(request, TokenCheckRequest)
    models = await off_loop_if_large(request, _distinct, body.prompts.models)
    workers = {model: state.choose_worker(model, task=None) for model in models}
    return _json(await off_loop_if_large(request, _token_check, body.prompts, workers))


def _distinct(values: list[str]) -> list[str]:
    return list(dict.fromkeys(values))


def _token_check(checks: TokenChecks, workers: dict[str, Worker]) -> bytes:
    """Each model's prompts counted in batches (Rust calls with the GIL released); the request's
    columns are emptied here, in pieces (see `_detokenize`)."""
    counts: list[int] = [0] * len(checks.prompts)
    for model, worker in workers.items():
        indices = [i for i, name in enumerate(checks.models) if name == model]
        for i, count in zip(indices, count_tokens(worker.tokenizer, [checks.prompts[i] for i in indices]), strict=True):
            counts[i] = count
    context = [workers[model].max_model_len for model in checks.models]
    answer = b"".join([b'{"prompts":', *_check_pieces(counts, checks.max_tokens, context), b"}"])
    for column in (*checks, counts, context):
        release(column)
    return answer


def _check_pieces(counts: list[int], max_tokens: list[int], context: list[int]) -> list[bytes]:
    """The answer's JSON array, written as text a slice at a time (100k dicts would be 100k objects
    for the garbage collector to traverse)."""
    pieces = [b"["]
    for start in range(0, len(counts), OBJECTS_PER_SLICE):
        if start:
            pieces.append(b",")
            pause()
        end = start + OBJECTS_PER_SLICE
        pieces.append(",".join([
            f'{{"fits":{"true" if count + extra <= length else "false"},"tokenCount":{count},"contextLength":{length}}}'
            for count, extra, length in zip(counts[start:end], max_tokens[start:end], context[start:end], strict=True)
        ]).encode())
    pieces.append(b"]")
    return pieces


def _json(body: bytes) -> Response:
    return Response(body, media_type="application/json")
