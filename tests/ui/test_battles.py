"""The battle store: two distinct models in random order, opaque aliases, bounds, one vote per battle."""

from __future__ import annotations

import asyncio
import json
import random
import re

import pytest

from llmserve.errors import InvalidRequestError
from llmserve.ui.anonymity import read_battle_request
from llmserve.ui.battles import Answer, Battle, BattleStore


class Clock:
    """A hand-moved clock for TTL tests."""

    def __init__(self) -> None:
        self.now_s = 1000.0

    def __call__(self) -> float:
        return self.now_s


def test_battles_pit_two_distinct_models_in_random_order() -> None:
    store = BattleStore(rng=random.Random(0))
    pairs = [store.create(["a", "b", "c", "a"]) for _ in range(200)]
    assert all(b.left != b.right and {b.left, b.right} <= {"a", "b", "c"} for b in pairs)
    assert {(b.left, b.right) for b in pairs} == {(x, y) for x in "abc" for y in "abc" if x != y}
    assert len({b.battle_id for b in pairs}) == 200


@pytest.mark.parametrize(("models", "message"), [
    ([], "a battle needs two served text-generation models; 0 are ready now"),
    (["a", "a"], "a battle needs two served text-generation models; 1 is ready now"),
])
def test_fewer_than_two_models_is_a_400(models: list[str], message: str) -> None:
    with pytest.raises(InvalidRequestError) as info:
        BattleStore().create(models)
    assert (info.value.message, info.value.code, info.value.status_code) == (message, "not_enough_models", 400)


def test_aliases_are_opaque_and_resolve_to_the_real_models() -> None:
    store = BattleStore()
    battle = store.create(["tiny-a", "tiny-b"])
    left, right = battle.alias("left"), battle.alias("right")
    assert re.fullmatch(r"battle-[0-9a-f]{24}-left", left) and right == left.replace("-left", "-right")
    assert "tiny" not in left + right
    assert (store.model_behind(left), store.model_behind(right)) == (battle.left, battle.right)
    other = "0" * 24 if battle.battle_id != "0" * 24 else "1" * 24
    for name in ("tiny-a", f"battle-{battle.battle_id}-middle", f"battle-{other}-left", f"{left}x", f" {left}",
                 f"battle-{battle.battle_id.upper()}-left"):
        assert store.model_behind(name) is None, name
        assert answering(store, name) is None, name


def answering(store: BattleStore, alias: str, body: dict | None = None) -> str | None:
    """`resolve_alias` as the chat route calls it: inside a watched request with this body."""
    request = body if body is not None else {"model": alias, "messages": [{"role": "user", "content": "Hi"}],
                                             "max_tokens": 4}
    token = store.answering.set(Answer(request=asyncio.run(read_battle_request(json.dumps(request).encode()))))
    try:
        return store.resolve_alias(alias)
    finally:
        store.answering.reset(token)


def test_aliases_resolve_only_in_a_watched_chat_request_once_per_side() -> None:
    store = BattleStore()
    battle = store.create(["tiny-a", "tiny-b"])
    left, right = battle.alias("left"), battle.alias("right")
    assert store.resolve_alias(left) is None  # other routes (tokenize, completions, ...) do not know aliases
    assert battle.requested == set()
    assert (answering(store, left), answering(store, right)) == (battle.left, battle.right)
    assert battle.requested == {"left", "right"}
    with pytest.raises(InvalidRequestError) as info:
        answering(store, left)  # a second question to a side: it could probe, then answer another
    assert (info.value.message, info.value.param, info.value.code) == (
        "each side of a battle answers one request; start a new battle", "model", "battle_side_used")
    answer = Answer(request={"model": right, "max_tokens": 1}, alias=right)
    token = store.answering.set(answer)
    try:  # the same request resolving its alias again is not a second question
        assert store.resolve_alias(right) == battle.right
    finally:
        store.answering.reset(token)


@pytest.mark.parametrize(("extra", "param"), [
    ({"logprobs": True}, "logprobs"), ({"top_logprobs": 2}, "top_logprobs"), ({"n": 2}, "n"),
    ({"logit_bias": {"5": 1.0}}, "logit_bias"), ({"stop_token_ids": [5]}, "stop_token_ids"),
    ({"ignore_eos": True}, "ignore_eos"), ({"tools": []}, "tools"), ({"response_format": {"type": "json_object"}},
                                                                     "response_format"),
    ({"chat_template_kwargs": {"enable_thinking": True}}, "chat_template_kwargs"),
    ({"reasoning_effort": "low"}, "reasoning_effort"),
    ({"stream": True, "stream_options": {"include_usage": True}}, "stream_options.include_usage"),
    ({"max_tokens": None}, "max_tokens"),
])
def test_requests_whose_answer_would_depend_on_the_model_are_refused_before_it(extra: dict, param: str) -> None:
    store = BattleStore()
    battle = store.create(["tiny-a", "tiny-b"])
    alias = battle.alias("left")
    request = {"model": alias, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4}
    with pytest.raises(InvalidRequestError) as info:
        answering(store, alias, {**request, **extra})
    assert (info.value.param, info.value.code, info.value.status_code) == (param, "unsupported_in_battle", 400)
    assert "battle" in info.value.message and "tiny" not in info.value.message
    assert battle.requested == set()  # a refused request does not use the side up
    fine = {"logprobs": False, "n": 1, "ignore_eos": False, "tools": None, "stream_options": {"include_usage": False},
            "max_tokens": None, "max_completion_tokens": 8, "temperature": 0.5, "seed": 3, "stop": ["x"], "store": True}
    assert answering(store, alias, {**request, **fine}) == battle.left


