"""The UI's HTTP surface: open pages and static files, keyed JSON endpoints, validation, switching off.

No model is loaded: the app is driven without its lifespan, and votes only need the configured names.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from llmserve.app import create_app

from .live import API_KEY, ui_config

KEY = {"Authorization": f"Bearer {API_KEY}"}
VOTE = {"left": "tiny-a", "right": "tiny-b", "winner": "right", "prompt": "Hello"}


@pytest.fixture
def votes_path(tmp_path: Path) -> Path:
    return tmp_path / "votes.jsonl"


@pytest.fixture
def client(votes_path: Path) -> Iterator[TestClient]:
    yield TestClient(create_app(ui_config("/nonexistent/model", votes_path, api_keys=[API_KEY])))


def error(message: str, param: str | None = None, code: str | None = None,
          error_type: str = "invalid_request_error") -> dict:
    return {"error": {"message": message, "type": error_type, "param": param, "code": code}}


@pytest.mark.parametrize(("path", "title"), [("/", "Chat"), ("/arena", "Arena"), ("/leaderboard", "Leaderboard")])
def test_pages_are_open_and_locked_down(client: TestClient, path: str, title: str) -> None:
    response = client.get(path)
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    assert f"<title>llmserve · {title}</title>" in response.text
    csp = response.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "connect-src 'self'" in csp and "frame-ancestors 'none'" in csp
    assert response.headers["x-content-type-options"] == "nosniff"


@pytest.mark.parametrize("name", ["app.js", "arena.js", "leaderboard.js", "api.js", "common.js", "markdown.js",
                                  "style.css", "icon.svg"])
def test_static_files_are_open(client: TestClient, name: str) -> None:
    response = client.get(f"/ui/static/{name}")
    assert response.status_code == 200 and response.content
    kind = {"js": "javascript", "css": "text/css", "svg": "image/svg+xml"}[name.rsplit(".", 1)[1]]
    assert kind in response.headers["content-type"]


def test_static_files_need_no_network(client: TestClient) -> None:
    for name in ("index.html", "arena.html", "leaderboard.html", "app.js", "arena.js", "style.css"):
        text = (Path(__file__).parents[2] / "llmserve/ui/static" / name).read_text()
        assert "http://" not in text and "https://" not in text and "//cdn" not in text, name


@pytest.mark.parametrize(("method", "path"), [("POST", "/ui/api/vote"), ("GET", "/ui/api/leaderboard"),
                                              ("GET", "/v1/models")])
def test_routes_that_do_work_need_the_key(client: TestClient, method: str, path: str) -> None:
    response = client.request(method, path, json=VOTE if method == "POST" else None)
    assert response.status_code == 401
    assert response.json() == error("Missing API key: send 'Authorization: Bearer <key>'", code="invalid_api_key",
                                    error_type="authentication_error")


def test_vote_is_appended_and_ranked(client: TestClient, votes_path: Path) -> None:
    assert client.get("/ui/api/leaderboard", headers=KEY).json() == {"object": "list", "num_votes": 0, "data": []}
    response = client.post("/ui/api/vote", json=VOTE, headers=KEY)
    assert response.status_code == 200
    body = response.json()
    assert body["object"] == "vote" and body["winner"] == "right" and len(body["prompt_sha256"]) == 64
    named = client.post("/ui/api/vote", json={**VOTE, "winner": "left", "anonymous": False}, headers=KEY)
    assert named.status_code == 200
    lines = [json.loads(line) for line in votes_path.read_text().splitlines()]
    assert [(v["winner"], v["anonymous"]) for v in lines] == [("right", True), ("left", False)]
    board = client.get("/ui/api/leaderboard", headers=KEY).json()
    assert board == {"object": "list", "num_votes": 1, "data": [  # only the anonymous battle counts
        {"model": "tiny-b", "rating": 1016.0, "num_battles": 1, "num_wins": 1, "num_losses": 0, "num_ties": 0},
        {"model": "tiny-a", "rating": 984.0, "num_battles": 1, "num_wins": 0, "num_losses": 1, "num_ties": 0}]}


@pytest.mark.parametrize(("changes", "expected"), [
    ({"winner": "left better"}, error("invalid value for 'winner': Input should be 'left', 'right', 'tie' or "
                                      "'both_bad'", "winner")),
    ({"left": "gpt-9"}, error("the model 'gpt-9' is not served here", "left", "model_not_found")),
    ({"right": "tiny-a"}, error("left and right must be two different models", "right")),
    ({"prompt": None}, error("invalid value for 'prompt': Input should be a valid string", "prompt")),
    ({"extra": 1}, error("invalid value for 'extra': Extra inputs are not permitted", "extra")),
])
def test_bad_votes_get_openai_shaped_400s(client: TestClient, votes_path: Path, changes: dict,
                                          expected: dict) -> None:
    response = client.post("/ui/api/vote", json={**VOTE, **changes}, headers=KEY)
    assert (response.status_code, response.json()) == (400, expected)
    assert not votes_path.exists()


def test_missing_field_and_non_json_body(client: TestClient) -> None:
    missing = client.post("/ui/api/vote", json={"left": "tiny-a", "right": "tiny-b", "prompt": "x"}, headers=KEY)
    assert (missing.status_code, missing.json()) == (400, error("'winner' is a required property", "winner"))
    broken = client.post("/ui/api/vote", content=b"{", headers={**KEY, "Content-Type": "application/json"})
    assert broken.status_code == 400 and broken.json()["error"]["type"] == "invalid_request_error"


def test_ui_switched_off_is_404_everywhere(votes_path: Path) -> None:
    client = TestClient(create_app(ui_config("/nonexistent/model", votes_path, enabled=False, api_keys=[API_KEY])))
    for method, path in [("GET", "/"), ("GET", "/arena"), ("GET", "/leaderboard"), ("GET", "/ui/static/app.js"),
                         ("POST", "/ui/api/vote"), ("GET", "/ui/api/leaderboard")]:
        response = client.request(method, path, headers=KEY, json=VOTE if method == "POST" else None)
        assert response.status_code == 404, path
        assert response.json()["error"]["type"] == "invalid_request_error"
    assert client.get("/health").status_code == 200
