"""The arena cannot be de-anonymised or rigged through the HTTP surface.

- /metrics (and /ready) diffed around one message to a battle's left alias do not say which model
  answered it; with `ui.per_model_metrics` on (the control) the same diff names it.
- A battle takes exactly one vote even when many race for it.
- Battles and votes are rate-limited per client (API key, else address), with OpenAI's 429 body.
- The votes file stays within its size bound; the leaderboard rates a bounded window of votes.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from starlette.testclient import TestClient

from llmserve.app import create_app
from llmserve.config import Config, parse_config
from llmserve.ui.leaderboard import compute_leaderboard
from llmserve.ui.votes import Vote

from .live import API_KEY, MODELS, LiveServer, live_server

OTHER_KEY = "sk-ui-test-other-9876543210"
KEY = {"Authorization": f"Bearer {API_KEY}"}
_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{.*\})? (\S+)$")


def arena_config(model_path: Path | str, votes_path: Path, api_keys: tuple[str, ...] = (API_KEY, OTHER_KEY),
                 **ui: object) -> Config:
    workers = [{"model_path": str(model_path), "model_names": [name], "dtype": "float32",
                "kv_cache_tokens": 4096, "max_num_seqs": 4} for name in MODELS]
    return parse_config({"server": {"api_keys": list(api_keys)}, "workers": workers,
                         "ui": {"votes_path": str(votes_path), **ui}})


def _series(text: str) -> dict[str, float]:
    """Every sample of a Prometheus exposition: `name{labels}` -> value (creation times left out)."""
    out = {}
    for line in text.splitlines():
        match = _SAMPLE.match(line)
        if match and not match[1].endswith("_created"):
            out[match[1] + (match[2] or "")] = float(match[3])
    return out


def _probe_left(server: LiveServer) -> tuple[str, set[str], dict, dict]:
    """Start a battle, send one message to its left alias only; (left's real model, the /metrics
    series that moved, /ready before, /ready after)."""
    battle = httpx.post(server.url + "/ui/api/battle", headers=KEY, timeout=30).json()
    real_left = server.app.state.server.resolve_alias.__self__.model_behind(battle["left"])
    metrics_before = _series(httpx.get(server.url + "/metrics", headers=KEY).text)
    ready_before = httpx.get(server.url + "/ready", headers=KEY).json()
    answer = httpx.post(server.url + "/v1/chat/completions", headers=KEY, timeout=60, json={
        "model": battle["left"], "messages": [{"role": "user", "content": "Which model are you?"}],
        "max_tokens": 6})
    assert answer.status_code == 200 and server.num_unfinished() == 0
    metrics_after = _series(httpx.get(server.url + "/metrics", headers=KEY).text)
    moved = {k for k, v in metrics_after.items() if metrics_before.get(k) != v}
    return real_left, moved, ready_before, httpx.get(server.url + "/ready", headers=KEY).json()


@pytest.fixture(scope="module")
def arena(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    votes = tmp_path_factory.mktemp("arena") / "votes.jsonl"
    with live_server(arena_config(tiny_model_dir, votes, votes_per_minute=0)) as server:
        yield server


def test_metrics_and_ready_diffed_around_a_battle_message_do_not_name_its_model(arena: LiveServer) -> None:
    real_left, moved, ready_before, ready_after = _probe_left(arena)
    assert real_left in MODELS
    assert 'llmserve_generation_tokens_total{model="*"}' in moved  # the probe did move the counters
    assert not [series for series in moved if any(name in series for name in MODELS)]
    assert not [series for series in moved if "worker-" in series]
    assert ready_before == ready_after  # no per-worker load to compare
    assert "num_finished" not in json.dumps(ready_after)


def test_the_same_diff_names_the_model_when_per_model_metrics_are_on(tiny_model_dir: Path, tmp_path: Path) -> None:
    """The control: the attack the default defeats works when the operator opts into per-model series."""
    with live_server(arena_config(tiny_model_dir, tmp_path / "votes.jsonl", per_model_metrics=True)) as server:
        real_left, moved, _, ready_after = _probe_left(server)
    named = {name for name in MODELS if any(f'model="{name}"' in series for series in moved)}
    assert named == {real_left}
    assert "num_finished" in json.dumps(ready_after)


def test_racing_votes_on_one_battle_record_exactly_one(arena: LiveServer) -> None:
    battle = httpx.post(arena.url + "/ui/api/battle", headers=KEY, timeout=30).json()
    for side in ("left", "right"):
        assert httpx.post(arena.url + "/v1/chat/completions", headers=KEY, timeout=60, json={
            "model": battle[side], "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}).status_code == 200
    lines_before = len(arena.votes_path.read_text().splitlines()) if arena.votes_path.exists() else 0

    async def race() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=arena.url, headers=KEY, timeout=30) as client:
            return await asyncio.gather(*(client.post("/ui/api/vote", json={
                "battle_id": battle["battle_id"], "winner": "left", "prompt": "Hi"}) for _ in range(25)))

    responses = asyncio.run(race())
    assert sorted(r.status_code for r in responses) == [200] + [400] * 24
    assert {r.json()["error"]["code"] for r in responses if r.status_code == 400} == {"battle_already_voted"}
    assert len(arena.votes_path.read_text().splitlines()) == lines_before + 1


def test_battles_and_votes_are_rate_limited_per_key(tmp_path: Path) -> None:
    votes_path = tmp_path / "votes.jsonl"
    client = TestClient(create_app(arena_config("/nonexistent/model", votes_path, battles_per_minute=2,
                                                votes_per_minute=3)))
    vote = {"left": MODELS[0], "right": MODELS[1], "winner": "tie", "prompt": "Hi"}
    assert [client.post("/ui/api/vote", json=vote, headers=KEY).status_code for _ in range(3)] == [200] * 3
    flood = [client.post("/ui/api/vote", json=vote, headers=KEY) for _ in range(50)]
    assert {r.status_code for r in flood} == {429}
    assert flood[0].json() == {"error": {"message": "too many votes: at most 3 a minute per client; retry in 20 s",
                                         "type": "requests", "param": None, "code": "rate_limit_exceeded"}}
    assert flood[0].headers["retry-after"] == "20"
    assert len(votes_path.read_text().splitlines()) == 3  # the flood wrote nothing
    other = {"Authorization": f"Bearer {OTHER_KEY}"}
    assert client.post("/ui/api/vote", json=vote, headers=other).status_code == 200  # its own allowance
    # Battles: no model is ready here (400), but every attempt counts against the allowance.
    assert [client.post("/ui/api/battle", headers=KEY).status_code for _ in range(3)] == [400, 400, 429]
    assert client.post("/ui/api/battle", headers=other).status_code == 400


def test_without_keys_the_limit_is_per_address(tmp_path: Path) -> None:
    app = create_app(arena_config("/nonexistent/model", tmp_path / "votes.jsonl", api_keys=(), votes_per_minute=1))
    vote = {"left": MODELS[0], "right": MODELS[1], "winner": "tie", "prompt": "Hi"}
    first = TestClient(app, client=("10.0.0.1", 5000))
    made_up = {"Authorization": "Bearer anything"}  # no keys: a header buys no fresh allowance
    assert [first.post("/ui/api/vote", json=vote, headers=made_up).status_code for _ in range(2)] == [200, 429]
    assert TestClient(app, client=("10.0.0.2", 5000)).post("/ui/api/vote", json=vote).status_code == 200


def test_the_votes_file_is_rotated_and_the_leaderboard_window_bounded(tmp_path: Path) -> None:
    votes_path = tmp_path / "votes.jsonl"
    votes = [Vote(left=MODELS[i % 2], right=MODELS[1 - i % 2], winner=("left", "right", "tie")[i % 3],
                  prompt_sha256="0" * 64, time_s=1000.0 + i, anonymous=i % 4 != 0) for i in range(40)]
    votes_path.write_text("".join(v.to_json() + "\n" for v in votes))
    client = TestClient(create_app(arena_config("/nonexistent/model", votes_path, leaderboard_window=7,
                                                votes_per_minute=0, votes_max_bytes=4096, votes_backups=1)))
    board = client.get("/ui/api/leaderboard", headers=KEY).json()
    window = [v for v in votes if v.anonymous][-7:]
    assert board["num_votes"] == 7
    assert board["data"] == [row.__dict__ for row in compute_leaderboard(window)]
    vote = {"left": MODELS[0], "right": MODELS[1], "winner": "tie", "prompt": "Hi"}
    for _ in range(60):
        assert client.post("/ui/api/vote", json=vote, headers=KEY).status_code == 200
    files = sorted(tmp_path.iterdir())
    assert [p.name for p in files] == ["votes.jsonl", "votes.jsonl.1"]
    assert all(p.stat().st_size <= 4096 for p in files)
