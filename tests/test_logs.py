"""Log hygiene (llmserve/logs.py): what clients send never reaches a log line raw."""

from __future__ import annotations

import logging

import httpx
import pytest
from starlette.requests import Request

from llmserve.app import create_app
from llmserve.logs import escape_control
from tests.api.conftest import live_server, tiny_config

HOSTILE = "\x1b[31mred\x1b[0m\r\nFAKE 200 OK\x00\x9b\u2028"


def test_escape_control_writes_every_control_character_as_an_escape() -> None:
    assert escape_control(HOSTILE) == "\\x1b[31mred\\x1b[0m\\r\\nFAKE 200 OK\\x00\\x9b\\u2028"
    assert escape_control("a\nb\tc", keep_newlines=True) == "a\nb\\tc"
    assert escape_control("plain text é 中") == "plain text é 中"


def test_hostile_paths_and_headers_are_escaped_in_the_log(tiny_model_dir, caplog: pytest.LogCaptureFixture) -> None:
    config = tiny_config(tiny_model_dir)
    app = create_app(config)

    async def boom(request: Request) -> None:  # an unhandled error that quotes what the client sent
        raise RuntimeError(f"cannot handle {request.headers['x-evil']}")

    app.add_route("/boom/{rest:path}", boom)
    with live_server(config, app=app) as url, caplog.at_level(logging.INFO):
        root = url.removesuffix("/v1")
        # HTTP refuses raw controls in a request line; percent-encoded, they reach the decoded path.
        r = httpx.get(root + "/boom/%1b%5b31mred%09FAKE%9b", headers={"X-Evil": b"\x9b2J\twipe"})
        assert r.status_code == 500 and r.json()["error"]["type"] == "internal_error"
        r = httpx.post(url + "/completions", json={"model": "\x1b[31m\r\nnope", "prompt": "x"})
        assert r.status_code == 404
    text = caplog.text
    assert "unhandled error on GET /boom/\\x1b[31mred" in text
    assert "cannot handle \\x9b2J\\twipe" in text  # HTTP lets 8-bit CSI and tabs into header values
    assert not any(c in text.replace("\n", "") for c in "\x1b\r\x00\x7f\x9b")
