"""Per-client rate limits of the arena's endpoints (battles, votes).

A client is its API key when the server has keys (hashed: the limiter keeps no secrets), else its
address; behind a proxy every client shares the proxy's address. Each client has a token bucket
holding up to a minute's allowance and refilled evenly over the minute. Buckets of at most
`max_clients` clients are kept, the least recently seen dropped first, so a flood of new
clients cannot grow memory without bound.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections import OrderedDict
from collections.abc import Callable, Collection

from starlette.requests import Request

from llmserve.errors import RateLimitError

MAX_CLIENTS = 10_000


class RateLimiter:
    """`per_minute` calls per client and minute (0 = no limit), bursts up to a minute's worth."""

    def __init__(self, what: str, per_minute: int, max_clients: int = MAX_CLIENTS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.what = what
        self.per_minute = per_minute
        self.max_clients = max_clients
        self._clock = clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # client -> (tokens, at_s)

    def check(self, client: str) -> None:
        """Take one call from the client's allowance; 429 with Retry-After when it is spent."""
        if self.per_minute == 0:
            return
        now = self._clock()
        tokens, at_s = self._buckets.pop(client, (float(self.per_minute), now))
        tokens = min(float(self.per_minute), tokens + (now - at_s) * self.per_minute / 60.0)
        is_allowed = tokens >= 1.0
        self._buckets[client] = (tokens - 1.0 if is_allowed else tokens, now)  # now the most recently seen
        while len(self._buckets) > self.max_clients:
            self._buckets.popitem(last=False)
        if not is_allowed:
            wait_s = math.ceil((1.0 - tokens) * 60.0 / self.per_minute)
            raise RateLimitError(f"too many {self.what}: at most {self.per_minute} a minute per client; "
                                 f"retry in {wait_s} s", retry_after_s=max(1, wait_s))


def client_key(request: Request, api_keys: Collection[str]) -> str:
    """Who is calling: the API key (hashed) when the server has keys, else the client's address."""
    if api_keys:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and token:
            return "key:" + hashlib.sha256(token.encode()).hexdigest()[:32]
    return "addr:" + (request.client.host if request.client is not None else "unknown")
