"""POST /v1/completions: prompts (text or token ids) -> dispatch -> JSON or SSE."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from llmserve.api.json_body import read_body
from llmserve.api.logprobs import completion_logprobs, join_logprobs, prompt_completion_logprobs
from llmserve.api.params import (
    check_common,
    choice_seeds,
    logit_bias,
    resolve_max_tokens,
    sampling_params,
    stop_strings,
)
from llmserve.api.schemas import CompletionRequest
from llmserve.api.state import server_state
from llmserve.api.streaming import (
    ChunkFormat,
    collect,
    now_s,
    off_loop_if_large,
    raise_if_error,
    respond,
    submit,
)
from llmserve.api.structured import compile_spec, output_constraint
from llmserve.engine.request import SamplingParams
from llmserve.errors import InvalidRequestError
from llmserve.request_stream import RequestStream
from llmserve.templates import decode_ids, encode_texts
from llmserve.worker import Worker

DEFAULT_MAX_TOKENS = 16


async def create_completion(request: Request) -> Response:
    state = server_state(request)
    body = await read_body(request, CompletionRequest)
    limits = state.config.server
    check_common(body, limits)
    if body.logprobs is not None and body.logprobs > limits.max_logprobs:
        raise InvalidRequestError(f"logprobs must be at most {limits.max_logprobs}", param="logprobs")
    if body.suffix:
        raise InvalidRequestError("suffix is not supported", param="suffix")
    if body.best_of is not None and body.best_of != body.n:
        raise InvalidRequestError("best_of other than n is not supported", param="best_of")
    if body.max_tokens == 0 and not body.echo:
        raise InvalidRequestError("max_tokens may be 0 only with echo", param="max_tokens")
    stop = stop_strings(body, limits)
    constraint = output_constraint(body, body.ignore_eos)
    worker = state.choose_worker(body.model)
    if constraint is not None:
        await compile_spec(worker.engine, *constraint)
    texts, prompt_ids = await off_loop_if_large(request, _prompts, body.prompt, worker)
    prompts: list[tuple[list[int], SamplingParams]] = []
    bias = logit_bias(body, worker.vocab_size)
    for ids in prompt_ids:
        max_tokens = resolve_max_tokens(body.max_tokens, DEFAULT_MAX_TOKENS, len(ids), worker.max_model_len,
                                        param="max_tokens", prompt_param="prompt")
        params = [sampling_params(body, max_tokens, stop, seed, body.logprobs, bias)
                  for seed in choice_seeds(body.seed, body.n)]
        if body.echo and body.logprobs is not None:  # the echoed prompt carries logprobs too
            params = [replace(p, prompt_logprobs=body.logprobs) for p in params]
        if constraint is not None:
            params = [replace(p, grammar=constraint[0]) for p in params]
        prompts += [(ids, p) for p in params]
    echoes = [texts[i // body.n] if body.echo else "" for i in range(len(prompts))]
    usage = _Usage(sum(len(ids) for ids, _ in prompts[::body.n]))
    stream = submit(worker, prompts, "cmpl", limits.log_requests)
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    return await respond(
        request, worker, stream,
        (lambda: _stream(worker, body, stream, echoes, usage if include_usage else None)) if body.stream else None,
        lambda: _complete(worker, body, stream, echoes, usage))


def _prompts(prompt: Any, worker: Worker) -> tuple[list[str], list[list[int]]]:
    """(prompt texts for echo, prompt token ids) for each prompt of the request."""
    if isinstance(prompt, str) or (isinstance(prompt, list) and prompt and isinstance(prompt[0], str)):
        texts = [prompt] if isinstance(prompt, str) else list(prompt)
        if any(not t for t in texts):
            raise InvalidRequestError("prompt must not be empty", param="prompt")
        return texts, encode_texts(worker.tokenizer, texts)
    if not prompt:
        raise InvalidRequestError("prompt must not be empty", param="prompt")
    id_lists = [prompt] if isinstance(prompt[0], int) else prompt
    vocab = worker.vocab_size
    for ids in id_lists:
        if not ids:
            raise InvalidRequestError("prompt must not be empty", param="prompt")
        if min(ids) < 0 or max(ids) >= vocab:
            raise InvalidRequestError(f"prompt token ids must be in [0, {vocab})", param="prompt")
    texts = [decode_ids(worker.tokenizer, ids) for ids in id_lists]
    return texts, [list(ids) for ids in id_lists]


@dataclass(frozen=True)
class _Usage:
    num_prompt_tokens: int

    def render(self, num_output: int) -> dict:
        return {"prompt_tokens": self.num_prompt_tokens, "completion_tokens": num_output,
                "total_tokens": self.num_prompt_tokens + num_output}


async def _complete(worker: Worker, body: CompletionRequest, stream: RequestStream, echoes: list[str],
                    usage: _Usage) -> JSONResponse:
    results = await collect(stream)
    choices = []
    for index, result in enumerate(results):
        logprobs = None
        if body.logprobs is not None:
            logprobs = completion_logprobs(worker.token_text, result.logprobs, len(echoes[index]))
            if result.prompt_logprobs is not None:
                prompt_ids = stream.prompt_ids[index]
                logprobs = join_logprobs(
                    prompt_completion_logprobs(worker.token_text, prompt_ids, result.prompt_logprobs), logprobs)
        choices.append({"index": index, "text": echoes[index] + result.text, "logprobs": logprobs,
                        "finish_reason": result.finish_reason})
    return JSONResponse({
        "id": stream.request_id,
        "object": "text_completion",
        "created": now_s(),
        "model": body.model,
        "choices": choices,
        "usage": usage.render(sum(r.num_output_tokens for r in results)),
        "system_fingerprint": None,
    })


async def _stream(worker: Worker, body: CompletionRequest, stream: RequestStream, echoes: list[str],
                  usage: _Usage | None) -> AsyncIterator[bytes]:
    chunk = ChunkFormat(stream.request_id, "text_completion", body.model, usage is not None, "text")
    num_output = [0] * len(echoes)
    offsets = [len(e) for e in echoes]
    scores_prompt = body.echo and body.logprobs is not None
    try:
        for index, echo in enumerate(echoes):
            if echo and not scores_prompt:
                yield chunk([{"index": index, "text": echo, "logprobs": None, "finish_reason": None}])
        async for index, output in stream:
            raise_if_error(output)
            if output.prompt_logprobs is not None:  # the echo waits for its prompt's logprobs
                scored = prompt_completion_logprobs(worker.token_text, stream.prompt_ids[index],
                                                    output.prompt_logprobs)
                yield chunk([{"index": index, "text": echoes[index], "logprobs": scored, "finish_reason": None}])
            num_output[index] = output.num_output_tokens
            logprobs = None
            if body.logprobs is not None:
                logprobs = completion_logprobs(worker.token_text, output.logprobs, offsets[index])
            offsets[index] += len(output.text)
            if output.text or logprobs:
                yield chunk.text(index, output.text, logprobs)
            if output.finish_reason is not None:
                yield chunk([{"index": index, "text": "", "logprobs": None, "finish_reason": output.finish_reason}])
    finally:
        worker.release(stream)
    if usage is not None:
        yield chunk([], usage.render(sum(num_output)))
