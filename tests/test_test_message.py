"""Tests of llmserve/test_message.py and `llmserve test-message` against a running server."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from chat.server import MODEL_NAME, free_port, running_server

from llmserve.cli import main
from llmserve.test_message import MessageCheckError, check_message

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def server_url(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with running_server(tiny_model_dir, tmp_path_factory.mktemp("test-message-server")) as url:
        yield url


def test_passes_against_a_running_server(server_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["test-message", "--model-name", MODEL_NAME, "--base-url", server_url, "--max-tokens", "16"])
    out, err = capsys.readouterr()
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == f"models: {MODEL_NAME}"
    assert lines[1].startswith("user: Tell me a story") and lines[2].startswith("assistant: ")
    assert len(lines[2]) > len("assistant: ")
    assert lines[-1].startswith("TTFT ") and " tokens/s (16 tokens in " in lines[-1]


def test_measures_ttft_and_speed(server_url: str) -> None:
    result = check_message(server_url, MODEL_NAME, message="hi", max_tokens=8)
    assert result.num_output_tokens == 8 and result.reply
    assert 0 < result.time_to_first_token_s <= result.elapsed_s and result.tokens_per_s > 0


def test_fails_for_a_model_the_server_does_not_serve(server_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["test-message", "--model-name", "nope", "--base-url", server_url]) == 1
    assert capsys.readouterr().err == (f"llmserve test-message: model 'nope' is not served by {server_url} "
                                       f"(served: {MODEL_NAME})\n")


def test_fails_for_a_dead_port(capsys: pytest.CaptureFixture[str]) -> None:
    url = f"http://127.0.0.1:{free_port()}/v1"
    assert main(["test-message", "--model-name", MODEL_NAME, "--base-url", url]) == 1
    assert capsys.readouterr().err == f"llmserve test-message: cannot reach {url}: connection refused\n"


def _empty_reply_server(request: httpx.Request) -> httpx.Response:
    if request.url.path.endswith("/models"):
        return httpx.Response(200, json={"object": "list", "data": [{"id": "m", "object": "model"}]})
    chunks = [{"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]},
              {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}]
    body = "".join(f"data: {json.dumps(c)}\n\n" for c in chunks) + "data: [DONE]\n\n"
    return httpx.Response(200, text=body, headers={"content-type": "text/event-stream"})


def test_fails_for_an_empty_reply() -> None:
    with pytest.raises(MessageCheckError, match=r"^model 'm' sent an empty reply \(finish reason: stop\)$"):
        check_message("http://server.test/v1", "m", transport=httpx.MockTransport(_empty_reply_server))


def test_fails_for_an_error_status() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        return httpx.Response(401, json={"error": {"message": "Invalid API key", "type": "authentication_error"}})

    with pytest.raises(MessageCheckError, match=r"^HTTP 401: Invalid API key$"):
        check_message("http://server.test/v1", "m", transport=httpx.MockTransport(refuse))
