"""Fixtures for the chat tests: `llmserve chat` on a pseudo-terminal, and a running server."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from .server import running_server
from .terminal import Terminal


@pytest.fixture
def spawn_chat(tmp_path: Path) -> Iterator[Callable[..., Terminal]]:
    """Start `llmserve chat ARGS...` in tmp_path on a pty; every process is ended after the test."""
    terminals: list[Terminal] = []

    def spawn(*args: str) -> Terminal:
        terminals.append(Terminal(args, tmp_path))
        return terminals[-1]

    yield spawn
    for terminal in terminals:
        terminal.close()


@pytest.fixture(scope="session")
def server_url(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`llmserve run` serving the tiny model, shared by the chat tests."""
    with running_server(tiny_model_dir, tmp_path_factory.mktemp("chat-server")) as url:
        yield url
