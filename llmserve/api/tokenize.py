"""Counting tokens with the served model's own tokenizer.

- `POST /v1/tokenize` (vLLM's shape): `{model, prompt}` or `{model, messages}`, optional
  `add_special_tokens` (default true for a prompt, false for messages, whose chat template adds
  its own) -> `{tokens, count, max_model_len}`.
- `POST /v1/detokenize`: `{model, tokens}` -> `{prompt}`.
- `POST /api/v1/token_check` (FastChat's shape): `{prompts: [{model, prompt, max_tokens}]}` ->
  `{prompts: [{fits, tokenCount, contextLength}]}`; a prompt fits when its tokens plus
  `max_tokens` fit the context.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request
from starlette.responses import JSONResponse

from llmserve.api.chat import template_messages
from llmserve.api.params import read_body
from llmserve.api.schemas import ChatMessage
from llmserve.api.state import server_state
from llmserve.errors import InvalidRequestError
from llmserve.templates import encode_text, render_chat_prompt


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore")


class TokenizeRequest(_Lenient):
    model: str = Field(min_length=1)
    prompt: str | None = None
    messages: list[ChatMessage] | None = Field(default=None, min_length=1)
    add_special_tokens: bool | None = None


class DetokenizeRequest(_Lenient):
    model: str = Field(min_length=1)
    tokens: list[int]


class TokenCheckItem(_Lenient):
    model: str = Field(min_length=1)
    prompt: str
    max_tokens: int = Field(default=0, ge=0)


class TokenCheckRequest(_Lenient):
    prompts: list[TokenCheckItem] = Field(min_length=1)


async def tokenize(request: Request) -> JSONResponse:
    state = server_state(request)
    body = await read_body(request, TokenizeRequest)
    if (body.prompt is None) == (body.messages is None):
        raise InvalidRequestError("give exactly one of 'prompt' and 'messages'", param="prompt")
    worker = state.choose_worker(body.model, task=None)
    tokenizer = worker.tokenizer
    if body.messages is not None:
        if worker.task == "embed":
            raise InvalidRequestError(f"The model '{body.model}' is an embedding model and has no chat "
                                      "template; send 'prompt'", param="messages")
        text = render_chat_prompt(tokenizer, template_messages(body.messages))
        add_special = bool(body.add_special_tokens)
    else:
        assert body.prompt is not None
        text = body.prompt
        add_special = body.add_special_tokens is not False
    tokens = list(tokenizer.encode(text, add_special_tokens=add_special))
    return JSONResponse({"count": len(tokens), "max_model_len": worker.max_model_len, "tokens": tokens})


async def detokenize(request: Request) -> JSONResponse:
    state = server_state(request)
    body = await read_body(request, DetokenizeRequest)
    worker = state.choose_worker(body.model, task=None)
    vocab_size = int(getattr(worker.engine, "vocab_size", 0))
    if any(i < 0 or i >= vocab_size for i in body.tokens):
        raise InvalidRequestError(f"token ids must be in [0, {vocab_size})", param="tokens")
    return JSONResponse({"prompt": worker.tokenizer.decode(body.tokens)})


async def token_check(request: Request) -> JSONResponse:
    state = server_state(request)
    body = await read_body(request, TokenCheckRequest)
    checked = []
    for item in body.prompts:
        worker = state.choose_worker(item.model, task=None)
        count = len(encode_text(worker.tokenizer, item.prompt))
        context = worker.max_model_len
        checked.append({"fits": count + item.max_tokens <= context, "tokenCount": count, "contextLength": context})
    return JSONResponse({"prompts": checked})
