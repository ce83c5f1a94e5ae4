"""The UI's HTTP surface: open pages and static files, keyed JSON endpoints, validation, switching off.

Most tests load no model: the app is driven without its lifespan, and named votes only need the
configured names. The battle tests need ready workers, so they share one live two-model server.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from starlette.testclient import TestClient

from llmserve.app import create_app
from llmserve.worker import WorkerState

from .live import API_KEY, MODELS, LiveServer, live_server, ui_config

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


@pytest.mark.parametrize(("method", "path"), [("POST", "/ui/api/vote"), ("POST", "/ui/api/battle"),
                                              ("GET", "/ui/api/leaderboard"), ("GET", "/v1/models")])
def test_routes_that_do_work_need_the_key(client: TestClient, method: str, path: str) -> None:
    response = client.request(method, path, json=VOTE if method == "POST" else None)
    assert response.status_code == 401
    assert response.json() == error("Missing API key: send 'Authorization: Bearer <key>'", code="invalid_api_key",
                                    error_type="authentication_error")


def test_named_vote_is_appended_but_not_ranked(client: TestClient, votes_path: Path) -> None:
    assert client.get("/ui/api/leaderboard", headers=KEY).json() == {"object": "list", "num_votes": 0, "data": []}
    response = client.post("/ui/api/vote", json=VOTE, headers=KEY)
    assert response.status_code == 200
    body = response.json()
    assert body == {"object": "vote", "left": "tiny-a", "right": "tiny-b", "winner": "right", "anonymous": False,
                    "prompt_sha256": body["prompt_sha256"], "time_s": body["time_s"]}
    [line] = [json.loads(line) for line in votes_path.read_text().splitlines()]
    assert (line["winner"], line["anonymous"], len(line["prompt_sha256"])) == ("right", False, 64)
    assert client.get("/ui/api/leaderboard", headers=KEY).json() == {"object": "list", "num_votes": 0, "data": []}


def test_a_battle_needs_two_ready_models(client: TestClient) -> None:
    response = client.post("/ui/api/battle", headers=KEY)  # no lifespan: no worker is ready
    assert (response.status_code, response.json()) == (400, error(
        "a battle needs two served text-generation models; 0 are ready now", code="not_enough_models"))


@pytest.mark.parametrize(("changes", "expected"), [
    ({"winner": "left better"}, error("invalid value for 'winner': Input should be 'left', 'right', 'tie' or "
                                      "'both_bad'", "winner")),
    ({"left": "gpt-9"}, error("the model 'gpt-9' is not served here", "left", "model_not_found")),
    ({"right": "tiny-a"}, error("left and right must be two different models", "right")),
    ({"prompt": None}, error("invalid value for 'prompt': Input should be a valid string", "prompt")),
    ({"extra": 1}, error("invalid value for 'extra': Extra inputs are not permitted", "extra")),
    # A client can no longer claim which models fought in a ranked battle.
    ({"anonymous": True}, error("invalid value for 'anonymous': Extra inputs are not permitted", "anonymous")),
    ({"battle_id": "f" * 24}, error("a battle vote names no models: the server knows which ones fought", "left")),
    ({"battle_id": "f" * 24, "left": None, "right": None},
     error(f"the battle '{'f' * 24}' does not exist or has expired; start a new one", "battle_id",
           "battle_not_found")),
])
def test_bad_votes_get_openai_shaped_400s(client: TestClient, votes_path: Path, changes: dict,
                                          expected: dict) -> None:
    response = client.post("/ui/api/vote", json={**VOTE, **changes}, headers=KEY)
    assert (response.status_code, response.json()) == (400, expected)
    assert not votes_path.exists()


def test_missing_field_and_non_json_body(client: TestClient) -> None:
    missing = client.post("/ui/api/vote", json={"left": "tiny-a", "right": "tiny-b", "prompt": "x"}, headers=KEY)
    assert (missing.status_code, missing.json()) == (400, error("'winner' is a required property", "winner"))
    no_right = client.post("/ui/api/vote", json={"left": "tiny-a", "winner": "tie", "prompt": "x"}, headers=KEY)
    assert (no_right.status_code, no_right.json()) == (
        400, error("'right' is a required property unless 'battle_id' is given", "right"))
    broken = client.post("/ui/api/vote", content=b"{", headers={**KEY, "Content-Type": "application/json"})
    assert broken.status_code == 400 and broken.json()["error"]["type"] == "invalid_request_error"


def test_ui_switched_off_is_404_everywhere(votes_path: Path) -> None:
    client = TestClient(create_app(ui_config("/nonexistent/model", votes_path, enabled=False, api_keys=[API_KEY])))
    for method, path in [("GET", "/"), ("GET", "/arena"), ("GET", "/leaderboard"), ("GET", "/ui/static/app.js"),
                         ("POST", "/ui/api/vote"), ("POST", "/ui/api/battle"), ("GET", "/ui/api/leaderboard")]:
        response = client.request(method, path, headers=KEY, json=VOTE if method == "POST" else None)
        assert response.status_code == 404, path
        assert response.json()["error"]["type"] == "invalid_request_error"
    assert client.get("/health").status_code == 200


@pytest.fixture(scope="module")
def live(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    votes = tmp_path_factory.mktemp("battles") / "votes.jsonl"
    with live_server(ui_config(tiny_model_dir, votes, api_keys=[API_KEY])) as server:
        yield server


def post(live: LiveServer, path: str, body: dict | None = None) -> httpx.Response:
    return httpx.post(live.url + path, json=body, headers=KEY, timeout=30)


def test_a_battle_hands_out_aliases_only(live: LiveServer) -> None:
    response = post(live, "/ui/api/battle")
    assert response.status_code == 200
    battle = response.json()
    battle_id = battle["battle_id"]
    assert battle == {"object": "battle", "battle_id": battle_id,
                      "left": f"battle-{battle_id}-left", "right": f"battle-{battle_id}-right"}
    assert not any(name in response.text for name in MODELS)


def test_aliases_resolve_and_are_echoed(live: LiveServer) -> None:
    battle, streamed_battle = post(live, "/ui/api/battle").json(), post(live, "/ui/api/battle").json()
    for side in ("left", "right"):
        request = {"model": battle[side], "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4}
        answer = post(live, "/v1/chat/completions", request)
        assert answer.status_code == 200 and answer.json()["model"] == battle[side]
        streamed = post(live, "/v1/chat/completions", {**request, "model": streamed_battle[side], "stream": True})
        events = [line[6:] for line in streamed.text.splitlines() if line.startswith("data: ")]
        assert events[-1] == "[DONE]" and {json.loads(e)["model"] for e in events[:-1]} == {streamed_battle[side]}
        assert not any(name in answer.text + streamed.text for name in MODELS)
        again = post(live, "/v1/chat/completions", request)  # one question per side
        assert (again.status_code, again.json()["error"]["code"]) == (400, "battle_side_used")


@pytest.mark.parametrize(("path", "body"), [
    ("/v1/completions", {"prompt": "Hi", "max_tokens": 2}), ("/v1/tokenize", {"prompt": "Hi"}),
    ("/v1/responses", {"input": "Hi", "max_output_tokens": 2}), ("/v1/embeddings", {"input": "Hi"})])
def test_aliases_are_unknown_off_the_chat_route(live: LiveServer, path: str, body: dict) -> None:
    """Token ids, token counts and logprobs from these routes would name the tokenizer behind an alias."""
    battle = post(live, "/ui/api/battle").json()
    response = post(live, path, {"model": battle["left"], **body})
    assert (response.status_code, response.json()["error"]["code"]) == (404, "model_not_found")
    assert battle["left"] in response.json()["error"]["message"]


@pytest.mark.parametrize("model", ["battle-" + "0" * 24 + "-left", "battle-x-left", "battle-" + "0" * 24 + "-up"])
def test_unknown_aliases_are_404s(live: LiveServer, model: str) -> None:
    post(live, "/ui/api/battle")  # the store is hooked in: unknown aliases still miss
    response = post(live, "/v1/chat/completions", {"model": model, "messages": [{"role": "user", "content": "Hi"}]})
    assert (response.status_code, response.json()) == (404, error(
        f"The model '{model}' does not exist. Served models: tiny-a, tiny-b", "model", "model_not_found"))


def test_a_battle_model_that_is_not_ready_keeps_its_name_secret(live: LiveServer) -> None:
    battle = post(live, "/ui/api/battle").json()
    workers = live.app.state.server.workers
    states = [w.state for w in workers]
    try:
        for worker in workers:
            worker.state = WorkerState.LOADING
        response = post(live, "/v1/chat/completions", {"model": battle["left"], "messages": [
            {"role": "user", "content": "Hi"}], "max_tokens": 2})
    finally:
        for worker, state in zip(workers, states, strict=True):
            worker.state = state
    # Which side is not ready would tell the models apart: the battle's one generic error, the battle void.
    assert (response.status_code, response.json()) == (400, error(
        "the answer could not be generated for this prompt; start a new battle", code="battle_answer_failed"))
    assert "retry-after" not in response.headers


def answer(live: LiveServer, alias: str, *, stream: bool = False) -> httpx.Response:
    """One battle side's answer, read in full."""
    return post(live, "/v1/chat/completions", {"model": alias, "messages": [{"role": "user", "content": "Hello"}],
                                               "max_tokens": 3, "stream": stream})


