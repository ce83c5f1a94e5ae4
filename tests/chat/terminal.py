"""`llmserve chat` on a real pseudo-terminal (pexpect), with helpers for the exchanges tests make."""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

import pexpect

# Seconds any single expectation may wait: model loading (~5 s) on a busy 2-core machine.
EXPECT_TIMEOUT_S = 40

# The --debug line: one JSON object on one line.
DEBUG_LINE = r'(\{"conv_template".*\})\r\n'


def chat_env() -> dict[str, str]:
    """The environment of a chat process: a known terminal type, no cursor-position queries."""
    # prompt_toolkit asks the terminal where the cursor is; pexpect never answers.
    return dict(os.environ, TERM="xterm", PROMPT_TOOLKIT_NO_CPR="1", PYTHONUNBUFFERED="1")


class Terminal:
    """One `llmserve chat` process on a 200-column pty."""

    def __init__(self, args: tuple[str, ...], cwd: Path) -> None:
        # Ctrl-C as a terminal delivers it: a test run started in the background (`cmd &`) has SIGINT
        # ignored, which the chat would inherit.
        self.child = pexpect.spawn(sys.executable, ["-m", "llmserve", "chat", *args], cwd=str(cwd),
                                   env=chat_env(), encoding="utf-8", codec_errors="replace",
                                   dimensions=(50, 200), timeout=EXPECT_TIMEOUT_S,
                                   preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))

    def send(self, line: str) -> None:
        self.child.sendline(line)

    def interrupt(self) -> None:
        """Ctrl-C."""
        self.child.sendintr()

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
        """Wait for a `[text...` notice."""
        self.expect(r"\[" + text)

    def wait_exit(self) -> int:
        """The exit status once the process has ended by itself."""
        self.child.expect(pexpect.EOF, timeout=EXPECT_TIMEOUT_S)
        self.child.close()
        return self.child.exitstatus

    def close(self) -> None:
        if self.child.isalive():
            self.child.terminate(force=True)
        self.child.close()
