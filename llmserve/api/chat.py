"""POST /v1/chat/completions: validate -> template -> dispatch -> JSON or SSE."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from llmserve.api.chat_features import ChatFeatures, chat_features
from llmserve.api.json_body import read_body
from llmserve.api.logprobs import chat_logprobs
from llmserve.api.params import (
    check_common,
    choice_seeds,
    logit_bias,
    resolve_max_tokens,
    sampling_params,
    stop_strings,
)
from llmserve.api.schemas import ChatCompletionRequest, ChatMessage
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
from llmserve.api.tools import template_tool_calls
from llmserve.builtin_templates import template_stop_strings, template_stop_token_ids
from llmserve.errors import InvalidRequestError
from llmserve.request_stream import RequestStream
from llmserve.templates import check_serves_chat
from llmserve.worker import Worker


async def create_chat_completion(request: Request) -> Response:
    state = server_state(request)
    body = await read_body(request, ChatCompletionRequest)
    limits = state.config.server
    check_common(body, limits)
    if len(body.messages) > limits.max_messages:
        raise InvalidRequestError(f"at most {limits.max_messages} messages are allowed", param="messages")
    if body.top_logprobs is not None and body.top_logprobs > limits.max_logprobs:
        raise InvalidRequestError(f"top_logprobs must be at most {limits.max_logprobs}", param="top_logprobs")
    if body.top_logprobs and not body.logprobs:
        raise InvalidRequestError("top_logprobs requires logprobs to be true", param="top_logprobs")
    stop = stop_strings(body, limits)
    worker = state.choose_worker(body.model)
    check_serves_chat(worker.config, body.model)
    stop, body = with_template_stops(worker.config.chat_template, worker.tokenizer, stop, body)
    features = await chat_features(body, worker)
    prompt_ids = await off_loop_if_large(request, features.encode, worker.tokenizer, template_messages(body.messages))
    max_tokens = resolve_max_tokens(
        body.max_completion_tokens or body.max_tokens, None, len(prompt_ids), worker.max_model_len,
        param="max_completion_tokens" if body.max_completion_tokens else "max_tokens", prompt_param="messages",
    )
    logprobs = (body.top_logprobs or 0) if body.logprobs else None
    bias = logit_bias(body, worker.vocab_size)
    params = [sampling_params(body, max_tokens, stop, seed, logprobs, bias) for seed in choice_seeds(body.seed, body.n)]
    if features.grammar is not None:
        params = [replace(p, grammar=features.grammar) for p in params]
    if kept := features.special_text_ids(worker.tokenizer):
        params = [replace(p, special_text_ids=kept) for p in params]
    prompts = [(prompt_ids, p) for p in params]
    stream = submit(worker, prompts, "chatcmpl", limits.log_requests)
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    return await respond(
        request, worker, stream,
        (lambda: _stream(worker, body, features, stream, len(prompt_ids), include_usage)) if body.stream else None,
        lambda: _complete(worker, body, features, stream, len(prompt_ids)))


def with_template_stops(template: str, tokenizer: object, stop: tuple[str, ...],
                        body: ChatCompletionRequest) -> tuple[tuple[str, ...], ChatCompletionRequest]:
    """A built-in template's stop strings and stop tokens (FastChat's per-template stops) added to the request's."""
    stop = stop + tuple(s for s in template_stop_strings(template) if s not in stop)
    token_ids = template_stop_token_ids(template, tokenizer)
    if token_ids:
        body = body.model_copy(update={"stop_token_ids": [*(body.stop_token_ids or ()), *token_ids]})
    return stop, body


def template_messages(messages: list[ChatMessage]) -> list[dict[str, Any]]:
    """Messages as chat templates expect them: string content, `developer` read as `system`, an
    assistant turn's `tool_calls` and a tool turn's `tool_call_id` kept (see `api/tools.py`)."""
    out = []
    for i, message in enumerate(messages):
        content = message.content
        if isinstance(content, list):
            parts = []
            for j, part in enumerate(content):
                if part.type != "text" or part.text is None:
                    raise InvalidRequestError(f"only text content parts are supported, got '{part.type[:40]}'",
                                              param=f"messages.{i}.content.{j}")
                parts.append(part.text)
            content = "\n".join(parts)
        role = "system" if message.role == "developer" else message.role
        entry: dict[str, Any] = {"role": role, "content": content or ""}
        if message.tool_calls:
            if role != "assistant":
                raise InvalidRequestError("only assistant messages carry tool_calls", param=f"messages.{i}.tool_calls")
            entry["tool_calls"] = template_tool_calls(message.tool_calls)
        if role == "tool":
            if not message.tool_call_id:
                raise InvalidRequestError("a tool message needs the tool_call_id it answers",
                                          param=f"messages.{i}.tool_call_id")
            entry["tool_call_id"] = message.tool_call_id
        if message.name is not None:
            entry["name"] = message.name
        out.append(entry)
    return out


async def _complete(worker: Worker, body: ChatCompletionRequest, features: ChatFeatures, stream: RequestStream,
                    num_prompt: int) -> JSONResponse:
    results = await collect(stream)
    choices = []
    for index, result in enumerate(results):
        message, finish_reason = features.message(result.text, result.finish_reason)
        choices.append({
            "index": index,
            "message": message,
            "logprobs": chat_logprobs(worker.token_text, result.logprobs) if body.logprobs else None,
            "finish_reason": finish_reason,
        })
    num_output = sum(r.num_output_tokens for r in results)
    return JSONResponse({
        "id": stream.request_id,
        "object": "chat.completion",
        "created": now_s(),
        "model": body.model,
        "choices": choices,
        "usage": {"prompt_tokens": num_prompt, "completion_tokens": num_output,
                  "total_tokens": num_prompt + num_output},
        "system_fingerprint": None,
    })


async def _stream(worker: Worker, body: ChatCompletionRequest, features: ChatFeatures, stream: RequestStream,
                  num_prompt: int, include_usage: bool) -> AsyncIterator[bytes]:
    chunk = ChunkFormat(stream.request_id, "chat.completion.chunk", body.model, include_usage, "delta.content")
    num_output = [0] * len(stream.seq_ids)
    try:
        for index in range(len(stream.seq_ids)):
            yield chunk([{"index": index, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                          "finish_reason": None}])
        splitters = [features.splitter() for _ in stream.seq_ids]
        token_text = worker.token_text if body.logprobs else None
        async for index, output in stream:
            raise_if_error(output)
            num_output[index] = output.num_output_tokens
            for event in features.chunks(chunk, splitters[index], index, output, token_text):
                yield event
    finally:
        worker.release(stream)
    if include_usage:
        yield chunk([], {"prompt_tokens": num_prompt, "completion_tokens": sum(num_output),
                         "total_tokens": num_prompt + sum(num_output)})
