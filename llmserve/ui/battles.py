"""Anonymous arena battles: the server picks two models and hands the page opaque aliases.

A battle is two distinct text-generation models in a random left/right order. The page only ever
sees `battle-<id>-left` and `battle-<id>-right`; `/v1/chat/completions` resolves an alias through
`BattleStore.resolve_alias` (hooked into `ServerState.resolve_alias`) and echoes the alias back, so
the real names stay on the server until the single vote on the battle reveals them.

Aliases resolve only inside a chat completion that `ui/delivery.py` watches (`answering` is set):
other routes (completions, tokenize, responses, ...) do not know them, as their answers would show
the model's tokenizer. Each side answers one request, checked first by
`anonymity.check_battle_request`: a second request to a side is refused, so a client cannot probe a
side with one prompt and then have it answer another.

A battle takes one vote, and only once both of its answers were generated and delivered: the
server, not the page, says so (`ui/delivery.py` marks a side when a chat completion for its alias
has been answered in full), so a vote cannot be cast, or scripted, for answers nobody saw. An
answer that failed voids its battle: which side failed (one model's context is shorter, say) tells
the models apart, so that battle can never be voted on.

The store is bounded: battles expire after `ttl_s`, and past `max_battles` the oldest go first.
It is touched only from the event loop, so it needs no lock.
"""

from __future__ import annotations

import random
import re
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

from llmserve.errors import InvalidRequestError
from llmserve.ui.anonymity import check_battle_request

MAX_BATTLES = 10_000
BATTLE_TTL_S = 3600.0
SIDES = ("left", "right")
_ALIAS = re.compile(r"battle-([0-9a-f]{24})-(left|right)")


@dataclass
class Answer:
    """One chat request being answered: its body while it is read, then its JSON object if it may name a
    battle (`anonymity.read_battle_request`), and the battle alias it resolved, if any."""

    body: bytearray = field(default_factory=bytearray)
    request: dict[str, Any] | None = None
    alias: str | None = None


@dataclass
class Battle:
    """One anonymous battle: the real model on each side, and whether it has been voted on."""

    battle_id: str
    left: str
    right: str
    created_s: float
    is_voted: bool = False
    is_failed: bool = False  # an answer failed: the battle takes no vote
    requested: set[str] = field(default_factory=set)  # the sides that have been asked their one question
    delivered: set[str] = field(default_factory=set)  # the sides whose answer reached the client

    @property
    def is_answered(self) -> bool:
        """Both answers were generated and delivered."""
        return self.delivered.issuperset(SIDES)

    def alias(self, side: str) -> str:
        """The name the page uses as `model` for one side."""
        return f"battle-{self.battle_id}-{side}"

    def model(self, side: str) -> str:
        return self.left if side == "left" else self.right


class BattleStore:
    """The live battles of one app, oldest first; bounded in number and in age."""

    def __init__(self, max_battles: int = MAX_BATTLES, ttl_s: float = BATTLE_TTL_S,
                 clock: Callable[[], float] = time.monotonic, rng: random.Random | None = None) -> None:
        self.max_battles = max_battles
        self.ttl_s = ttl_s
        self._clock = clock
        self._rng = rng or random.SystemRandom()
        self._battles: OrderedDict[str, Battle] = OrderedDict()
        # The chat request being answered in this context, if `ui/delivery.py` watches it: resolving
        # an alias tells it which battle side the answer is for. One variable per store, not global.
        self.answering: ContextVar[Answer | None] = ContextVar(f"battle-answer-{id(self)}", default=None)

    def __len__(self) -> int:
        return len(self._battles)

    def create(self, models: Sequence[str]) -> Battle:
        """A new battle between two distinct models of `models`, in random order; 400 with fewer than two."""
        candidates = list(dict.fromkeys(models))
        if len(candidates) < 2:
            raise InvalidRequestError(f"a battle needs two served text-generation models; {len(candidates)} "
                                      f"{'is' if len(candidates) == 1 else 'are'} ready now",
                                      code="not_enough_models")
        now = self._clock()
        self._evict(now)
        left, right = self._rng.sample(candidates, 2)
        battle = Battle(secrets.token_hex(12), left, right, now)
        self._battles[battle.battle_id] = battle
        return battle

    def get(self, battle_id: str) -> Battle | None:
        """The battle, or None when it is unknown or has expired."""
        battle = self._battles.get(battle_id)
        if battle is None or self._clock() - battle.created_s > self.ttl_s:
            return None
        return battle

    def model_behind(self, alias: str) -> str | None:
        """The real model behind `battle-<id>-<side>`; None for any other name or a gone battle."""
        found = self._side(alias)
        return found[0].model(found[1]) if found is not None else None

    def resolve_alias(self, alias: str) -> str | None:
        """The model a watched chat request for `alias` is answered by (the API's hook); None outside one.

        The request is checked against what a battle allows, and the side is used up: a 400 for a
        refused field or a side that has answered already, before any model sees the request.
        """
        answer = self.answering.get()
        found = self._side(alias)
        if answer is None or found is None:
            return None
        battle, side = found
        if answer.alias != alias:
            check_battle_request(answer.request)
            if side in battle.requested:
                raise InvalidRequestError("each side of a battle answers one request; start a new battle",
                                          param="model", code="battle_side_used")
            battle.requested.add(side)
            answer.alias = alias
        return battle.model(side)

    def mark_delivered(self, alias: str) -> None:
        """Record that the answer of one battle side reached its client (a no-op for other names)."""
        found = self._side(alias)
        if found is not None:
            found[0].delivered.add(found[1])

    def mark_failed(self, alias: str) -> None:
        """Record that the answer of one battle side failed: its battle takes no vote."""
        found = self._side(alias)
        if found is not None:
            found[0].is_failed = True

    def _side(self, alias: str) -> tuple[Battle, str] | None:
        match = _ALIAS.fullmatch(alias)
        battle = self.get(match[1]) if match is not None else None
        return (battle, match[2]) if battle is not None and match is not None else None

    def claim_vote(self, battle_id: str) -> Battle:
        """Mark a battle as voted on and return it; each battle takes exactly one vote.

        Unknown or expired battles are a 400 with code `battle_not_found`; a second vote is a 400
        with code `battle_already_voted` (the vote is rejected, the first one stands); a vote before
        both answers were delivered, or on a battle with a failed answer, is a 400 with code
        `battle_not_answered`.
        """
        battle = self.get(battle_id)
        if battle is None:
            raise InvalidRequestError(f"the battle '{battle_id[:40]}' does not exist or has expired; start a new one",
                                      param="battle_id", code="battle_not_found")
        if battle.is_voted:
            raise InvalidRequestError("this battle has already been voted on; start a new one",
                                      param="battle_id", code="battle_already_voted")
        if battle.is_failed:
            raise InvalidRequestError("an answer of this battle failed, so it takes no vote; start a new one",
                                      param="battle_id", code="battle_not_answered")
        if not battle.is_answered:
            raise InvalidRequestError("vote once both answers of the battle have arrived",
                                      param="battle_id", code="battle_not_answered")
        battle.is_voted = True
        return battle

    def _evict(self, now: float) -> None:
        """Drop expired battles, then the oldest until one more fits (battles are kept in creation order)."""
        while self._battles:
            oldest = next(iter(self._battles.values()))
            if now - oldest.created_s <= self.ttl_s and len(self._battles) < self.max_battles:
                break
            self._battles.popitem(last=False)
