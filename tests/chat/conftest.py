"""Fixtures for the chat tests: `llmserve chat` in a real pseudo-terminal, and a running server."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pexpect
import pytest

from .server import running_server

# Seconds any single expectation may wait: model loading (~5 s) on a busy 2-core machine.
EXPECT_TIMEOUT_S = 40

DEBUG_LINE = r'(\{"conv_template".*\})\r\n'


class Terminal:
    """A `llmserve chat` process on a pty, with helpers for the exchanges the tests make."""

    def __init__(self, child: pexpect.spawn) -> None:
        self.child = child

    def send(self, line: str) -> None:
        self.child.sendline(line)

    def expect(self, pattern: Any, timeout: float = EXPECT_TIMEOUT_S) -> Any:
        self.child.expect(pattern, timeout=timeout)
        return self.child.match

    def turn(self, line: str) -> dict[str, Any]:
        """Send a message (or !!regen) and return the --debug line of its answer."""
        self.send(line)
        return self.debug_line()

    def debug_line(self) -> dict[str, Any]:
        return json.loads(self.expect(DEBUG_LINE).group(1))

    def notice(self, text: str) -> None:
        self.expect(r"\[" + text)

    def wait_exit(self) -> int:
        self.child.expect(pexpect.EOF, timeout=EXPECT_TIMEOUT_S)
        self.child.close()
        return self.child.exitstatus


def chat_env() -> dict[str, str]:
    # prompt_toolkit asks the terminal for the cursor position; pexpect never answers.
    return dict(os.environ, TERM="xterm", PROMPT_TOOLKIT_NO_CPR="1", PYTHONUNBUFFERED="1")


@pytest.fixture
def spawn_chat(tmp_path: Path) -> Iterator[Callable[..., Terminal]]:
    """Start `llmserve chat ARGS...` on a 200-column pty; every process is ended after the test."""
    children: list[pexpect.spawn] = []

    def spawn(*args: str) -> Terminal:
        child = pexpect.spawn(sys.executable, ["-m", "llmserve", "chat", *args], cwd=str(tmp_path),
                              env=chat_env(), encoding="utf-8", codec_errors="replace",
                              dimensions=(50, 200), timeout=EXPECT_TIMEOUT_S)
        children.append(child)
        return Terminal(child)

    yield spawn
    for child in children:
        if child.isalive():
            child.terminate(force=True)
        child.close()


@pytest.fixture(scope="session")
def server_url(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`llmserve run` serving the tiny model, shared by the chat tests."""
    with running_server(tiny_model_dir, tmp_path_factory.mktemp("chat-server")) as url:
        yield url
