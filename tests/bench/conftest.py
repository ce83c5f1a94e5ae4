"""Fixtures of the bench tests: a fake OpenAI-compatible server, in process or on a port."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from .fake_server import FakeOpenAI, serve_in_thread

# Seconds between the fake server's tokens in the timed end-to-end tests.
TOKEN_DELAY_S = 0.03


@pytest.fixture
def fake() -> FakeOpenAI:
    """A fresh fake server with no token delay, reached through ASGITransport (no sockets)."""
    return FakeOpenAI()


@pytest.fixture
def asgi_transport(fake: FakeOpenAI) -> httpx.ASGITransport:
    """An httpx transport that calls the fake app in process (the body arrives all at once)."""
    return httpx.ASGITransport(app=fake.app())


@pytest.fixture(scope="module")
def live_fake() -> FakeOpenAI:
    """A fake server with a fixed delay per token, for timing tests."""
    return FakeOpenAI(token_delay_s=TOKEN_DELAY_S)


@pytest.fixture(scope="module")
def live_url(live_fake: FakeOpenAI) -> Iterator[str]:
    """Base URL (`.../v1`) of `live_fake` served by uvicorn on a free port."""
    with serve_in_thread(live_fake.app()) as url:
        yield url
