"""The battle store: two distinct models in random order, opaque aliases, bounds, one vote per battle."""

from __future__ import annotations

import random
import re

import pytest

from llmserve.errors import InvalidRequestError
from llmserve.ui.battles import Battle, BattleStore


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
    assert (store.resolve_alias(left), store.resolve_alias(right)) == (battle.left, battle.right)
    other = "0" * 24 if battle.battle_id != "0" * 24 else "1" * 24
    for name in ("tiny-a", f"battle-{battle.battle_id}-middle", f"battle-{other}-left", f"{left}x", f" {left}",
                 f"battle-{battle.battle_id.upper()}-left"):
        assert store.resolve_alias(name) is None, name


def test_the_oldest_battles_are_evicted_past_the_cap() -> None:
    store = BattleStore(max_battles=3)
    battles = [store.create(["a", "b"]) for _ in range(5)]
    assert len(store) == 3
    assert [store.get(b.battle_id) for b in battles] == [None, None, *battles[2:]]
    assert store.resolve_alias(battles[0].alias("left")) is None


def test_battles_expire_after_the_ttl() -> None:
    clock = Clock()
    store = BattleStore(ttl_s=60.0, clock=clock)
    old = store.create(["a", "b"])
    clock.now_s += 30
    young = store.create(["a", "b"])
    clock.now_s += 31  # `old` is past its TTL, `young` is not
    assert store.resolve_alias(old.alias("left")) is None and store.get(young.battle_id) is young
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


def test_a_battle_takes_one_vote() -> None:
    store = BattleStore()
    battle = store.create(["a", "b"])
    answer_both(store, battle)
    assert store.claim_vote(battle.battle_id) is battle and battle.is_voted
    with pytest.raises(InvalidRequestError) as info:
        store.claim_vote(battle.battle_id)
    assert (info.value.code, info.value.param) == ("battle_already_voted", "battle_id")
    assert store.resolve_alias(battle.alias("right")) == battle.right  # its answers may still finish
    with pytest.raises(InvalidRequestError) as info:
        store.claim_vote("nope")
    assert (info.value.code, info.value.message) == (
        "battle_not_found", "the battle 'nope' does not exist or has expired; start a new one")
