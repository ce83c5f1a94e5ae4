"""Anonymous arena battles: the server picks two models and hands the page opaque aliases.

A battle is two distinct text-generation models in a random left/right order. The page only ever
sees `battle-<id>-left` and `battle-<id>-right`; `/v1/chat/completions` resolves an alias through
`BattleStore.resolve_alias` (hooked into `ServerState.resolve_alias`) and echoes the alias back, so
the real names stay on the server until the single vote on the battle reveals them.

A battle takes one vote, and only once both of its answers were generated and delivered: the
server, not the page, says so (`ui/delivery.py` marks a side when a chat completion for its alias
has been answered in full), so a vote cannot be cast, or scripted, for answers nobody saw.

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

from llmserve.errors import InvalidRequestError

MAX_BATTLES = 10_000
BATTLE_TTL_S = 3600.0
SIDES = ("left", "right")
_ALIAS = re.compile(r"battle-([0-9a-f]{24})-(left|right)")


@dataclass
class Answer:
    """One chat request being answered: the battle alias it resolved, if any."""

    alias: str | None = None


@dataclass
class Battle:
    """One anonymous battle: the real model on each side, and whether it has been voted on."""

    battle_id: str
    left: str
    right: str
    created_s: float
    is_voted: bool = False
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

    def resolve_alias(self, alias: str) -> str | None:
        """The real model behind `battle-<id>-<side>`; None for any other name or a gone battle."""
        match = _ALIAS.fullmatch(alias)
        if match is None:
            return None
        battle = self.get(match[1])
        if battle is None:
            return None
        answer = self.answering.get()
        if answer is not None:
            answer.alias = alias
        return battle.model(match[2])

    def mark_delivered(self, alias: str) -> None:
        """Record that the answer of one battle side reached its client (a no-op for other names)."""
        match = _ALIAS.fullmatch(alias)
        if match is None:
            return
        battle = self.get(match[1])
        if battle is not None:
            battle.delivered.add(match[2])

    def claim_vote(self, battle_id: str) -> Battle:
        """Mark a battle as voted on and return it; each battle takes exactly one vote.

        Unknown or expired battles are a 400 with code `battle_not_found`; a second vote is a 400
        with code `battle_already_voted` (the vote is rejected, the first one stands); a vote before
        both answers were delivered is a 400 with code `battle_not_answered`.
        """
        battle = self.get(battle_id)
        if battle is None:
            raise InvalidRequestError(f"the battle '{battle_id[:40]}' does not exist or has expired; start a new one",
                                      param="battle_id", code="battle_not_found")
        if battle.is_voted:
            raise InvalidRequestError("this battle has already been voted on; start a new one",
                                      param="battle_id", code="battle_already_voted")
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
