"""The one JSON body parser (llmserve/api/json_body.py): limits at parse time, strict types, and a
property test throwing random JSON at every POST route of a live server."""

from __future__ import annotations

import json
import logging
import socket
import time

import httpx
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llmserve.api.json_body import (
    MAX_DEPTH,
    MAX_NUMBER_DIGITS,
    literal_quotes,
    nesting_depth,
    parse_body,
    parse_json,
)
from llmserve.api.schemas import ChatCompletionRequest, CompletionRequest
from llmserve.errors import InvalidRequestError

M = "tiny-llama"
USER = [{"role": "user", "content": "hi"}]
POST_ROUTES = ["/v1/chat/completions", "/v1/completions", "/v1/responses", "/v1/embeddings", "/v1/tokenize",
               "/v1/detokenize",
               "/api/v1/token_check", "/ui/api/vote", "/ui/api/battle"]


def _error(raw: bytes, model: type = ChatCompletionRequest) -> InvalidRequestError:
    with pytest.raises(InvalidRequestError) as info:
        parse_body(raw, model)
    return info.value


def test_depth_is_measured_outside_strings() -> None:
    assert nesting_depth(b'{"a":[[1],{"b":2}]}') == 3
    raw = json.dumps({"model": "m", "messages": [{"role": "user", "content": "[{" * 5000}]}).encode()
    assert parse_body(raw, ChatCompletionRequest).messages[0].content == "[{" * 5000


@pytest.mark.parametrize("depth", [MAX_DEPTH + 1, 1000, 100_000])
def test_deep_nesting_is_a_400_with_the_reason(depth: int) -> None:
    raw = b'{"model":"m","messages":[],"x":' + b"[" * depth + b"]" * depth + b"}"
    assert f"deeper than {MAX_DEPTH}" in _error(raw).message


def test_nesting_within_the_limit_in_an_ignored_field_is_fine() -> None:
    raw = json.dumps({"model": "m", "messages": USER, "metadata": [[[[[["deep"]]]]]]}).encode()
    assert parse_body(raw, ChatCompletionRequest).model == "m"


@pytest.mark.parametrize("number", ["1" * 5000, "-" + "9" * (MAX_NUMBER_DIGITS + 1), "1." + "0" * 100])
def test_long_numbers_are_a_400_at_parse_time(number: str) -> None:
    raw = f'{{"model":"m","messages":[],"seed":{number}}}'.encode()
    assert f"more than {MAX_NUMBER_DIGITS} digits" in _error(raw).message


def test_long_digit_runs_inside_strings_are_text() -> None:
    raw = json.dumps({"model": "m", "messages": [{"role": "user", "content": "7" * 5000}]}).encode()
    assert parse_body(raw, ChatCompletionRequest).messages[0].content == "7" * 5000


@pytest.mark.parametrize("value", ["NaN", "Infinity", "-Infinity", "1e999"])
def test_non_finite_numbers_are_refused(value: str) -> None:
    _error(f'{{"model":"m","messages":[],"temperature":{value}}}'.encode())


@pytest.mark.parametrize(("body", "param"), [
    ('{"model":"m","messages":[{"role":"user","content":"a\\ud800b"}]}', "messages.0.content"),
    ('{"model":"m","messages":[],"stop":["ok","\\udc00"]}', "stop.1"),
    ('{"model":"\\udfff","messages":[]}', "model"),
])
def test_lone_surrogates_are_refused_naming_the_field(body: str, param: str) -> None:
    error = _error(body.encode())
    assert error.param == param and "surrogate" in error.message


def test_a_surrogate_pair_is_text() -> None:
    raw = b'{"model":"m","messages":[{"role":"user","content":"\\ud83d\\ude00"}]}'
    assert parse_body(raw, ChatCompletionRequest).messages[0].content == "\U0001f600"


@pytest.mark.parametrize(("field", "value"), [
    ("stream", "true"), ("stream", 1), ("echo", "yes"), ("echo", 0), ("max_tokens", "5"), ("max_tokens", 5.0),
    ("top_k", True), ("temperature", "0.5"), ("temperature", True), ("seed", 2**63), ("top_k", 2**63),
    ("stop_token_ids", [2**64]), ("prompt", [2**63]), ("n", 10**19),
])
def test_types_are_strict_and_ints_fit_int64(field: str, value: object) -> None:
    raw = json.dumps({"model": "m", "prompt": "x", field: value}).encode()
    assert _error(raw, CompletionRequest).param is not None


@pytest.fixture(scope="module")
def keyless_root(base_url: str) -> str:
    return base_url.removesuffix("/v1")


@pytest.mark.parametrize("key", ["²", "١", "1e3", "-1", "0x10", "99999999999999999999"])
def test_logit_bias_keys_must_be_ascii_token_ids(keyless_root: str, key: str) -> None:
    r = httpx.post(keyless_root + "/v1/completions", timeout=30,
                   json={"model": M, "prompt": "x", "max_tokens": 1, "logit_bias": {key: 1}})
    assert r.status_code == 400 and r.json()["error"]["param"] == "logit_bias"


def test_deep_json_on_every_post_route_is_a_400(keyless_root: str) -> None:
    raw = b'{"model":"tiny-llama","x":' + b"[" * 5000 + b"]" * 5000 + b"}"
    for route in POST_ROUTES[:-1]:  # POST /ui/api/battle reads no body
        r = httpx.post(keyless_root + route, content=raw, headers={"content-type": "application/json"}, timeout=30)
        assert r.status_code == 400, (route, r.text)
        assert "deeper than" in r.json()["error"]["message"]


