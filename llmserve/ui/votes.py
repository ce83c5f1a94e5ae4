"""Arena votes: the vote record, validation of a posted vote, and the JSON-lines file they go to.

One line per vote::

    {"left": "tiny-a", "right": "tiny-b", "winner": "left", "prompt_sha256": "…", "time_s": 1.7e9,
     "anonymous": true}

`left`/`right` are the models shown on each side; `winner` is one of `WINNERS`. Only the prompt's
SHA-256 is kept, never its text. `anonymous` votes come from battles, whose models the server picked
and looked up itself (the client only names the battle); named side-by-side votes are never ranked.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from collections.abc import Collection
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from llmserve.errors import InvalidRequestError
from llmserve.ui.battles import BattleStore

log = logging.getLogger(__name__)

WINNERS = ("left", "right", "tie", "both_bad")
Winner = Literal["left", "right", "tie", "both_bad"]


@dataclass(frozen=True)
class Vote:
    """One arena vote between the model shown left and the model shown right."""

    left: str
    right: str
    winner: str
    prompt_sha256: str
    time_s: float
    anonymous: bool = True

    def to_json(self) -> str:
        return json.dumps(asdict(self), ensure_ascii=False, separators=(",", ":"))

    @classmethod
    def from_json(cls, line: str) -> Vote:
        """Parse one line of the votes file; raises ValueError when it is not a vote."""
        data = json.loads(line)
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        vote = cls(left=str(data["left"]), right=str(data["right"]), winner=str(data["winner"]),
                   prompt_sha256=str(data["prompt_sha256"]), time_s=float(data["time_s"]),
                   anonymous=bool(data.get("anonymous", True)))
        if vote.winner not in WINNERS:
            raise ValueError(f"unknown winner {vote.winner!r}")
        return vote


class VoteRequest(BaseModel):
    """Body of `POST /ui/api/vote`: `battle_id` for an anonymous battle, or `left` and `right` for a
    named side-by-side round."""

    model_config = ConfigDict(extra="forbid")

    battle_id: str | None = Field(default=None, min_length=1, max_length=64)
    left: str | None = Field(default=None, min_length=1, max_length=256)
    right: str | None = Field(default=None, min_length=1, max_length=256)
    winner: Winner
    prompt: str = Field(min_length=1)


def make_vote(body: VoteRequest, served: Collection[str], battles: BattleStore, time_s: float) -> Vote:
    """Check a posted vote and turn it into a record; a battle vote uses up its battle."""
    left, right, is_anonymous = _contestants(body, served, battles)
    digest = hashlib.sha256(body.prompt.encode("utf-8")).hexdigest()
    return Vote(left=left, right=right, winner=body.winner, prompt_sha256=digest, time_s=time_s,
                anonymous=is_anonymous)


def _contestants(body: VoteRequest, served: Collection[str], battles: BattleStore) -> tuple[str, str, bool]:
    """(left, right, anonymous): from the battle store for a battle, else the checked names."""
    if body.battle_id is not None:
        for param in ("left", "right"):
            if getattr(body, param) is not None:
                raise InvalidRequestError("a battle vote names no models: the server knows which ones fought",
                                          param=param)
        battle = battles.claim_vote(body.battle_id)
        return battle.left, battle.right, True
    for param in ("left", "right"):
        name = getattr(body, param)
        if name is None:
            raise InvalidRequestError(f"'{param}' is a required property unless 'battle_id' is given", param=param)
        if name not in served:
            raise InvalidRequestError(f"the model '{name}' is not served here", param=param,
                                      code="model_not_found")
    assert body.left is not None and body.right is not None
    if body.left == body.right:
        raise InvalidRequestError("left and right must be two different models", param="right")
    return body.left, body.right, False


class VoteStore:
    """Appends votes to a JSON-lines file and reads them back; safe across threads."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()

    def append(self, vote: Vote) -> None:
        """Write one line; the lock keeps concurrent votes from interleaving."""
        line = vote.to_json() + "\n"
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a", encoding="utf-8") as f:
                f.write(line)

    def read_all(self) -> list[Vote]:
        """Every vote in file order; malformed lines are skipped with a warning."""
        with self._lock:
            try:
                text = self.path.read_text(encoding="utf-8")
            except FileNotFoundError:
                return []
        votes = []
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                votes.append(Vote.from_json(line))
            except (ValueError, KeyError, TypeError) as exc:
                log.warning("%s:%d: skipping a malformed vote: %s", self.path, number, exc)
        return votes
