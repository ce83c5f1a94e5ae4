"""Arena ratings: Elo over the votes in the order they were cast, with per-model counts.

Pure and synchronous. Each vote is one game between `left` and `right`: the winner scores 1, the
loser 0; "tie" and "both_bad" score 0.5 each (as FastChat's arena does) and both count as ties.
Ratings start at `INITIAL_RATING` and move by `K_FACTOR * (score - expected)`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from llmserve.ui.votes import Vote

INITIAL_RATING = 1000.0
K_FACTOR = 32.0
ELO_SCALE = 400.0

_LEFT_SCORE = {"left": 1.0, "right": 0.0, "tie": 0.5, "both_bad": 0.5}


@dataclass(frozen=True)
class Row:
    """One model's line of the leaderboard."""

    model: str
    rating: float
    num_battles: int
    num_wins: int
    num_losses: int
    num_ties: int
    """Votes "tie" and "both_bad"."""


def expected_score(rating: float, opponent: float) -> float:
    """Elo's expected score of a player rated `rating` against `opponent` (0..1)."""
    return 1.0 / (1.0 + 10.0 ** ((opponent - rating) / ELO_SCALE))


def compute_leaderboard(votes: Iterable[Vote], k_factor: float = K_FACTOR,
                        initial_rating: float = INITIAL_RATING) -> list[Row]:
    """Rows sorted by rating (best first; equal ratings by name)."""
    rating: dict[str, float] = {}
    counts: dict[str, list[int]] = {}  # model -> [wins, losses, ties]
    for vote in votes:
        if vote.left == vote.right:
            continue  # a model against itself says nothing about its rating
        left_score = _LEFT_SCORE[vote.winner]
        left = rating.setdefault(vote.left, initial_rating)
        right = rating.setdefault(vote.right, initial_rating)
        delta = k_factor * (left_score - expected_score(left, right))
        rating[vote.left] = left + delta
        rating[vote.right] = right - delta
        for model, score in ((vote.left, left_score), (vote.right, 1.0 - left_score)):
            tally = counts.setdefault(model, [0, 0, 0])
            tally[0 if score == 1.0 else 1 if score == 0.0 else 2] += 1
    rows = [Row(model=m, rating=rating[m], num_battles=sum(c), num_wins=c[0], num_losses=c[1], num_ties=c[2])
            for m, c in counts.items()]
    return sorted(rows, key=lambda r: (-r.rating, r.model))
