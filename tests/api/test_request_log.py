"""One log line per finished request, with ids, counts and timings but no prompt text by default;
requests cannot bring their own chat template."""

from __future__ import annotations

import logging

import httpx
import pytest

from tests.api.conftest import live_server, tiny_config

SECRET = "my-private-prompt-text"


def _request_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "llmserve.worker" and "request " in r.getMessage()]


def test_one_line_per_request_without_prompt_text(base_url: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    r = httpx.post(f"{base_url}/chat/completions", timeout=30, json={
        "model": "tiny-llama", "messages": [{"role": "user", "content": SECRET}], "max_tokens": 5,
        "ignore_eos": True})
    body = r.json()
    lines = [line for line in _request_lines(caplog) if body["id"] in line]
    assert len(lines) == 1
    line = lines[0]
    assert "model=tiny-llama worker=worker-0" in line
    assert f"prompt_tokens={body['usage']['prompt_tokens']} output_tokens=5" in line
    assert "ttft_ms=" in line and "duration_ms=" in line and "finish=length" in line
    assert all(SECRET not in record.getMessage() for record in caplog.records)


def test_log_requests_adds_the_prompt(tiny_model_dir, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    with live_server(tiny_config(tiny_model_dir, log_requests=True)) as url:
        httpx.post(f"{url}/completions", json={"model": "tiny-llama", "prompt": SECRET, "max_tokens": 2}, timeout=30)
    assert any(SECRET in record.getMessage() for record in caplog.records)


def test_a_request_cannot_supply_a_chat_template(base_url: str) -> None:
    messages = [{"role": "user", "content": "hi"}]
    plain = httpx.post(f"{base_url}/chat/completions", timeout=30, json={
        "model": "tiny-llama", "messages": messages, "max_tokens": 6, "temperature": 0}).json()
    hostile = httpx.post(f"{base_url}/chat/completions", timeout=30, json={
        "model": "tiny-llama", "messages": messages, "max_tokens": 6, "temperature": 0,
        "chat_template": "{{ cycler.__init__.__globals__.os.popen('id').read() }}"}).json()
    assert hostile["choices"][0]["message"]["content"] == plain["choices"][0]["message"]["content"]
    assert hostile["usage"] == plain["usage"]
