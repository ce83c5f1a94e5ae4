"""One choice's answer split as it streams: reasoning (`reasoning_content`), content and tool calls.

The reasoning parser reads the raw text first; what it passes on as content goes through the tool
parser. A whole answer is the same splitter fed once, so streamed and non-streamed answers agree.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from llmserve.reasoning import ReasoningParser
from llmserve.tool_parsers import ToolCallDelta, ToolParser


@dataclass
class AnswerDelta:
    reasoning: str = ""
    content: str = ""
    tool_calls: list[ToolCallDelta] = field(default_factory=list)


class AnswerSplitter:
    """Reasoning and tool-call parsing of one choice (either may be absent)."""

    def __init__(self, reasoning: type[ReasoningParser] | None, tools: type[ToolParser] | None, prompt_tail: str,
                 parallel: bool = True) -> None:
        self._reasoning = reasoning(prompt_tail) if reasoning is not None else None
        self._tools = tools() if tools is not None else None
        self._parallel = parallel
        self.num_calls = 0

    @property
    def is_plain(self) -> bool:
        return self._reasoning is None and self._tools is None

    @property
    def splits_reasoning(self) -> bool:
        return self._reasoning is not None

    def feed(self, text: str) -> AnswerDelta:
        return self._split(text, final=False)

    def finish(self) -> AnswerDelta:
        return self._split("", final=True)

    def _split(self, text: str, final: bool) -> AnswerDelta:
        out = AnswerDelta()
        if self._reasoning is not None:
            first = self._reasoning.finish() if final else self._reasoning.feed(text)
            out.reasoning, text = first.reasoning, first.content
        if self._tools is None:
            out.content = text
            return out
        parsed = self._tools.feed(text) if text else None
        content = parsed.content if parsed is not None else ""
        calls = parsed.tool_calls if parsed is not None else []
        if final:
            rest = self._tools.finish()
            content, calls = content + rest.content, calls + rest.tool_calls
        out.content = content
        # parallel_tool_calls false: the first call is the answer.
        out.tool_calls = [c for c in calls if self._parallel or c.index == 0]
        self.num_calls = max([self.num_calls, *(c.index + 1 for c in out.tool_calls)])
        return out


def whole_answer(splitter: AnswerSplitter, text: str) -> tuple[str | None, str, list[dict[str, Any]]]:
    """A finished answer -> (reasoning or None, content, OpenAI `tool_calls` objects)."""
    first = splitter.feed(text)
    last = splitter.finish()
    reasoning = first.reasoning + last.reasoning
    calls: dict[int, dict[str, Any]] = {}
    for part in first.tool_calls + last.tool_calls:
        call = calls.setdefault(part.index, {"id": part.id, "type": "function",
                                             "function": {"name": part.name, "arguments": ""}})
        call["function"]["arguments"] += part.arguments
    return (reasoning if splitter.splits_reasoning and reasoning else None), first.content + last.content, [calls[i] for i in sorted(calls)]


def tool_call_chunks(deltas: list[ToolCallDelta]) -> list[dict[str, Any]]:
    """`delta.tool_calls` entries: the header (id, type, name) once per call, then arguments."""
    out = []
    for part in deltas:
        entry: dict[str, Any] = {"index": part.index}
        if part.id is not None:
            entry.update(id=part.id, type="function", function={"name": part.name, "arguments": part.arguments})
        else:
            entry["function"] = {"arguments": part.arguments}
        out.append(entry)
    return out
