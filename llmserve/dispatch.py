"""Picking a worker for a request: FastChat's two policies behind one `choose()`.

- lottery: a random ready worker, weighted by its `speed`;
- shortest_queue: the ready worker with the fewest unfinished sequences per unit of `speed`.

Both read live worker state and never choose a worker that is loading, failed or stopped.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Protocol

from llmserve.errors import ModelNotFoundError, ServiceUnavailableError


class DispatchTarget(Protocol):
    """What a policy needs to know about a worker."""

    @property
    def model_names(self) -> tuple[str, ...]: ...
    @property
    def speed(self) -> float: ...
    @property
    def is_ready(self) -> bool: ...
    @property
    def num_unfinished(self) -> int: ...


class DispatchPolicy(Protocol):
    def choose(self, candidates: Sequence[DispatchTarget]) -> DispatchTarget: ...


class LotteryPolicy:
    """Random choice weighted by speed."""

    def __init__(self, rng: random.Random | None = None) -> None:
        self._rng = rng or random.Random()

    def choose(self, candidates: Sequence[DispatchTarget]) -> DispatchTarget:
        return self._rng.choices(list(candidates), weights=[c.speed for c in candidates], k=1)[0]


class ShortestQueuePolicy:
    """Fewest unfinished sequences per unit of speed; ties go to the faster, then the first."""

    def choose(self, candidates: Sequence[DispatchTarget]) -> DispatchTarget:
        return min(candidates, key=lambda c: (c.num_unfinished / c.speed, -c.speed))


POLICIES = {"lottery": LotteryPolicy, "shortest_queue": ShortestQueuePolicy}


class Dispatcher:
    """Maps served model names to workers and picks one per request."""

    def __init__(self, workers: Sequence[DispatchTarget], policy: DispatchPolicy) -> None:
        self.workers = list(workers)
        self.policy = policy

    def ready_model_names(self) -> list[str]:
        """Names served by at least one ready worker, in configuration order."""
        names: dict[str, None] = {}
        for worker in self.workers:
            if worker.is_ready:
                names.update(dict.fromkeys(worker.model_names))
        return list(names)

    def all_model_names(self) -> list[str]:
        names: dict[str, None] = {}
        for worker in self.workers:
            names.update(dict.fromkeys(worker.model_names))
        return list(names)

    def choose(self, model: str) -> DispatchTarget:
        """The worker that takes a request for `model`."""
        serving = [w for w in self.workers if model in w.model_names]
        if not serving:
            served = ", ".join(self.all_model_names())
            raise ModelNotFoundError(f"The model '{model}' does not exist. Served models: {served}", param="model")
        ready = [w for w in serving if w.is_ready]
        if not ready:
            raise ServiceUnavailableError(f"no worker serving '{model}' is ready", retry_after_s=5)
        return self.policy.choose(ready)


def make_policy(name: str) -> DispatchPolicy:
    return POLICIES[name]()
