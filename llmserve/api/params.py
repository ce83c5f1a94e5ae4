"""From an HTTP request to validated engine inputs: body parsing, bounds, sampling parameters."""

from __future__ import annotations

import json
from typing import TypeVar

from pydantic import BaseModel, ValidationError
from starlette.requests import Request

from llmserve.api.schemas import SamplingFields
from llmserve.config import ServerConfig
from llmserve.engine.request import SamplingParams
from llmserve.errors import ContextLengthError, InvalidRequestError, UnsupportedMediaTypeError

_M = TypeVar("_M", bound=BaseModel)


async def read_body(request: Request, model: type[_M]) -> _M:
    """Parse and validate a JSON body; every failure is a 4xx naming the field."""
    content_type = request.headers.get("content-type", "application/json").split(";")[0].strip().lower()
    if content_type not in ("application/json", "", "text/plain"):
        raise UnsupportedMediaTypeError(f"expected Content-Type application/json, got '{content_type[:80]}'")
    raw = await request.body()
    try:
        data = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise InvalidRequestError("the request body is not valid UTF-8") from None
    except json.JSONDecodeError as exc:
        raise InvalidRequestError(f"the request body is not valid JSON: {exc.msg} at line {exc.lineno} "
                                  f"column {exc.colno}") from None
    if not isinstance(data, dict):
        raise InvalidRequestError("the request body must be a JSON object")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise validation_error(exc) from None


def validation_error(exc: ValidationError) -> InvalidRequestError:
    """The first pydantic error as an OpenAI-style 400, without echoing the input."""
    first = exc.errors(include_url=False, include_input=False)[0]
    loc = [str(part) for part in first["loc"] if not _is_union_tag(part)]
    param = ".".join(loc) or None
    message = first["msg"]
    if first["type"] == "missing":
        message = f"'{param}' is a required property"
    elif param:
        message = f"invalid value for '{param}': {message}"
    return InvalidRequestError(message, param=param)


def _is_union_tag(part: object) -> bool:
    text = str(part)
    return text in {"str", "int", "list[str]", "list[int]", "list[list[int]]", "list[TextPart]"} or text.startswith(
        ("function-", "list[")
    )


def stop_strings(body: SamplingFields, limits: ServerConfig) -> tuple[str, ...]:
    """The request's stop strings, bounded in number and length."""
    stop = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
    if len(stop) > limits.max_stop_sequences:
        raise InvalidRequestError(f"at most {limits.max_stop_sequences} stop sequences are allowed", param="stop")
    for s in stop:
        if len(s) > limits.max_stop_length:
            raise InvalidRequestError(f"stop sequences may be at most {limits.max_stop_length} characters",
                                      param="stop")
    return tuple(s for s in stop if s)


def check_common(body: SamplingFields, limits: ServerConfig) -> None:
    """Bounds shared by chat and completions that depend on the server's limits."""
    if body.n > limits.max_n:
        raise InvalidRequestError(f"n must be at most {limits.max_n}", param="n")
    if body.stream_options is not None and not body.stream:
        raise InvalidRequestError("stream_options is only allowed when stream is true", param="stream_options")
    if body.stop_token_ids is not None and len(body.stop_token_ids) > limits.max_stop_sequences:
        raise InvalidRequestError(f"at most {limits.max_stop_sequences} stop_token_ids are allowed",
                                  param="stop_token_ids")


def resolve_max_tokens(requested: int | None, default: int | None, num_prompt_tokens: int,
                       max_model_len: int, param: str, prompt_param: str) -> int:
    """Output budget; the prompt plus it must fit the context (never a silent truncation)."""
    room = max_model_len - num_prompt_tokens
    if room <= 0:
        raise ContextLengthError(
            f"This model's maximum context length is {max_model_len} tokens, but the prompt has "
            f"{num_prompt_tokens} tokens. Please shorten the prompt.", param=prompt_param)
    wanted = requested if requested is not None else default
    if wanted is None:
        return room
    if wanted > room:
        raise ContextLengthError(
            f"This model's maximum context length is {max_model_len} tokens. However, you requested "
            f"{num_prompt_tokens + wanted} tokens ({num_prompt_tokens} in the prompt, {wanted} for the "
            f"completion). Please reduce the prompt or {param}.", param=param)
    return wanted


def logit_bias(body: SamplingFields, vocab_size: int) -> tuple[tuple[int, float], ...]:
    """`logit_bias` as (token id, bias) pairs; keys must be token ids of the served model."""
    pairs = []
    for key, value in (body.logit_bias or {}).items():
        if not key.strip().isdigit() or int(key) >= vocab_size:
            raise InvalidRequestError(f"logit_bias keys must be token ids in [0, {vocab_size}), got '{key[:20]}'",
                                      param="logit_bias")
        pairs.append((int(key), float(value)))
    if len(pairs) > 300:
        raise InvalidRequestError("logit_bias may hold at most 300 tokens", param="logit_bias")
    return tuple(pairs)


def sampling_params(body: SamplingFields, max_tokens: int, stop: tuple[str, ...], seed: int | None,
                    logprobs: int | None, bias: tuple[tuple[int, float], ...] = ()) -> SamplingParams:
    """Engine sampling parameters for one choice."""
    temperature = 1.0 if body.temperature is None else body.temperature
    return SamplingParams(
        max_tokens=max_tokens,
        temperature=temperature,
        top_p=1.0 if body.top_p is None else max(body.top_p, 1e-6),
        top_k=max(0, body.top_k or 0),
        min_p=body.min_p or 0.0,
        presence_penalty=body.presence_penalty or 0.0,
        frequency_penalty=body.frequency_penalty or 0.0,
        repetition_penalty=body.repetition_penalty or 1.0,
        seed=seed,
        stop=stop,
        stop_token_ids=tuple(body.stop_token_ids or ()),
        ignore_eos=body.ignore_eos,
        logprobs=logprobs,
        logit_bias=bias,
    )


def choice_seeds(seed: int | None, n: int) -> list[int | None]:
    """Per-choice seeds: choice i of a seeded request uses seed + i, so choices differ but repeat."""
    if seed is None:
        return [None] * n
    return [(seed + i) % 2**63 for i in range(n)]
