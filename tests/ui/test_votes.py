"""Votes: validation of a posted vote (named or battle), and the JSON-lines store under concurrent appends."""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from pathlib import Path

import pytest

from llmserve.errors import InvalidRequestError
from llmserve.ui.battles import BattleStore
from llmserve.ui.votes import Vote, VoteRequest, VoteStore
from llmserve.ui.votes import make_vote as make_vote_with

SERVED = ("tiny-a", "tiny-b")


def request(**changes: object) -> VoteRequest:
    fields: dict[str, object] = {"left": "tiny-a", "right": "tiny-b", "winner": "tie", "prompt": "Hi there"}
    return VoteRequest(**{k: v for k, v in {**fields, **changes}.items() if v is not None})


def make_vote(body: VoteRequest, served: tuple[str, ...], time_s: float) -> Vote:
    """A named vote: no battle store involved."""
    return make_vote_with(body, served, BattleStore(), time_s)


def test_a_named_vote_keeps_the_prompt_hash_only_and_is_not_anonymous() -> None:
    vote = make_vote(request(), SERVED, 12.5)
    assert vote == Vote(left="tiny-a", right="tiny-b", winner="tie",
                        prompt_sha256=hashlib.sha256(b"Hi there").hexdigest(), time_s=12.5, anonymous=False)
    assert "Hi there" not in vote.to_json()


def test_a_battle_vote_takes_the_models_from_the_store_once() -> None:
    battles = BattleStore()
    battle = battles.create(SERVED)
    body = request(left=None, right=None, battle_id=battle.battle_id, winner="right")
    with pytest.raises(InvalidRequestError, match="once both answers of the battle have arrived"):
        make_vote_with(body, SERVED, battles, 2.0)
    for side in ("left", "right"):
        battles.mark_delivered(battle.alias(side))
    vote = make_vote_with(body, SERVED, battles, 3.0)
    assert (vote.left, vote.right, vote.winner, vote.anonymous) == (battle.left, battle.right, "right", True)
    with pytest.raises(InvalidRequestError, match="already been voted on"):
        make_vote_with(body, SERVED, battles, 4.0)


@pytest.mark.parametrize(("changes", "param", "message"), [
    ({"left": "gone"}, "left", "the model 'gone' is not served here"),
    ({"right": "gone"}, "right", "the model 'gone' is not served here"),
    ({"right": "tiny-a"}, "right", "left and right must be two different models"),
    ({"right": None}, "right", "'right' is a required property unless 'battle_id' is given"),
    ({"battle_id": "abc", "right": None}, "left", "a battle vote names no models: the server knows which ones fought"),
    ({"battle_id": "abc", "left": None, "right": None}, "battle_id",
     "the battle 'abc' does not exist or has expired; start a new one"),
])
def test_make_vote_rejects(changes: dict, param: str, message: str) -> None:
    with pytest.raises(InvalidRequestError) as info:
        make_vote(request(**changes), SERVED, 0.0)
    assert (info.value.param, info.value.message) == (param, message)


def test_store_round_trip_and_missing_file(tmp_path: Path) -> None:
    store = VoteStore(tmp_path / "sub" / "votes.jsonl")
    assert store.read_all() == []
    votes = [make_vote(request(winner=w), SERVED, float(i)) for i, w in enumerate(("left", "right", "both_bad"))]
    for vote in votes:
        store.append(vote)
    assert store.read_all() == votes
    first = json.loads(store.path.read_text().splitlines()[0])
    assert first == {"left": "tiny-a", "right": "tiny-b", "winner": "left", "anonymous": False, "time_s": 0.0,
                     "prompt_sha256": hashlib.sha256(b"Hi there").hexdigest()}


def test_malformed_lines_are_skipped_with_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    store = VoteStore(tmp_path / "votes.jsonl")
    good = make_vote(request(), SERVED, 1.0)
    store.path.write_text("not json\n[1]\n" + good.to_json() + "\n\n" + '{"left": "a"}\n'
                          + good.to_json().replace('"tie"', '"great"') + "\n")
    with caplog.at_level(logging.WARNING, logger="llmserve.ui.votes"):
        assert store.read_all() == [good]
    # Read from the newest line back: the warnings come last line first.
    assert [r.getMessage().split(": skipping")[0][-2:] for r in caplog.records] == [":6", ":5", ":2", ":1"]


def test_concurrent_appends_never_interleave(tmp_path: Path) -> None:
    store = VoteStore(tmp_path / "votes.jsonl")
    swapped = make_vote(request(left="tiny-b", right="tiny-a", prompt="x" * 1000), SERVED, 0.0)

    def cast(n: int) -> None:
        for i in range(n):
            store.append(swapped if i % 2 else make_vote(request(), SERVED, float(i)))

    threads = [threading.Thread(target=cast, args=(50,)) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    lines = store.path.read_text().splitlines()
    assert len(lines) == 400
    assert len(store.read_all()) == 400


def test_the_votes_file_rotates_within_its_size_bound(tmp_path: Path) -> None:
    line_bytes = len(make_vote(request(), SERVED, 1000.0).to_json()) + 1
    store = VoteStore(tmp_path / "votes.jsonl", max_bytes=10 * line_bytes, num_backups=2)
    votes = [make_vote(request(), SERVED, 1000.0 + i) for i in range(95)]  # lines of one length
    for vote in votes:
        store.append(vote)
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["votes.jsonl", "votes.jsonl.1", "votes.jsonl.2"]
    assert all(p.stat().st_size <= 10 * line_bytes for p in tmp_path.iterdir())
    kept = store.read_all()  # the newest 25: 5 in the current file, 10 in each backup
    assert kept == votes[-25:]
    assert store.read_recent(12) == votes[-12:]
    assert store.read_recent(3, lambda v: v.time_s % 2 == 0) == [votes[90], votes[92], votes[94]]
    no_backups = VoteStore(tmp_path / "solo.jsonl", max_bytes=4 * line_bytes, num_backups=0)
    for vote in votes[:9]:
        no_backups.append(vote)
    assert no_backups.read_all() == votes[8:9] and not (tmp_path / "solo.jsonl.1").exists()
