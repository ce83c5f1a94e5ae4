"""How the chat reads input and shows answers: the plain style here, the rich one in rich_ui.py.

`make_ui` picks the style: rich on a terminal, simple otherwise, so that piped input
(`echo hi | llmserve chat ...`) gets plain answers on stdout and notices on stderr.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import Protocol, TextIO

STYLES = ("simple", "rich")


class ChatUI(Protocol):
    """Input and output of a chat session."""

    def read_input(self) -> str | None:
        """The next line (or block) the user typed; None at end of input."""
        ...

    def stream_output(self, chunks: Iterable[str]) -> None:
        """Show an answer as its text deltas arrive."""
        ...

    def notice(self, text: str) -> None:
        """A remark about the session (turns dropped, answer stopped, file saved)."""
        ...

    def error(self, text: str) -> None:
        """Something that failed; the session goes on."""
        ...

    def debug(self, line: str) -> None:
        """The --debug line after an answer."""
        ...


class SimpleUI:
    """Plain text: `user: ` / `assistant: ` prompts on a terminal, bare answers when piped."""

    def __init__(self, is_interactive: bool, stdin: TextIO | None = None, stdout: TextIO | None = None,
                 stderr: TextIO | None = None) -> None:
        self.is_interactive = is_interactive
        self.stdin = stdin or sys.stdin
        self.stdout = stdout or sys.stdout
        self.stderr = stderr or sys.stderr
        if is_interactive:
            try:
                import readline  # noqa: F401  # line editing and history for input()
            except ImportError:
                pass

    def read_input(self) -> str | None:
        if self.is_interactive and self.stdin is sys.stdin:
            try:
                return input("user: ")
            except EOFError:
                self.stdout.write("\n")
                return None
        line = self.stdin.readline()
        return line.rstrip("\r\n") if line else None

    def stream_output(self, chunks: Iterable[str]) -> None:
        if self.is_interactive:
            self.stdout.write("assistant: ")
        try:
            for chunk in chunks:
                if chunk:
                    self.stdout.write(chunk)
                    self.stdout.flush()
        finally:
            self.stdout.write("\n")
            self.stdout.flush()

    def notice(self, text: str) -> None:
        self._print_err(f"[{text}]")

    def error(self, text: str) -> None:
        self._print_err(f"error: {text}")

    def debug(self, line: str) -> None:
        self.stdout.write(line + "\n")
        self.stdout.flush()

    def _print_err(self, text: str) -> None:
        self.stdout.flush()
        self.stderr.write(text + "\n")
        self.stderr.flush()


def make_ui(style: str | None, multiline: bool = False) -> ChatUI:
    """The UI for `--style` (None: rich on a terminal); a non-terminal stdin always gets simple."""
    is_terminal = sys.stdin.isatty() and sys.stdout.isatty()
    style = style or ("rich" if is_terminal else "simple")
    if style == "rich" and is_terminal:
        try:
            from llmserve.chat.rich_ui import RichUI
        except ImportError:
            ui = SimpleUI(is_interactive=True)
            ui.notice("the rich style needs the 'rich' package; using --style simple")
            return ui
        return RichUI(multiline=multiline)
    return SimpleUI(is_interactive=sys.stdin.isatty())
