"""Dispatch policies: shortest-queue per unit of speed, speed-weighted lottery, never a failed worker."""

from __future__ import annotations

import random
from dataclasses import dataclass

import pytest

from llmserve.dispatch import Dispatcher, LotteryPolicy, ShortestQueuePolicy
from llmserve.errors import ModelNotFoundError, ServiceUnavailableError


@dataclass
class FakeWorker:
    name: str
    model_names: tuple[str, ...] = ("m",)
    speed: float = 1.0
    is_ready: bool = True
    num_unfinished: int = 0


def test_shortest_queue_divides_by_speed() -> None:
    slow = FakeWorker("slow", speed=1.0, num_unfinished=3)
    fast = FakeWorker("fast", speed=4.0, num_unfinished=8)  # 2 per unit of speed
    assert Dispatcher([slow, fast], ShortestQueuePolicy()).choose("m") is fast
    fast.num_unfinished = 16  # 4 per unit
    assert Dispatcher([slow, fast], ShortestQueuePolicy()).choose("m") is slow


def test_shortest_queue_reads_live_state() -> None:
    a, b = FakeWorker("a"), FakeWorker("b")
    dispatcher = Dispatcher([a, b], ShortestQueuePolicy())
    picks = []
    for _ in range(6):
        worker = dispatcher.choose("m")
        worker.num_unfinished += 1
        picks.append(worker.name)
    assert picks == ["a", "b", "a", "b", "a", "b"]


def test_lottery_is_weighted_by_speed() -> None:
    a, b = FakeWorker("a", speed=1.0), FakeWorker("b", speed=3.0)
    dispatcher = Dispatcher([a, b], LotteryPolicy(random.Random(0)))
    picks = [dispatcher.choose("m").name for _ in range(4000)]
    assert 0.72 < picks.count("b") / len(picks) < 0.78


@pytest.mark.parametrize("policy", [ShortestQueuePolicy(), LotteryPolicy(random.Random(1))])
def test_failed_or_loading_workers_are_never_chosen(policy) -> None:
    dead = FakeWorker("dead", is_ready=False, speed=100.0)
    alive = FakeWorker("alive", num_unfinished=50)
    dispatcher = Dispatcher([dead, alive], policy)
    assert all(dispatcher.choose("m") is alive for _ in range(200))


def test_unknown_model_is_404_naming_the_served_ones() -> None:
    dispatcher = Dispatcher([FakeWorker("a", model_names=("x", "y"))], ShortestQueuePolicy())
    with pytest.raises(ModelNotFoundError, match="Served models: x, y"):
        dispatcher.choose("z")


def test_no_ready_worker_is_503() -> None:
    dispatcher = Dispatcher([FakeWorker("a", is_ready=False)], ShortestQueuePolicy())
    with pytest.raises(ServiceUnavailableError):
        dispatcher.choose("m")
    assert dispatcher.ready_model_names() == []


def test_ready_names_keep_config_order_without_duplicates() -> None:
    workers = [FakeWorker("a", model_names=("b", "a")), FakeWorker("b", model_names=("a", "c"))]
    assert Dispatcher(workers, ShortestQueuePolicy()).ready_model_names() == ["b", "a", "c"]
