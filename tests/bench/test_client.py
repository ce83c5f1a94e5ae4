"""Tests of llmserve/bench/client.py against the in-process fake server."""

from __future__ import annotations

import httpx
import pytest

from llmserve.bench import BenchError, BenchOptions
from llmserve.bench.client import build_payload, chunk_text, error_message, send_request
from llmserve.bench.dataset import BenchPrompt

from .fake_server import MODEL, FakeOpenAI

PROMPT = BenchPrompt(text="one two three", num_prompt_tokens=3, num_output_tokens=5)


def test_chat_payload_streams_with_usage_and_exact_length() -> None:
    body = build_payload("chat", "m", PROMPT, 0.0)
    assert body == {
        "model": "m",
        "max_tokens": 5,
        "temperature": 0.0,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
        "messages": [{"role": "user", "content": "one two three"}],
    }


def test_completions_payload_sends_a_prompt() -> None:
    body = build_payload("completions", "m", PROMPT, 0.7)
    assert body["prompt"] == "one two three" and "messages" not in body
    assert body["temperature"] == 0.7


def test_logprobs_are_asked_the_way_each_endpoint_takes_them() -> None:
    chat = build_payload("chat", "m", PROMPT, 0.0, logprobs=2)
    assert (chat["logprobs"], chat["top_logprobs"]) == (True, 2)
    assert build_payload("completions", "m", PROMPT, 0.0, logprobs=0)["logprobs"] == 0
    assert "logprobs" not in build_payload("completions", "m", PROMPT, 0.0)


def test_payload_with_json_schema_and_its_option_checks() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    body = build_payload("chat", "m", PROMPT, 0.0, ignore_eos=False, json_schema=schema)
    assert body["response_format"] == {"type": "json_schema",
                                       "json_schema": {"name": "bench", "schema": schema, "strict": True}}
    assert "ignore_eos" not in body and "response_format" not in build_payload("chat", "m", PROMPT, 0.0)
    for bad in ({"ignore_eos": True}, {"ignore_eos": False, "endpoint": "completions"}):
        with pytest.raises(BenchError, match="json_schema"):
            BenchOptions(json_schema=schema, **bad)


def test_chunk_text_reads_chat_and_completion_chunks() -> None:
    assert chunk_text({"choices": [{"delta": {"content": "hi"}}]}) == "hi"
    assert chunk_text({"choices": [{"delta": {"role": "assistant"}}]}) == ""
    assert chunk_text({"choices": [{"delta": {"content": None}, "finish_reason": "stop"}]}) == ""
    assert chunk_text({"choices": [{"text": " there"}]}) == " there"
    assert chunk_text({"choices": [], "usage": {"completion_tokens": 3}}) == ""


def test_error_message_reads_openai_error_bodies() -> None:
    assert error_message({"error": {"message": "bad", "type": "x"}}) == "bad"
    assert error_message({"error": "plain"}) == "plain"
    assert error_message("x" * 1000) == "x" * 300


@pytest.mark.parametrize("endpoint", ["chat", "completions"])
async def test_successful_stream(
    endpoint: str, fake: FakeOpenAI, asgi_transport: httpx.ASGITransport
) -> None:
    url = f"http://fake/v1/{'chat/completions' if endpoint == 'chat' else 'completions'}"
    async with httpx.AsyncClient(transport=asgi_transport) as client:
        result = await send_request(client, url, build_payload(endpoint, MODEL, PROMPT, 0.0), 99)
    assert result.is_success and result.error is None
    assert (result.num_prompt_tokens, result.num_output_tokens) == (3, 5)  # from the usage chunk
    assert result.ttft_s is not None and len(result.itls_s) == 4
    assert result.latency_s >= result.ttft_s
    assert fake.bodies[0]["ignore_eos"] is True


async def test_counts_content_chunks_without_usage(asgi_transport: httpx.ASGITransport) -> None:
    async with httpx.AsyncClient(transport=asgi_transport) as client:
        payload = build_payload("chat", "no-usage", PROMPT, 0.0)
        result = await send_request(client, "http://fake/v1/chat/completions", payload, 42)
    assert result.is_success
    assert (result.num_prompt_tokens, result.num_output_tokens) == (42, 5)


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        ("missing", "HTTP 404: model 'missing' not found"),
        ("broken", "stream error: worker died"),
        ("cut", "stream ended without data: [DONE]"),
    ],
)
async def test_failures_are_recorded(model: str, expected: str, asgi_transport: httpx.ASGITransport) -> None:
    async with httpx.AsyncClient(transport=asgi_transport) as client:
        payload = build_payload("chat", model, PROMPT, 0.0)
        result = await send_request(client, "http://fake/v1/chat/completions", payload)
    assert not result.is_success
    assert result.error == expected


async def test_non_json_error_body_and_transport_errors() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("down"):
            raise httpx.ConnectError("connection refused", request=request)
        return httpx.Response(503, text="overloaded\n")

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        busy = await send_request(client, "http://fake/v1/busy", {})
        down = await send_request(client, "http://fake/v1/down", {})
    assert busy.error == "HTTP 503: overloaded"
    assert down.error == "ConnectError: connection refused"
    assert not busy.is_success and not down.is_success


async def test_a_server_refusing_unknown_fields_is_driven_without_ignore_eos(
    fake: FakeOpenAI, asgi_transport: httpx.ASGITransport
) -> None:
    url = "http://fake/v1/chat/completions"
    async with httpx.AsyncClient(transport=asgi_transport) as client:
        refused = await send_request(client, url, build_payload("chat", "strict", PROMPT, 0.0))
        plain = await send_request(client, url, build_payload("chat", "strict", PROMPT, 0.0, ignore_eos=False))
    assert not refused.is_success and refused.error is not None and refused.error.startswith("HTTP 422")
    assert "ignore_eos" not in fake.bodies[1]
    # No [DONE]: the stream had finished and sent its usage, which gives the lengths.
    assert plain.is_success and plain.error is None
    assert (plain.num_prompt_tokens, plain.num_output_tokens) == (3, 5)
