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
import os
import threading
from collections.abc import Callable, Collection
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
    """Appends votes to a JSON-lines file and reads the latest back; safe across threads.

    Bounded on disk: an append that would take the file past `max_bytes` first rotates it to
    `<path>.1` (`.1` to `.2`, ..., the oldest beyond `num_backups` deleted), so the votes take at
    most `(1 + num_backups) * max_bytes`. Reads go from the newest line back and stop once they
    have what was asked for: one file of at most `max_bytes` at a time, however long the history.
    """

    def __init__(self, path: Path, max_bytes: int = 16 * 1024 * 1024, num_backups: int = 3) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.num_backups = num_backups
        self._lock = threading.Lock()

    def append(self, vote: Vote) -> None:
        """Write one line (rotating first if it would not fit); the lock keeps lines whole."""
        line = (vote.to_json() + "\n").encode("utf-8")
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            size = self.path.stat().st_size if self.path.exists() else 0
            if size and size + len(line) > self.max_bytes:
                self._rotate()
            with self.path.open("ab") as f:
                f.write(line)

    def _rotate(self) -> None:
        oldest = self._backup(self.num_backups)
        if self.num_backups == 0 or oldest.exists():
            (oldest if self.num_backups else self.path).unlink()
        for i in range(self.num_backups - 1, 0, -1):
            if self._backup(i).exists():
                os.replace(self._backup(i), self._backup(i + 1))
        if self.num_backups:
            os.replace(self.path, self._backup(1))

    def _backup(self, i: int) -> Path:
        return self.path.with_name(f"{self.path.name}.{i}")

    def read_all(self) -> list[Vote]:
        """Every vote kept (rotated files included), oldest first; malformed lines are skipped."""
        return self.read_recent(None)

    def read_recent(self, limit: int | None, keep: Callable[[Vote], bool] = lambda vote: True) -> list[Vote]:
        """The latest `limit` votes that `keep` accepts (all with None), oldest first."""
        newest_first: list[Vote] = []
        with self._lock:
            for path in [self.path, *(self._backup(i) for i in range(1, self.num_backups + 1))]:
                try:
                    lines = path.read_bytes().splitlines()  # at most max_bytes: rotation bounds it
                except FileNotFoundError:
                    continue
                for number in range(len(lines), 0, -1):
                    vote = _parse(path, number, lines[number - 1])
                    if vote is not None and keep(vote):
                        newest_first.append(vote)
                        if limit is not None and len(newest_first) >= limit:
                            return newest_first[::-1]
        return newest_first[::-1]


def _parse(path: Path, number: int, line: bytes) -> Vote | None:
    """Line `number` of a votes file as a vote; None (with a warning) when it is not one."""
    if not line.strip():
        return None
    try:
        return Vote.from_json(line.decode("utf-8"))
    except (ValueError, KeyError, TypeError) as exc:  # UnicodeDecodeError is a ValueError
        log.warning("%s:%d: skipping a malformed vote: %s", path, number, exc)
        return None
