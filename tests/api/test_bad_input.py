"""Malformed requests: each gets the right 4xx with the OpenAI error shape, and the server stays healthy."""

from __future__ import annotations

import httpx
import pytest

M = "tiny-llama"
USER = [{"role": "user", "content": "hi"}]
CHAT, COMP = "/chat/completions", "/completions"

CASES = [
    # (name, path, json body or raw bytes, headers, status, param)
    ("invalid json", CHAT, b"{not json", None, 400, None),
    ("json array body", CHAT, b"[1, 2]", None, 400, None),
    ("bad utf-8", CHAT, b'{"model": "\xff\xfe"}', None, 400, None),
    ("wrong content type", CHAT, b"model=x", {"content-type": "application/x-www-form-urlencoded"}, 415, None),
    ("missing model", CHAT, {"messages": USER}, None, 400, "model"),
    ("missing messages", CHAT, {"model": M}, None, 400, "messages"),
    ("empty messages", CHAT, {"model": M, "messages": []}, None, 400, "messages"),
    ("unknown role", CHAT, {"model": M, "messages": [{"role": "robot", "content": "x"}]}, None, 400,
     "messages.0.role"),
    ("messages not a list", CHAT, {"model": M, "messages": "hi"}, None, 400, "messages"),
    ("message without role", CHAT, {"model": M, "messages": [{"content": "x"}]}, None, 400, "messages.0.role"),
    ("image content part", CHAT, {"model": M, "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "http://x"}}]}]}, None, 400, "messages.0.content.0"),
    ("model wrong type", CHAT, {"model": 5, "messages": USER}, None, 400, "model"),
    ("unknown model", CHAT, {"model": "gpt-9", "messages": USER}, None, 404, "model"),
    ("temperature too high", CHAT, {"model": M, "messages": USER, "temperature": 2.5}, None, 400, "temperature"),
    ("temperature negative", CHAT, {"model": M, "messages": USER, "temperature": -1}, None, 400, "temperature"),
    ("temperature string", CHAT, {"model": M, "messages": USER, "temperature": "hot"}, None, 400, "temperature"),
    ("top_p above one", CHAT, {"model": M, "messages": USER, "top_p": 1.5}, None, 400, "top_p"),
    ("top_k below -1", CHAT, {"model": M, "messages": USER, "top_k": -5}, None, 400, "top_k"),
    ("n zero", CHAT, {"model": M, "messages": USER, "n": 0}, None, 400, "n"),
    ("n huge", CHAT, {"model": M, "messages": USER, "n": 1000}, None, 400, "n"),
    ("max_tokens zero", CHAT, {"model": M, "messages": USER, "max_tokens": 0}, None, 400, "max_tokens"),
    ("max_tokens fractional", CHAT, {"model": M, "messages": USER, "max_tokens": 1.5}, None, 400, "max_tokens"),
    ("max_tokens over context", CHAT, {"model": M, "messages": USER, "max_tokens": 10**7}, None, 400, "max_tokens"),
    ("max_completion_tokens zero", CHAT, {"model": M, "messages": USER, "max_completion_tokens": 0}, None, 400,
     "max_completion_tokens"),
    ("presence penalty", CHAT, {"model": M, "messages": USER, "presence_penalty": 3}, None, 400,
     "presence_penalty"),
    ("frequency penalty", CHAT, {"model": M, "messages": USER, "frequency_penalty": -3}, None, 400,
     "frequency_penalty"),
    ("repetition penalty zero", CHAT, {"model": M, "messages": USER, "repetition_penalty": 0}, None, 400,
     "repetition_penalty"),
    ("top_logprobs huge", CHAT, {"model": M, "messages": USER, "logprobs": True, "top_logprobs": 50}, None, 400,
     "top_logprobs"),
    ("top_logprobs without logprobs", CHAT, {"model": M, "messages": USER, "top_logprobs": 2}, None, 400,
     "top_logprobs"),
    ("too many stops", CHAT, {"model": M, "messages": USER, "stop": [str(i) for i in range(40)]}, None, 400,
     "stop"),
    ("stop too long", CHAT, {"model": M, "messages": USER, "stop": "x" * 1000}, None, 400, "stop"),
    ("stop wrong type", CHAT, {"model": M, "messages": USER, "stop": 5}, None, 400, "stop"),
    ("stream_options without stream", CHAT, {"model": M, "messages": USER,
                                             "stream_options": {"include_usage": True}}, None, 400, "stream_options"),
    ("seed string", CHAT, {"model": M, "messages": USER, "seed": "abc"}, None, 400, "seed"),
    ("stream not bool", CHAT, {"model": M, "messages": USER, "stream": "maybe"}, None, 400, "stream"),
    ("prompt over context", COMP, {"model": M, "prompt": [1] * 5000, "max_tokens": 1}, None, 400, "prompt"),
    ("empty prompt", COMP, {"model": M, "prompt": ""}, None, 400, "prompt"),
    ("empty prompt list", COMP, {"model": M, "prompt": []}, None, 400, "prompt"),
    ("missing prompt", COMP, {"model": M}, None, 400, "prompt"),
    ("token id out of vocab", COMP, {"model": M, "prompt": [1, 999999]}, None, 400, "prompt"),
    ("negative token id", COMP, {"model": M, "prompt": [-1]}, None, 400, "prompt"),
    ("prompt wrong type", COMP, {"model": M, "prompt": {"a": 1}}, None, 400, "prompt"),
    ("completion logprobs huge", COMP, {"model": M, "prompt": "x", "logprobs": 100}, None, 400, "logprobs"),
    ("max_tokens zero without echo", COMP, {"model": M, "prompt": "x", "max_tokens": 0}, None, 400, "max_tokens"),
    ("suffix", COMP, {"model": M, "prompt": "x", "suffix": "y"}, None, 400, "suffix"),
    ("best_of", COMP, {"model": M, "prompt": "x", "best_of": 3}, None, 400, "best_of"),
    ("huge body", CHAT, b'{"model": "' + b"x" * 5_000_000 + b'"}', None, 413, None),
]


@pytest.mark.parametrize(("name", "path", "body", "headers", "status", "param"), CASES, ids=[c[0] for c in CASES])
def test_bad_request_gets_openai_error(base_url: str, name, path, body, headers, status, param) -> None:
    kwargs = {"content": body} if isinstance(body, bytes) else {"json": body}
    send_headers = {"content-type": "application/json", **(headers or {})}
    r = httpx.post(base_url + path, headers=send_headers, timeout=30, **kwargs)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["message"] and isinstance(error["type"], str)
    assert error["param"] == param
    for leak in ("Traceback", "/work", "site-packages", " at 0x"):
        assert leak not in error["message"]


def test_unknown_fields_are_ignored(base_url: str) -> None:
    r = httpx.post(base_url + CHAT, json={"model": M, "messages": USER, "max_tokens": 2, "store": True,
                                          "metadata": {"a": "b"}, "service_tier": "auto", "user": "u1"}, timeout=30)
    assert r.status_code == 200


def test_unknown_route_and_method(base_url: str) -> None:
    r = httpx.get(base_url + "/nothing-here")
    assert r.status_code == 404 and r.json()["error"]["type"] == "invalid_request_error"
    r = httpx.get(base_url + CHAT)
    assert r.status_code == 405 and "error" in r.json()


def test_server_is_healthy_after_the_table(base_url: str) -> None:
    for case in CASES:
        kwargs = {"content": case[2]} if isinstance(case[2], bytes) else {"json": case[2]}
        httpx.post(base_url + case[1], headers={"content-type": "application/json", **(case[3] or {})},
                   timeout=30, **kwargs)
    root = base_url.removesuffix("/v1")
    assert httpx.get(root + "/health").status_code == 200
    assert httpx.get(root + "/ready").status_code == 200
    r = httpx.post(base_url + CHAT, json={"model": M, "messages": USER, "max_tokens": 3}, timeout=30)
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] >= 1


def test_a_large_prompt_is_tokenized_off_the_event_loop_and_counted(base_url: str) -> None:
    text = "The quick brown fox jumps over the lazy dog. " * 1000  # 45 KB: tokenized in a thread
    r = httpx.post(base_url + COMP, json={"model": M, "prompt": text, "max_tokens": 1}, timeout=60)
    assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded"
    assert "4096" in r.json()["error"]["message"]
    r = httpx.post(base_url + CHAT, json={"model": M, "messages": [{"role": "user", "content": text}]}, timeout=60)
    assert r.status_code == 400 and r.json()["error"]["param"] == "messages"
