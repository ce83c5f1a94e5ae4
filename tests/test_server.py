"""Graceful shutdown of a real server process: on SIGTERM /ready fails at once while new requests are
still served (closing their connections) for `drain_grace`, then the listener closes, in-flight streams
finish, and the process exits 0."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.live_server import free_port, is_running, wait_ready

ROOT = Path(__file__).resolve().parent.parent


def _start(tmp_path: Path, model_dir: Path, shutdown_timeout: float,
           drain_grace: float = 0.0) -> tuple[subprocess.Popen, str]:
    port = free_port()
    config = tmp_path / "config.toml"
    config.write_text(f'[server]\nport = {port}\nshutdown_timeout = {shutdown_timeout}\n'
                      f'drain_grace = {drain_grace}\n[[workers]]\n'
                      f'model_path = "{model_dir}"\nmodel_names = ["tiny"]\nkv_cache_tokens = 16384\n')
    proc = subprocess.Popen([sys.executable, "-m", "llmserve", "run", str(config)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    base = f"http://127.0.0.1:{port}"
    wait_ready(f"{base}/ready", is_running(proc), 90)
    return proc, base


def _stream(base: str, max_tokens: int, results: list, started: threading.Event) -> None:
    body = {"model": "tiny", "prompt": "drain", "max_tokens": max_tokens, "stream": True, "ignore_eos": True}
    text, finish, done = "", None, False
    with httpx.stream("POST", f"{base}/v1/completions", json=body, timeout=60) as response:
        for line in response.iter_lines():
            if not line.startswith("data: "):
                continue
            started.set()
            if line == "data: [DONE]":
                done = True
                break
            chunk = json.loads(line[6:])
            for choice in chunk.get("choices", []):
                text += choice["text"]
                finish = choice["finish_reason"] or finish
    results.append((finish, done))


def _in_flight(base: str, max_tokens: int, count: int) -> tuple[list, list[threading.Thread]]:
    results: list = []
    threads = []
    for _ in range(count):
        started = threading.Event()
        thread = threading.Thread(target=_stream, args=(base, max_tokens, results, started), daemon=True)
        thread.start()
        assert started.wait(30)
        threads.append(thread)
    return results, threads


def test_sigterm_fails_ready_serves_through_the_grace_then_refuses_connections(tmp_path: Path,
                                                                               tiny_model_dir: Path) -> None:
    proc, base = _start(tmp_path, tiny_model_dir, shutdown_timeout=60, drain_grace=1.5)
    try:
        results, threads = _in_flight(base, 400, 8)
        signalled = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.2)
        ready = httpx.get(f"{base}/ready", timeout=10)
        assert ready.status_code == 503 and ready.json()["status"] == "draining"
        late = httpx.post(f"{base}/v1/completions", json={"model": "tiny", "prompt": "late", "max_tokens": 2},
                          timeout=10)
        assert late.status_code == 200 and late.headers["connection"] == "close"
        assert time.monotonic() - signalled < 1.5  # both inside the grace
        time.sleep(1.5)
        with pytest.raises(httpx.ConnectError):  # the listener is closed: a balancer retries elsewhere
            httpx.get(f"{base}/health", timeout=10)
        for thread in threads:
            thread.join(60)
        output, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert results == [("length", True)] * 8
    assert proc.returncode == 0, output


def test_streams_past_the_timeout_end_with_abort(tmp_path: Path, tiny_model_dir: Path) -> None:
    proc, base = _start(tmp_path, tiny_model_dir, shutdown_timeout=0.5)
    try:
        results, threads = _in_flight(base, 3900, 2)
        proc.send_signal(signal.SIGTERM)
        for thread in threads:
            thread.join(60)
        proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert results == [("abort", True)] * 2
    assert proc.returncode == 0


def test_a_missing_httptools_is_warned_about(monkeypatch, caplog) -> None:
    import importlib.util

    from llmserve import server

    assert server.warn_slow_http_stack() == []  # the dev install has both
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "httptools" else real(name, *a))
    with caplog.at_level("WARNING", logger="llmserve.server"):
        assert server.warn_slow_http_stack() == ["httptools"]
    assert "httptools not installed" in caplog.text and "pip install httptools" in caplog.text
