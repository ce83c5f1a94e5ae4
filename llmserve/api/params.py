"""From a validated request body to engine inputs: server-side bounds, max tokens, sampling parameters.

Bodies are parsed by api/json_body.py."""

from __future__ import annotations

import re

from llmserve.api.schemas import SamplingFields
from llmserve.config import ServerConfig
from llmserve.engine.request import SamplingParams
from llmserve.errors import ContextLengthError, InvalidRequestError

# A token id as `logit_bias` keys spell it: ASCII digits only (str.isdigit() also takes "²" or "١",
# which int() refuses or reads as another number).
_TOKEN_ID_KEY = re.compile(r"\s*([0-9]{1,10})\s*")
MAX_LOGIT_BIAS = 300
"""Most tokens one request may bias (OpenAI's limit)."""


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
    if len(body.logit_bias or {}) > MAX_LOGIT_BIAS:
        raise InvalidRequestError(f"logit_bias may hold at most {MAX_LOGIT_BIAS} tokens", param="logit_bias")
    pairs = []
    for key, value in (body.logit_bias or {}).items():
        match = _TOKEN_ID_KEY.fullmatch(key)
        if match is None or int(match.group(1)) >= vocab_size:
            raise InvalidRequestError(f"logit_bias keys must be token ids in [0, {vocab_size}), got "
                                      f"{ascii(key[:20])}", param="logit_bias")
        pairs.append((int(match.group(1)), float(value)))
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