_scalars = (st.none() | st.booleans() | st.integers(min_value=-(10**60), max_value=10**60)
            | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20)
            | st.sampled_from(["tiny-llama", "user", "text", "left", "\ud800", "\udfff x"]))
_values = st.recursive(_scalars, lambda inner: st.lists(inner, max_size=4)
                       | st.dictionaries(st.text(max_size=8) | st.sampled_from(
                           ["model", "messages", "prompt", "role", "content", "n", "stream", "max_tokens",
                            "tokens", "prompts", "input", "winner", "logit_bias", "seed", "top_k"]), inner, max_size=5),
                       max_leaves=20)
_bodies = st.dictionaries(st.sampled_from(["model", "messages", "prompt", "n", "stream", "max_tokens", "tokens",
                                           "prompts", "input", "winner", "battle_id", "logit_bias", "seed", "top_k",
                                           "temperature", "stop", "echo", "logprobs", "input", "tools",
                                           "tool_choice", "response_format", "instructions"]),
                          _values, max_size=6)


def _encode(body: object, depth: int) -> bytes:
    """JSON with lone surrogates kept as escapes (as a hostile client would send them) and extra nesting."""
    text = json.dumps(body, ensure_ascii=True)
    return ("[" * depth + text + "]" * depth).encode() if depth else text.encode()


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow],
          derandomize=True)
@given(route=st.sampled_from(POST_ROUTES), body=_bodies, depth=st.sampled_from([0, 0, 0, 40, 2000]))
def test_random_json_gets_2xx_or_an_openai_shaped_4xx(keyless_root: str, route: str, body: dict, depth: int) -> None:
    if "max_tokens" in body and route in POST_ROUTES[:2]:
        body["max_tokens"] = 2  # keep generation short: the point is parsing, not decoding
    r = httpx.post(keyless_root + route, content=_encode(body, depth), timeout=30,
                   headers={"content-type": "application/json"})
    assert r.status_code < 500, (route, body, r.text[:300])
    if r.status_code >= 400:
        error = r.json()["error"]
        assert set(error) == {"message", "type", "param", "code"} and error["message"]


def test_the_server_is_healthy_after_the_property_test(keyless_root: str) -> None:
    assert httpx.get(keyless_root + "/health").status_code == 200
    r = httpx.post(keyless_root + "/v1/chat/completions", json={"model": M, "messages": USER, "max_tokens": 2},
                   timeout=30)
    assert r.status_code == 200


def test_a_client_leaving_mid_body_is_not_an_error(keyless_root: str, caplog: pytest.LogCaptureFixture) -> None:
    host, port = keyless_root.removeprefix("http://").split(":")
    for path in ("/v1/chat/completions", "/v1/tokenize", "/ui/api/vote"):
        with socket.create_connection((host, int(port))) as sock:
            sock.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         "Content-Length: 100000\r\n\r\n".encode() + b'{"model": "tiny-')
            time.sleep(0.2)  # the handler is waiting for the rest of the body
    time.sleep(0.3)
    metrics = httpx.get(keyless_root + "/metrics").text
    assert 'status="500"' not in metrics and 'status="499"' not in metrics
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text


@pytest.mark.parametrize("text", ["[" * 100_000 + "]" * 100_000, "1" * 5000], ids=["deep", "long number"])
def test_json_inside_strings_goes_through_the_same_parser(keyless_root: str, text: str) -> None:
    """Tool-call arguments and JSON-schema strings are JSON too: no RecursionError or int-conversion 500."""
    url = keyless_root + "/v1/chat/completions"
    turns = [{"role": "user", "content": "hi"},
             {"role": "assistant", "content": None, "tool_calls": [
                 {"id": "c1", "type": "function", "function": {"name": "f", "arguments": text[:2000]}}]},
             {"role": "tool", "tool_call_id": "c1", "content": "ok"}]
    r = httpx.post(url, json={"model": M, "messages": turns, "max_tokens": 2}, timeout=60)
    assert r.status_code == 200, r.text  # arguments that are not JSON within limits stay a string
    r = httpx.post(url, json={"model": M, "messages": USER, "max_tokens": 2, "structured_outputs": {"json": text}},
                   timeout=60)
    assert r.status_code == 400 and r.json()["error"]["message"].startswith("the JSON schema string")
    assert r.json()["error"]["param"].startswith("structured_outputs")


@pytest.mark.parametrize(("text", "quotes"), [
    (rb'"a"', [0, 2]),
    (rb'"a\"b"', [0, 5]),  # an escaped quote is text
    (rb'"a\\"', [0, 4]),  # an escaped backslash, then the closing quote
    (rb'"a\\\"b" ', [0, 7]),
    (rb'["x", "\\\\"]', [1, 3, 6, 11]),
])
def test_literal_quotes_skip_escaped_ones(text: bytes, quotes: list[int]) -> None:
    assert json.loads(text) is not None
    assert literal_quotes(np.frombuffer(text, dtype=np.uint8)).tolist() == quotes


def test_brackets_and_digits_behind_escaped_quotes_are_inside_the_string() -> None:
    inside = '\\"' + "[" * 40 + "1" * 60 + '\\"'
    parse_body(json.dumps({"model": "m", "prompt": inside}).encode(), CompletionRequest)
    with pytest.raises(InvalidRequestError, match="nests deeper"):
        parse_json(b'{"a": "\\\\", "b": ' + b"[" * 40 + b"]" * 40 + b"}")