def test_a_battle_request_is_read_only_when_it_may_name_a_battle() -> None:
    assert asyncio.run(read_battle_request(b'{"model": "tiny-a", "logprobs": true}')) is None  # no second parse
    assert asyncio.run(read_battle_request(b'{"model": "battle-x", "n": 2}')) == {"model": "battle-x", "n": 2}
    assert asyncio.run(read_battle_request(b'{"model": "battle-x", ')) is None  # the chat route refuses it
    big = {"model": "battle-x", "messages": [{"role": "user", "content": "y" * 100_000}]}
    assert asyncio.run(read_battle_request(json.dumps(big).encode())) == big  # parsed in a thread
    store = BattleStore()
    alias = store.create(["tiny-a", "tiny-b"]).alias("left")
    escaped = json.dumps({"model": alias, "max_tokens": 4}).replace("battle-", "battle\\u002d")
    token = store.answering.set(Answer(request=asyncio.run(read_battle_request(escaped.encode()))))
    try:  # a name spelled with escapes would skip the check: refused instead
        with pytest.raises(InvalidRequestError, match="without JSON escapes"):
            store.resolve_alias(alias)
    finally:
        store.answering.reset(token)


def test_the_oldest_battles_are_evicted_past_the_cap() -> None:
    store = BattleStore(max_battles=3)
    battles = [store.create(["a", "b"]) for _ in range(5)]
    assert len(store) == 3
    assert [store.get(b.battle_id) for b in battles] == [None, None, *battles[2:]]
    assert store.model_behind(battles[0].alias("left")) is None


def test_battles_expire_after_the_ttl() -> None:
    clock = Clock()
    store = BattleStore(ttl_s=60.0, clock=clock)
    old = store.create(["a", "b"])
    clock.now_s += 30
    young = store.create(["a", "b"])
    clock.now_s += 31  # `old` is past its TTL, `young` is not
    assert store.model_behind(old.alias("left")) is None and store.get(young.battle_id) is young
    with pytest.raises(InvalidRequestError, match="does not exist or has expired"):
        store.claim_vote(old.battle_id)
    store.create(["a", "b"])  # creating sweeps the expired ones out
    assert len(store) == 2


def answer_both(store: BattleStore, battle: Battle) -> None:
    for side in ("left", "right"):
        store.mark_delivered(battle.alias(side))


def test_a_battle_takes_a_vote_only_once_both_answers_were_delivered() -> None:
    store = BattleStore()
    battle = store.create(["a", "b"])
    other = store.create(["a", "b"])
    for delivered in ([], ["left"], ["right", "right"]):
        battle.delivered.clear()
        for side in delivered:
            store.mark_delivered(battle.alias(side))
        with pytest.raises(InvalidRequestError) as info:
            store.claim_vote(battle.battle_id)
        assert (info.value.code, info.value.param, info.value.message) == (
            "battle_not_answered", "battle_id", "vote once both answers of the battle have arrived")
        assert not battle.is_voted
    store.mark_delivered(other.alias("left"))
    store.mark_delivered(f"battle-{other.battle_id}-middle")  # not a side: ignored
    store.mark_delivered("tiny-a")
    assert battle.delivered == {"right"} and other.delivered == {"left"}
    store.mark_delivered(battle.alias("left"))
    assert store.claim_vote(battle.battle_id) is battle


def test_a_battle_with_a_failed_answer_takes_no_vote() -> None:
    store = BattleStore()
    battle = store.create(["a", "b"])
    store.mark_failed(battle.alias("left"))
    answer_both(store, battle)
    with pytest.raises(InvalidRequestError) as info:
        store.claim_vote(battle.battle_id)
    assert (info.value.code, info.value.message) == (
        "battle_not_answered", "an answer of this battle failed, so it takes no vote; start a new one")
    assert not battle.is_voted


def test_a_battle_takes_one_vote() -> None:
    store = BattleStore()
    battle = store.create(["a", "b"])
    answer_both(store, battle)
    assert store.claim_vote(battle.battle_id) is battle and battle.is_voted
    with pytest.raises(InvalidRequestError) as info:
        store.claim_vote(battle.battle_id)
    assert (info.value.code, info.value.param) == ("battle_already_voted", "battle_id")
    assert store.model_behind(battle.alias("right")) == battle.right  # its answers may still finish
    with pytest.raises(InvalidRequestError) as info:
        store.claim_vote("nope")
    assert (info.value.code, info.value.message) == (
        "battle_not_found", "the battle 'nope' does not exist or has expired; start a new one")
