"""compute_leaderboard: Elo with exact numbers, counts and ordering."""

from __future__ import annotations

import pytest

from llmserve.ui.leaderboard import Row, compute_leaderboard, expected_score
from llmserve.ui.votes import Vote


def vote(left: str, right: str, winner: str) -> Vote:
    return Vote(left=left, right=right, winner=winner, prompt_sha256="0" * 64, time_s=0.0)


def test_no_votes_no_rows() -> None:
    assert compute_leaderboard([]) == []


def test_one_win_between_new_models_moves_each_by_half_k() -> None:
    assert compute_leaderboard([vote("b", "a", "left")]) == [
        Row(model="b", rating=1016.0, num_battles=1, num_wins=1, num_losses=0, num_ties=0),
        Row(model="a", rating=984.0, num_battles=1, num_wins=0, num_losses=1, num_ties=0),
    ]


def test_tie_and_both_bad_between_equals_change_nothing_and_sort_by_name() -> None:
    assert compute_leaderboard([vote("b", "a", "tie"), vote("a", "b", "both_bad")]) == [
        Row(model="a", rating=1000.0, num_battles=2, num_wins=0, num_losses=0, num_ties=2),
        Row(model="b", rating=1000.0, num_battles=2, num_wins=0, num_losses=0, num_ties=2),
    ]


def test_sequence_of_votes_gives_exact_ratings() -> None:
    # By hand, K = 32, E = 1 / (1 + 10 ** ((opponent - own) / 400)):
    # 1. a beats b:        a 1016,                b 984
    # 2. a ties b:         E_a = 0.5459221, a -= 1.4695 -> 1014.5305, b 985.4695
    # 3. c beats a:        E_c = 0.4791118, c += 16.6684 -> 1016.6684, a 997.8617
    # 4. b, c both bad:    E_b = 0.4552346, b += 1.4325 -> 986.9024, c 1015.2358
    # 5. b against itself: ignored
    votes = [vote("a", "b", "left"), vote("a", "b", "tie"), vote("c", "a", "left"), vote("b", "c", "both_bad"),
             vote("b", "b", "left")]
    rows = compute_leaderboard(votes)
    assert [(r.model, r.num_battles, r.num_wins, r.num_losses, r.num_ties) for r in rows] == [
        ("c", 2, 1, 0, 1), ("a", 3, 1, 1, 1), ("b", 3, 0, 1, 2)]
    assert [r.rating for r in rows] == pytest.approx([1015.2358347, 997.8617342, 986.9024311], abs=1e-6)
    assert sum(r.rating for r in rows) == pytest.approx(3000.0)  # Elo moves points, never creates them


def test_expected_score() -> None:
    assert expected_score(1000.0, 1000.0) == 0.5
    assert expected_score(1400.0, 1000.0) == pytest.approx(10 / 11)
    assert expected_score(1000.0, 1400.0) == pytest.approx(1 / 11)


def test_k_factor_and_initial_rating_are_parameters() -> None:
    [winner, loser] = compute_leaderboard([vote("a", "b", "right")], k_factor=10.0, initial_rating=1500.0)
    assert (winner.model, winner.rating, loser.model, loser.rating) == ("b", 1505.0, "a", 1495.0)
