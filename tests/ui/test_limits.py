"""Per-client rate limits: a minute's allowance per client, refilled evenly, bounded memory."""

from __future__ import annotations

import pytest
from starlette.requests import Request

from llmserve.errors import RateLimitError
from llmserve.ui.limits import RateLimiter, client_key


class Clock:
    def __init__(self) -> None:
        self.now_s = 100.0

    def __call__(self) -> float:
        return self.now_s


def test_a_minute_allowance_then_429_with_retry_after_then_refilled() -> None:
    clock = Clock()
    limiter = RateLimiter("votes", 6, clock=clock)  # one call back every 10 s
    for _ in range(6):
        limiter.check("a")
    with pytest.raises(RateLimitError) as info:
        limiter.check("a")
    assert (info.value.status_code, info.value.error_type, info.value.code) == (429, "requests", "rate_limit_exceeded")
    assert info.value.message == "too many votes: at most 6 a minute per client; retry in 10 s"
    assert info.value.headers() == {"Retry-After": "10"}
    limiter.check("b")  # another client has its own allowance
    clock.now_s += 4
    with pytest.raises(RateLimitError) as info:
        limiter.check("a")
    assert info.value.retry_after_s == 6  # refused calls spend nothing: the refill goes on
    clock.now_s += 6
    limiter.check("a")
    with pytest.raises(RateLimitError):
        limiter.check("a")
    clock.now_s += 3600  # a long pause refills a minute's worth, no more
    for _ in range(6):
        limiter.check("a")
    with pytest.raises(RateLimitError):
        limiter.check("a")


def test_zero_is_no_limit_and_clients_are_bounded() -> None:
    unlimited = RateLimiter("battles", 0)
    for _ in range(1000):
        unlimited.check("a")
    clock = Clock()
    limiter = RateLimiter("battles", 1, max_clients=3, clock=clock)
    for client in ("a", "b", "c", "d"):
        limiter.check(client)
    assert len(limiter._buckets) == 3  # "a", the least recently seen, was dropped
    limiter.check("a")  # ...and starts afresh
    with pytest.raises(RateLimitError):
        limiter.check("d")


def _request(headers: dict[str, str], host: str = "10.0.0.1") -> Request:
    raw = [(k.lower().encode(), v.encode()) for k, v in headers.items()]
    return Request({"type": "http", "method": "POST", "path": "/", "headers": raw, "client": (host, 1234)})


def test_a_client_is_its_key_when_there_are_keys_else_its_address() -> None:
    keyed = client_key(_request({"Authorization": "Bearer sk-one"}), ["sk-one", "sk-two"])
    assert keyed.startswith("key:") and "sk-one" not in keyed
    assert keyed != client_key(_request({"Authorization": "Bearer sk-two"}), ["sk-one", "sk-two"])
    assert keyed == client_key(_request({"Authorization": "Bearer sk-one"}, host="10.0.0.2"), ["sk-one"])
    # Without keys any header passes the key check: made-up keys must not buy fresh allowances.
    assert client_key(_request({"Authorization": "Bearer made-up"}), []) == "addr:10.0.0.1"
    assert client_key(_request({}), ["sk-one"]) == "addr:10.0.0.1"
