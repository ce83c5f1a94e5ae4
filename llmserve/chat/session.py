"""A terminal conversation: its messages, the `!!` commands and saving to / loading from JSON.

The history is a list of OpenAI messages without the system message, which is kept apart so
`!!reset` and turn dropping never lose it. A turn is a user message and what follows it up to
the next user message (normally one assistant answer).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from llmserve.chat.backends import ChatError, Message

COMMANDS = ("exit", "reset", "remove", "regen", "save", "load", "help")
"""The `!!` commands, in the order `!!help` lists them."""

COMMAND_PREFIX = "!!"

HELP_TEXT = (
    "commands: !!exit (or an empty line / Ctrl-D) quit, !!reset clear the history, "
    "!!remove drop the last exchange, !!regen answer the last message again, "
    "!!save FILE / !!load FILE the conversation as JSON; Ctrl-C stops an answer"
)

_ROLES = ("system", "user", "assistant")


@dataclass(frozen=True)
class Command:
    """A parsed `!!name [argument]` line."""

    name: str
    argument: str = ""


def parse_command(line: str) -> Command | None:
    """The command on `line`, or None when it is a message; ChatError for an unknown `!!` command."""
    text = line.strip()
    if not text.startswith(COMMAND_PREFIX):
        return None
    name, _, argument = text[len(COMMAND_PREFIX):].partition(" ")
    if name not in COMMANDS:
        raise ChatError(f"unknown command '{COMMAND_PREFIX}{name}'; {HELP_TEXT}")
    if name in ("save", "load") and not argument.strip():
        raise ChatError(f"{COMMAND_PREFIX}{name} needs a file name, e.g. {COMMAND_PREFIX}{name} chat.json")
    return Command(name, argument.strip())


class Conversation:
    """The messages of one chat session and the edits the commands make."""

    def __init__(self, system: str | None = None, keep_history: bool = True) -> None:
        self.system = system or None
        self.keep_history = keep_history
        self.history: list[Message] = []

    @property
    def messages(self) -> list[Message]:
        """What the model is sent: the system message, then the history."""
        head = [{"role": "system", "content": self.system}] if self.system else []
        return head + [dict(m) for m in self.history]

    @property
    def num_turns(self) -> int:
        return sum(1 for m in self.history if m["role"] == "user")

    def add_user(self, text: str) -> None:
        """Start a turn; without history, the earlier turns go first."""
        if not self.keep_history:
            self.history = []
        self.history.append({"role": "user", "content": text})

    def add_assistant(self, text: str) -> None:
        self.history.append({"role": "assistant", "content": text})

    def reset(self) -> None:
        """Forget every turn; the system message stays."""
        self.history = []

    def remove_last_exchange(self) -> bool:
        """Drop the last user message and everything after it; False when there is none."""
        for i in range(len(self.history) - 1, -1, -1):
            if self.history[i]["role"] == "user":
                del self.history[i:]
                return True
        return False

    def prepare_regen(self) -> bool:
        """Drop the answers after the last user message so it can be answered again."""
        while self.history and self.history[-1]["role"] != "user":
            self.history.pop()
        return bool(self.history)

    def drop_oldest_turn(self) -> bool:
        """Drop the first turn to make room, never the last user message; False when nothing is left to drop."""
        users = [i for i, m in enumerate(self.history) if m["role"] == "user"]
        if len(users) < 2:
            return False
        del self.history[: users[1]]
        return True

    def save(self, path: str | Path) -> int:
        """Write the messages (system included) as a JSON array; returns how many."""
        messages = self.messages
        try:
            Path(path).write_text(json.dumps(messages, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
        except OSError as exc:
            raise ChatError(f"cannot write {path}: {exc.strerror}") from None
        return len(messages)

    def load(self, path: str | Path) -> int:
        """Replace the conversation with the messages of a JSON file; returns how many."""
        messages = read_messages(path)
        if messages and messages[0]["role"] == "system":
            self.system = messages[0]["content"] or None
            messages = messages[1:]
        self.history = messages
        return len(self.messages)


def read_messages(path: str | Path) -> list[Message]:
    """A JSON array of {"role", "content"} objects, checked; ChatError naming the bad entry."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise ChatError(f"cannot read {path}: {exc.strerror}") from None
    except ValueError as exc:
        raise ChatError(f"{path} is not JSON: {exc}") from None
    if not isinstance(data, list):
        raise ChatError(f"{path}: expected a JSON array of messages")
    messages = []
    for i, item in enumerate(data):
        if not isinstance(item, dict) or item.get("role") not in _ROLES or not isinstance(item.get("content"), str):
            raise ChatError(f"{path}: message {i} must be {{\"role\": system|user|assistant, \"content\": string}}")
        if item["role"] == "system" and i > 0:
            raise ChatError(f"{path}: message {i}: only the first message may be a system message")
        messages.append({"role": item["role"], "content": item["content"]})
    return messages
