"""Counting tokens with the served model's own tokenizer.

- `POST /v1/tokenize` (vLLM's shape): `{model, prompt}` or `{model, messages}`, optional
  `add_special_tokens` (default true for a prompt, false for messages, whose chat template adds
  its own) -> `{tokens, count, max_model_len}`.
- `POST /v1/detokenize`: `{model, tokens}` -> `{prompt}`.
- `POST /api/v1/token_check` (FastChat's shape): `{prompts: [{model, prompt, max_tokens}]}` ->
  `{prompts: [{fits, tokenCount, contextLength}]}`; a prompt fits when its tokens plus
  `max_tokens` fit the context.

Large requests are tokenized, and their answers encoded, in a worker thread (see
`streaming.off_loop_if_large`): a 4 MB prompt takes seconds, and other streams keep flowing.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import Field
from starlette.requests import Request
from starlette.responses import Response

from llmserve.api.chat import template_messages
from llmserve.api.json_body import read_body
from llmserve.api.schemas import ChatMessage, NonNegativeInt64, StrictRequest, TokenIds
from llmserve.api.state import server_state
from llmserve.api.streaming import off_loop_if_large
from llmserve.errors import InvalidRequestError
from llmserve.templates import decode_ids, encode_text, encode_texts, render_chat_prompt
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


class TokenCheckRequest(StrictRequest):
    prompts: list[TokenCheckItem] = Field(min_length=1)


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


def _tokenize(tokenizer: Any, body: TokenizeRequest, max_model_len: int) -> str:
    if body.messages is not None:
        text = render_chat_prompt(tokenizer, template_messages(body.messages))
        add_special = bool(body.add_special_tokens)
    else:
        assert body.prompt is not None
        text = body.prompt
        add_special = body.add_special_tokens is not False
    tokens = encode_text(tokenizer, text, add_special)
    return f'{{"count":{len(tokens)},"max_model_len":{max_model_len},"tokens":{json_array(tokens)}}}'


async def detokenize(request: Request) -> Response:
    state = server_state(request)
    body = await read_body(request, DetokenizeRequest)
    worker = state.choose_worker(body.model, task=None)
    vocab_size = int(getattr(worker.engine, "vocab_size", 0))
    return _json(await off_loop_if_large(request, _detokenize, worker.tokenizer, body.tokens, vocab_size))


def _detokenize(tokenizer: Any, tokens: list[int], vocab_size: int) -> str:
    if tokens and (min(tokens) < 0 or max(tokens) >= vocab_size):
        raise InvalidRequestError(f"token ids must be in [0, {vocab_size})", param="tokens")
    return json.dumps({"prompt": decode_ids(tokenizer, tokens)}, ensure_ascii=False, separators=(",", ":"))


async def token_check(request: Request) -> Response:
    state = server_state(request)
    body = await read_body(request, TokenCheckRequest)
    workers = {model: state.choose_worker(model, task=None) for model in {item.model for item in body.prompts}}
    return _json(await off_loop_if_large(request, _token_check, body.prompts, workers))


def _token_check(items: list[TokenCheckItem], workers: dict[str, Worker]) -> str:
    """Each model's prompts encoded as one batch (one Rust call with the GIL released)."""
    counts: list[int] = [0] * len(items)
    for model, worker in workers.items():
        indices = [i for i, item in enumerate(items) if item.model == model]
        encoded = encode_texts(worker.tokenizer, [items[i].prompt for i in indices])
        for i, ids in zip(indices, encoded, strict=True):
            counts[i] = len(ids)
    checked = [{"fits": count + item.max_tokens <= workers[item.model].max_model_len, "tokenCount": count,
                "contextLength": workers[item.model].max_model_len} for item, count in zip(items, counts, strict=True)]
    return f'{{"prompts":{json_array(checked)}}}'


def json_array(values: list[Any], slice_len: int = 16_384) -> str:
    """`values` as a JSON array, encoded a slice at a time: one `json.dumps` of a million items holds
    the GIL (and so the event loop) for a quarter of a second; slices let it go in between."""
    if len(values) <= slice_len:
        return json.dumps(values, separators=(",", ":"))
    parts = (json.dumps(values[i:i + slice_len], separators=(",", ":"))[1:-1]
             for i in range(0, len(values), slice_len))
    return "[" + ",".join(parts) + "]"


def _json(text: str) -> Response:
    return Response(text.encode(), media_type="application/json")
