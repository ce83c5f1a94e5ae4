"""POST /v1/responses: OpenAI's Responses API over the chat machinery.

A request is translated into a chat request (input items -> messages, flat function tools ->
chat tools, `text.format` -> `response_format`, `reasoning.effort` -> the template) and runs
exactly as chat does (`api/chat_features.py`); the answer is shaped into output items (reasoning,
message, function_call) whole or as the typed event stream the official SDK accumulates.

Stateless: nothing is stored, so `store: true`, `previous_response_id`, `conversation` and
`background` are refused with a 400, as are tool types other than functions and every other field
this server does not implement. `reasoning` items sent back as input are skipped: templates drop
earlier reasoning from the history anyway.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from llmserve.api.chat import template_messages
from llmserve.api.chat_features import ChatFeatures, chat_features
from llmserve.api.json_body import read_body, validation_error
from llmserve.api.params import check_common, choice_seeds, resolve_max_tokens, sampling_params, stop_strings
from llmserve.api.response_events import ResponseEvents
from llmserve.api.schemas import ChatCompletionRequest
from llmserve.api.state import server_state
from llmserve.api.streaming import collect, off_loop_if_large, raise_if_error, respond, submit
from llmserve.errors import InvalidRequestError
from llmserve.request_stream import RequestStream
from llmserve.worker import Worker

_EXTENSIONS = ("structured_outputs", "top_k", "min_p", "repetition_penalty", "chat_template_kwargs")


class ResponsesRequest(BaseModel):
    """The Responses API body; fields not listed are ignored, listed ones not implemented are refused."""

    model_config = ConfigDict(extra="ignore", strict=True)
    model: str = Field(min_length=1)
    input: str | list[dict[str, Any]]
    instructions: str | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: Any = None
    parallel_tool_calls: bool | None = None
    text: dict[str, Any] | None = None
    reasoning: dict[str, Any] | None = None
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, ge=0.0, le=1.0)
    max_output_tokens: int | None = Field(default=None, ge=1, le=2**63 - 1)
    stream: bool = False
    seed: int | None = Field(default=None, ge=-(2**63), le=2**63 - 1)
    user: str | None = None
    metadata: dict[str, Any] | None = None
    store: bool | None = None
    truncation: str | None = None
    include: list[str] | None = None
    previous_response_id: str | None = None
    conversation: Any = None
    background: bool | None = None
    prompt: Any = None
    max_tool_calls: int | None = None
    top_logprobs: int | None = None
    stream_options: dict[str, Any] | None = None
    # Extensions shared with chat (vLLM's names), passed through as they are.
    structured_outputs: Any = None
    top_k: Any = None
    min_p: Any = None
    repetition_penalty: Any = None
    chat_template_kwargs: Any = None


def _refuse_unsupported(body: ResponsesRequest) -> None:
    refusals = [
        ("previous_response_id", body.previous_response_id is not None,
         "responses are not stored here: send the whole conversation as input"),
        ("conversation", body.conversation is not None, "conversations are not stored here"),
        ("store", body.store is True, "responses are not stored here: omit store or set it to false"),
        ("background", body.background is True, "background responses are not supported"),
        ("prompt", body.prompt is not None, "stored prompt templates are not supported"),
        ("max_tool_calls", body.max_tool_calls is not None, "max_tool_calls is not supported"),
        ("top_logprobs", bool(body.top_logprobs), "logprobs are not supported on /v1/responses"),
        ("include", bool(body.include), "include is not supported"),
        ("truncation", body.truncation not in (None, "disabled"), "only truncation 'disabled' is supported"),
        ("stream_options", body.stream_options is not None and not body.stream,
         "stream_options is only allowed when stream is true"),
    ]
    for param, refused, message in refusals:
        if refused:
            raise InvalidRequestError(message, param=param)


def chat_request(body: ResponsesRequest) -> ChatCompletionRequest:
    """The chat request equivalent to a Responses request (400s name the Responses field)."""
    _refuse_unsupported(body)
    chat: dict[str, Any] = {"model": body.model, "messages": _messages(body), "stream": body.stream}
    for name in ("temperature", "top_p", "seed", "user", "parallel_tool_calls", *_EXTENSIONS):
        if getattr(body, name) is not None:
            chat[name] = getattr(body, name)
    if body.max_output_tokens is not None:
        chat["max_completion_tokens"] = body.max_output_tokens
    if body.tools:
        chat["tools"] = [_tool(tool, i) for i, tool in enumerate(body.tools)]
    if body.tool_choice is not None:
        chat["tool_choice"] = _tool_choice(body.tool_choice)
    if body.text:
        fmt = _text_format(body.text)
        if fmt is not None:
            chat["response_format"] = fmt
    if body.reasoning and body.reasoning.get("effort") is not None:
        chat["reasoning_effort"] = body.reasoning["effort"]
    try:
        return ChatCompletionRequest.model_validate(chat)
    except ValidationError as exc:
        raise validation_error(exc) from None


def _messages(body: ResponsesRequest) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = []
    if body.instructions:
        messages.append({"role": "system", "content": body.instructions})
    if isinstance(body.input, str):
        return [*messages, {"role": "user", "content": body.input}]
    for i, item in enumerate(body.input):
        kind = item.get("type", "message")
        if kind == "message":
            messages.append({"role": item.get("role"), "content": _content(item.get("content"), i)})
        elif kind == "function_call":
            call = {"id": item.get("call_id"), "type": "function",
                    "function": {"name": item.get("name"), "arguments": item.get("arguments")}}
            last = messages[-1] if messages else None
            if last is not None and last["role"] == "assistant" and last.get("tool_calls") is not None:
                last["tool_calls"].append(call)  # parallel calls: one assistant turn
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            output = item.get("output")
            messages.append({"role": "tool", "tool_call_id": item.get("call_id"),
                             "content": output if isinstance(output, str) else _content(output, i)})
        elif kind != "reasoning":
            raise InvalidRequestError(f"input items of type '{str(kind)[:40]}' are not supported",
                                      param=f"input.{i}.type")
    return messages


def _content(content: Any, index: int) -> Any:
    """Input content parts as chat text parts (input_text / output_text); others are a 400."""
    if not isinstance(content, list):
        return content
    parts = []
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind not in ("input_text", "output_text", "text"):
            raise InvalidRequestError(f"content parts of type '{str(kind)[:40]}' are not supported",
                                      param=f"input.{index}.content.{j}")
        parts.append({"type": "text", "text": part.get("text")})
    return parts


def _tool(tool: dict[str, Any], index: int) -> dict[str, Any]:
    if tool.get("type") != "function":
        raise InvalidRequestError(f"tools of type '{str(tool.get('type'))[:40]}' are not supported: only function "
                                  "tools", param=f"tools.{index}.type")
    function = {key: tool[key] for key in ("name", "description", "parameters", "strict") if tool.get(key) is not None}
    return {"type": "function", "function": function}


def _tool_choice(choice: Any) -> Any:
    if isinstance(choice, dict) and choice.get("type") == "function":
        return {"type": "function", "function": {"name": choice.get("name")}}
    if isinstance(choice, str):
        return choice
    raise InvalidRequestError("tool_choice must be none, auto, required or a function", param="tool_choice")


def _text_format(text: dict[str, Any]) -> dict[str, Any] | None:
    if text.get("verbosity") not in (None, "medium"):
        raise InvalidRequestError("text.verbosity is not supported", param="text.verbosity")
    fmt = text.get("format")
    if fmt is None or (isinstance(fmt, dict) and fmt.get("type") == "text"):
        return None
    if not isinstance(fmt, dict) or fmt.get("type") not in ("json_object", "json_schema"):
        raise InvalidRequestError("text.format.type must be text, json_object or json_schema", param="text.format")
    if fmt["type"] == "json_object":
        return {"type": "json_object"}
    schema = {key: fmt[key] for key in ("name", "schema", "strict", "description") if fmt.get(key) is not None}
    return {"type": "json_schema", "json_schema": schema}


async def create_response(request: Request) -> Response:
    state = server_state(request)
    body = await read_body(request, ResponsesRequest)
    chat = chat_request(body)
    limits = state.config.server
    check_common(chat, limits)
    if len(chat.messages) > limits.max_messages:
        raise InvalidRequestError(f"at most {limits.max_messages} input items are allowed", param="input")
    stop = stop_strings(chat, limits)
    worker = state.choose_worker(chat.model)
    features = await chat_features(chat, worker)
    prompt_ids = await off_loop_if_large(request, features.encode, worker.tokenizer, template_messages(chat.messages))
    max_tokens = resolve_max_tokens(chat.max_completion_tokens, None, len(prompt_ids), worker.max_model_len,
                                    param="max_output_tokens", prompt_param="input")
    params = sampling_params(chat, max_tokens, stop, choice_seeds(chat.seed, 1)[0], None)
    if features.grammar is not None:
        params = replace(params, grammar=features.grammar)
    if kept := features.special_text_ids(worker.tokenizer):
        params = replace(params, special_text_ids=kept)
    stream = submit(worker, [(prompt_ids, params)], "resp", limits.log_requests)
    echo = _echo(body, chat)
    created = int(time.time())
    response_id = stream.request_id.replace("-", "_", 1)
    return await respond(
        request, worker, stream,
        (lambda: _stream(worker, features, stream, response_id, created, echo, len(prompt_ids)))
        if body.stream else None,
        lambda: _complete(features, stream, response_id, created, echo, len(prompt_ids)))


def _echo(body: ResponsesRequest, chat: ChatCompletionRequest) -> dict[str, Any]:
    """The request's settings, echoed on the response object as the API does."""
    return {
        "model": body.model, "instructions": body.instructions, "tools": body.tools or [],
        "tool_choice": body.tool_choice if body.tool_choice is not None else "auto",
        "parallel_tool_calls": body.parallel_tool_calls is not False,
        "temperature": 1.0 if body.temperature is None else body.temperature,
        "top_p": 1.0 if body.top_p is None else body.top_p, "max_output_tokens": body.max_output_tokens,
        "text": body.text or {"format": {"type": "text"}}, "reasoning": body.reasoning, "user": body.user,
        "metadata": body.metadata or {}, "store": False, "truncation": "disabled", "previous_response_id": None,
        "background": False, "error": None,
    }


async def _complete(features: ChatFeatures, stream: RequestStream, response_id: str, created: int,
                    echo: dict[str, Any], num_prompt: int) -> JSONResponse:
    result = (await collect(stream))[0]
    events = ResponseEvents(response_id, created, echo, features.splitter())
    events.take(result.text, result.finish_reason)
    return JSONResponse(events.final(num_prompt, result.num_output_tokens))


async def _stream(worker: Worker, features: ChatFeatures, stream: RequestStream, response_id: str, created: int,
                  echo: dict[str, Any], num_prompt: int) -> AsyncIterator[bytes]:
    events = ResponseEvents(response_id, created, echo, features.splitter())
    num_output = 0
    try:
        for event in events.opening():
            yield event
        async for _, output in stream:
            raise_if_error(output)
            num_output = output.num_output_tokens
            for event in events.take(output.text, output.finish_reason):
                yield event
    finally:
        worker.release(stream)
    yield events.closing(num_prompt, num_output)
