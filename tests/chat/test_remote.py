"""`llmserve chat --base-url` against a real `llmserve run` subprocess."""

from __future__ import annotations

import json
import time

import httpx
import pytest

from llmserve.cli import main

from .server import MODEL_NAME

pytestmark = pytest.mark.timeout(120)


def wait_idle(base_url: str, timeout_s: float = 10.0) -> int:
    """Sequences still unfinished on the server once it is idle (0), or after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        workers = httpx.get(f"{base_url.removesuffix('/v1')}/ready", timeout=5).json()["workers"]
        num_unfinished = sum(w["num_unfinished"] for w in workers)
        if num_unfinished == 0 or time.monotonic() > deadline:
            return num_unfinished
        time.sleep(0.05)


def test_remote_chat_streams_keeps_history_and_stops_on_ctrl_c(spawn_chat, server_url: str) -> None:
    # Long answers, stopped by Ctrl-C; the --debug line shows what was sent each turn.
    term = spawn_chat("--base-url", server_url, "--model", MODEL_NAME, "--style", "simple", "--debug",
                      "--temperature", "0", "--max-new-tokens", "3000")
    debug_lines = []
    for message in ("hello server", "and again"):
        term.expect("user: ")
        term.send(message)
        term.expect("assistant: ")
        term.expect(r"\S{4}")
        term.interrupt()
        term.notice("answer stopped]")
        debug_lines.append(term.debug_line())
        assert wait_idle(server_url) == 0  # closing the stream aborted the request on the server
    first, second = debug_lines
    assert first["conv_template"] == f"server-side ({MODEL_NAME})"
    assert json.loads(first["prompt"]) == [{"role": "user", "content": "hello server"}]
    assert json.loads(second["prompt"]) == [
        {"role": "user", "content": "hello server"}, {"role": "assistant", "content": first["outputs"]},
        {"role": "user", "content": "and again"},
    ]
    assert first["outputs"] and first["speed (token/s)"] > 0
    term.send("!!exit")
    assert term.wait_exit() == 0


def test_remote_chat_refuses_a_model_the_server_does_not_serve(server_url: str, capsys) -> None:
    assert main(["chat", "--base-url", server_url, "--model", "no-such-model"]) == 1
    err = capsys.readouterr().err
    assert err == (f"llmserve chat: model 'no-such-model' is not served by {server_url} "
                   f"(served: {MODEL_NAME})\n")


def test_loading_flags_need_model_path(capsys) -> None:
    assert main(["chat", "--base-url", "http://127.0.0.1:9/v1", "--device", "cpu", "--load-8bit"]) == 2
    assert "--device, --load-8bit: only with --model-path" in capsys.readouterr().err
