"""CORS with FastChat's options: allowed_origins, allow_credentials, allowed_methods, allowed_headers.

Preflights are answered by the middleware before any route, so the app is driven in-process
without loading its workers.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from starlette.testclient import TestClient

from llmserve.app import create_app
from llmserve.config import parse_config
from llmserve.errors import ConfigError

ORIGIN = "http://ui.example"


@pytest.fixture
def client_for() -> Iterator:
    clients: list[TestClient] = []

    def make(**server: object) -> TestClient:
        config = parse_config({"server": server, "workers": [{"model_path": "/nonexistent/model"}]})
        clients.append(TestClient(create_app(config, engine_factory=lambda *a, **k: None)))
        return clients[-1]

    yield make
    for client in clients:
        client.close()


def preflight(client: TestClient, origin: str = ORIGIN, method: str = "POST", headers: str = "") -> dict:
    request_headers = {"Origin": origin, "Access-Control-Request-Method": method}
    if headers:
        request_headers["Access-Control-Request-Headers"] = headers
    response = client.options("/v1/chat/completions", headers=request_headers)
    return {"status": response.status_code, **{k.lower(): v for k, v in response.headers.items()}}


def test_origins_listed_or_any(client_for) -> None:
    listed = client_for(allowed_origins=[ORIGIN])
    assert preflight(listed)["access-control-allow-origin"] == ORIGIN
    refused = preflight(listed, origin="http://evil.example")
    assert refused["status"] == 400 and "access-control-allow-origin" not in refused
    anyone = client_for(allowed_origins=["*"])
    assert preflight(anyone, origin="http://evil.example")["access-control-allow-origin"] == "*"
    off = client_for()
    assert "access-control-allow-origin" not in preflight(off)


def test_allow_credentials(client_for) -> None:
    with_credentials = client_for(allowed_origins=[ORIGIN], allow_credentials=True)
    assert preflight(with_credentials)["access-control-allow-credentials"] == "true"
    simple = with_credentials.get("/health", headers={"Origin": ORIGIN})
    assert simple.headers["access-control-allow-credentials"] == "true"
    assert simple.headers["access-control-allow-origin"] == ORIGIN
    without = client_for(allowed_origins=[ORIGIN])
    assert "access-control-allow-credentials" not in preflight(without)


def test_allowed_methods(client_for) -> None:
    default = client_for(allowed_origins=[ORIGIN])
    assert preflight(default, method="POST")["status"] == 200
    assert preflight(default, method="DELETE")["status"] == 400
    get_only = client_for(allowed_origins=[ORIGIN], allowed_methods=["GET"])
    assert preflight(get_only, method="GET")["status"] == 200
    assert preflight(get_only, method="POST")["status"] == 400
    anything = client_for(allowed_origins=[ORIGIN], allowed_methods=["*"])
    assert preflight(anything, method="DELETE")["status"] == 200


def test_allowed_headers(client_for) -> None:
    default = client_for(allowed_origins=[ORIGIN])
    assert preflight(default, headers="authorization, content-type")["status"] == 200
    assert preflight(default, headers="x-custom")["status"] == 400
    narrow = client_for(allowed_origins=[ORIGIN], allowed_headers=["Content-Type"])
    assert preflight(narrow, headers="content-type")["status"] == 200
    assert preflight(narrow, headers="authorization")["status"] == 400
    anything = client_for(allowed_origins=[ORIGIN], allowed_headers=["*"])
    answer = preflight(anything, headers="x-custom")
    assert answer["status"] == 200 and "x-custom" in answer["access-control-allow-headers"].lower()


@pytest.mark.parametrize(("server", "message"), [
    ({"allowed_origins": ["*"], "allow_credentials": True},
     'server.allow_credentials = true: browsers refuse credentials with allowed_origins = ["*"]'),
    ({"allow_credentials": True}, "server.allow_credentials = true: has no effect without allowed_origins"),
    ({"allowed_methods": ["GET"]}, "server.allowed_methods = ['GET']: has no effect without allowed_origins"),
    ({"allowed_headers": ["*"]}, "server.allowed_headers = ['*']: has no effect without allowed_origins"),
    ({"allowed_origins": [ORIGIN], "allowed_methods": ["FETCH"]}, 'server.allowed_methods[0] = "FETCH": expected'),
    ({"allowed_origins": [ORIGIN], "allowed_headers": ["bad header"]},
     'server.allowed_headers[0] = "bad header": expected "*" or an HTTP header name'),
])
def test_cors_settings_are_validated(server: dict, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config({"server": server, "workers": [{"model_path": "m"}]})
    assert str(info.value).startswith(message)
