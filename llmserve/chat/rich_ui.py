"""The rich style: answers rendered as markdown while they stream, input with history and editing.

Rendering uses `rich`; input uses `prompt_toolkit` when it is installed (history, editing,
command completion, `--multiline` where Enter adds a line and Esc+Enter sends), else rich's
plain `Console.input`.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.markdown import Markdown

from llmserve.chat.session import COMMAND_PREFIX, COMMANDS

# Re-parsing the markdown on every delta is quadratic; redraw at most this often instead (by hand:
# no refresh thread competing with the engine for the GIL).
_REDRAW_INTERVAL_S = 0.05


class RichUI:
    """Markdown output through `rich.live.Live`; prompt_toolkit input when available."""

    def __init__(self, multiline: bool = False, console: Console | None = None) -> None:
        self.console = console or Console(highlight=False)
        self.multiline = multiline
        self._prompt = _make_prompt_session()

    def read_input(self) -> str | None:
        self.console.print("[bold green]user[/]" + (" [dim](Esc+Enter sends)[/]" if self.multiline else ""))
        try:
            if self._prompt is None:
                return self.console.input("> ")
            return str(self._prompt.prompt("> ", multiline=self.multiline, prompt_continuation=". "))
        except EOFError:
            return None

    def stream_output(self, chunks: Iterable[str]) -> None:
        self.console.print("[bold blue]assistant[/]")
        text = ""
        with Live(console=self.console, auto_refresh=False, vertical_overflow="visible") as live:
            drawn_s = 0.0
            try:
                for chunk in chunks:
                    text += chunk
                    now = time.monotonic()
                    if chunk and now - drawn_s >= _REDRAW_INTERVAL_S:
                        live.update(Markdown(hard_line_breaks(text)), refresh=True)
                        drawn_s = now
            finally:
                live.update(Markdown(hard_line_breaks(text)), refresh=True)

    def notice(self, text: str) -> None:
        self.console.print(f"[yellow]\\[{_escape(text)}][/]")

    def error(self, text: str) -> None:
        self.console.print(f"[bold red]error:[/] {_escape(text)}")

    def debug(self, line: str) -> None:
        self.console.print(line, markup=False, highlight=False, soft_wrap=True)


def hard_line_breaks(text: str) -> str:
    """Keep the model's line breaks: markdown joins single newlines, except inside code fences."""
    lines = []
    is_code = False
    for line in text.split("\n"):
        if line.lstrip().startswith("```"):
            is_code = not is_code
            lines.append(line)
        else:
            lines.append(line if is_code or not line.strip() else line + "  ")
    return "\n".join(lines)


def _escape(text: str) -> str:
    from rich.markup import escape

    return escape(text)


def _make_prompt_session() -> Any:
    """A prompt_toolkit session with in-memory history and `!!` completion; None without the package."""
    try:
        from prompt_toolkit import PromptSession
        from prompt_toolkit.auto_suggest import AutoSuggestFromHistory
        from prompt_toolkit.completion import WordCompleter
        from prompt_toolkit.history import InMemoryHistory
    except ImportError:
        return None
    words = [f"{COMMAND_PREFIX}{name}" for name in COMMANDS]
    completer = WordCompleter(words, sentence=True)
    # Completion on Tab only, with no blank lines reserved for its menu under every prompt.
    return PromptSession(history=InMemoryHistory(), completer=completer, auto_suggest=AutoSuggestFromHistory(),
                         complete_while_typing=False, reserve_space_for_menu=0)
