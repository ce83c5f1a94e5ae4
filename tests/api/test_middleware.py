"""API keys on every working route, CORS only for listed origins, body size limit."""

from __future__ import annotations

import httpx
import pytest

from tests.api.conftest import API_KEY

ROUTES = [("GET", "/v1/models"), ("GET", "/v1/models/tiny-llama"), ("GET", "/ready"),
          ("POST", "/v1/chat/completions"), ("POST", "/v1/completions")]


def _root(url: str) -> str:
    return url.removesuffix("/v1")


@pytest.mark.parametrize(("method", "path"), ROUTES)
@pytest.mark.parametrize("auth", [None, "Bearer sk-wrong-key-1234", "Basic abc", f"bearer{API_KEY}"])
def test_every_working_route_needs_the_key(keyed_base_url: str, method: str, path: str, auth: str | None) -> None:
    headers = {"Authorization": auth} if auth else {}
    r = httpx.request(method, _root(keyed_base_url) + path, headers=headers, json={})
    assert r.status_code == 401
    assert r.json()["error"]["type"] == "authentication_error"


def test_health_is_open_and_the_right_key_works(keyed_base_url: str) -> None:
    assert httpx.get(_root(keyed_base_url) + "/health").status_code == 200
    r = httpx.post(keyed_base_url + "/chat/completions", headers={"Authorization": f"Bearer {API_KEY}"},
                   json={"model": "tiny-llama", "messages": [{"role": "user", "content": "x"}], "max_tokens": 2})
    assert r.status_code == 200


def test_cors_allows_only_listed_origins(keyed_base_url: str, base_url: str) -> None:
    preflight = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization"}
    ok = httpx.options(keyed_base_url + "/chat/completions", headers={"Origin": "http://ui.example", **preflight})
    assert ok.status_code == 200 and ok.headers["access-control-allow-origin"] == "http://ui.example"
    bad = httpx.options(keyed_base_url + "/chat/completions", headers={"Origin": "http://evil.example", **preflight})
    assert "access-control-allow-origin" not in bad.headers
    off = httpx.get(base_url + "/models", headers={"Origin": "http://ui.example"})
    assert "access-control-allow-origin" not in off.headers


def test_key_comparison_is_constant_time_over_all_keys() -> None:
    from llmserve.api.middleware import key_matches

    assert key_matches("k1-aaaaaaaa", ["k0-zzzzzzzz", "k1-aaaaaaaa"])
    assert not key_matches("k1-aaaaaaa", ["k1-aaaaaaaa"])
    assert not key_matches("", ["k1-aaaaaaaa"])


def test_two_authorization_headers_are_refused(keyed_base_url: str) -> None:
    headers = [("Authorization", f"Bearer {API_KEY}"), ("Authorization", "Bearer sk-other-key-123")]
    r = httpx.get(keyed_base_url + "/models", headers=headers)
    assert r.status_code == 400
    assert r.json()["error"]["type"] == "invalid_request_error" and "exactly one" in r.json()["error"]["message"]
    assert httpx.get(keyed_base_url + "/models", headers=headers[:1]).status_code == 200


def test_json_and_script_responses_are_never_sniffed(keyed_base_url: str) -> None:
    root = _root(keyed_base_url)
    for response in (httpx.get(root + "/health"), httpx.get(keyed_base_url + "/models"),
                     httpx.get(root + "/ui/static/app.js"), httpx.get(root + "/nothing")):
        assert response.headers["x-content-type-options"] == "nosniff", response.url


def test_ui_pages_under_static_get_the_pages_security_headers(keyed_base_url: str) -> None:
    from llmserve.ui.routes import PAGE_HEADERS

    root = _root(keyed_base_url)
    for path in ("/", "/ui/static/index.html", "/ui/static/arena.html"):
        r = httpx.get(root + path)
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
        for name, value in PAGE_HEADERS.items():
            assert r.headers[name] == value, (path, name)