def test_a_battle_vote_records_and_reveals_the_real_models_once(live: LiveServer) -> None:
    battle = post(live, "/ui/api/battle").json()
    vote = {"battle_id": battle["battle_id"], "winner": "left", "prompt": "Hello"}
    not_answered = error("vote once both answers of the battle have arrived", "battle_id", "battle_not_answered")
    for side, stream in (("left", True), ("right", False)):
        early = post(live, "/ui/api/vote", vote)
        assert (early.status_code, early.json()) == (400, not_answered)
        assert answer(live, battle[side], stream=stream).status_code == 200
    response = post(live, "/ui/api/vote", vote)
    assert response.status_code == 200
    body = response.json()
    assert {body["left"], body["right"]} == set(MODELS)
    assert body == {"object": "vote", "battle_id": battle["battle_id"], "left": body["left"], "right": body["right"],
                    "winner": "left", "anonymous": True, "prompt_sha256": body["prompt_sha256"],
                    "time_s": body["time_s"]}
    lines = [json.loads(line) for line in live.votes_path.read_text().splitlines()]
    assert [(v["left"], v["right"], v["anonymous"]) for v in lines] == [(body["left"], body["right"], True)]

    again = post(live, "/ui/api/vote", {**vote, "winner": "right"})
    assert (again.status_code, again.json()) == (400, error(
        "this battle has already been voted on; start a new one", "battle_id", "battle_already_voted"))
    assert len(live.votes_path.read_text().splitlines()) == 1
    board = httpx.get(live.url + "/ui/api/leaderboard", headers=KEY).json()
    assert board["num_votes"] == 1 and [row["model"] for row in board["data"]] == [body["left"], body["right"]]
