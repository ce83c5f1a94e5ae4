"""What every tool-call parser shares: the function tools of a request, the deltas a parser emits,
and the parser interface (one class per model output format, chosen by name in `__init__.py`).

A parser reads a model's answer as it streams (`feed` per text delta, `finish` at the end) and
splits it into content and tool calls. A non-streamed answer is the same parser fed once, so the
concatenated stream always equals the whole answer.
"""

from __future__ import annotations

import abc
import uuid
from dataclasses import dataclass, field
from typing import Any, ClassVar


@dataclass(frozen=True)
class FunctionTool:
    """One `{"type": "function", "function": {...}}` entry of a request's `tools`."""

    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None

    @property
    def parameters_schema(self) -> dict[str, Any]:
        """The arguments' JSON schema (OpenAI allows none: then any object)."""
        return self.parameters if self.parameters is not None else {"type": "object"}


@dataclass
class ToolCallDelta:
    """Part of one tool call: its header (id and name) once, then pieces of its arguments."""

    index: int
    arguments: str = ""
    id: str | None = None
    name: str | None = None


@dataclass
class ParseDelta:
    """What one `feed`/`finish` produced: content text and tool-call parts, in order of arrival."""

    content: str = ""
    tool_calls: list[ToolCallDelta] = field(default_factory=list)

    def extend(self, other: ParseDelta) -> None:
        self.content += other.content
        self.tool_calls += other.tool_calls


def new_call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


class ToolParser(abc.ABC):
    """Splits one answer into content and tool calls, incrementally. One instance per choice."""

    name: ClassVar[str]
    # Special tokens the format is written with: the detokenizer writes these into the text
    # (it drops every other special token).
    special_tokens: ClassVar[tuple[str, ...]] = ()

    @abc.abstractmethod
    def feed(self, text: str) -> ParseDelta:
        """Take the next piece of the answer; return what is now certain."""

    @abc.abstractmethod
    def finish(self) -> ParseDelta:
        """The answer ended: flush whatever was held back."""

    @classmethod
    @abc.abstractmethod
    def detect(cls, chat_template: str) -> bool:
        """Whether a chat template teaches the model this parser's format."""

    @classmethod
    @abc.abstractmethod
    def forced_format(cls, tools: list[FunctionTool], parallel: bool) -> dict[str, Any]:
        """An xgrammar structural-tag format that makes the answer tool calls only, each naming one
        of `tools` with arguments valid for its schema (for `tool_choice` "required" or named)."""


def collect(parser: ToolParser, text: str) -> tuple[str, list[dict[str, Any]]]:
    """A whole answer -> (content, OpenAI `tool_calls` objects)."""
    delta = parser.feed(text)
    delta.extend(parser.finish())
    calls: dict[int, dict[str, Any]] = {}
    for part in delta.tool_calls:
        call = calls.setdefault(part.index, {"id": part.id, "type": "function",
                                             "function": {"name": part.name, "arguments": ""}})
        call["function"]["arguments"] += part.arguments
    return delta.content, [calls[i] for i in sorted(calls)]
