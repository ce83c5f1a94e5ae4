"""Hermes-style tool calls, as Qwen2.5, Qwen3 and Hermes models write them:

    <tool_call>
    {"name": "get_weather", "arguments": {"city": "Paris"}}
    </tool_call>

several in a row for parallel calls, possibly after some content.
"""

from __future__ import annotations

from typing import Any

from llmserve.tool_parsers.base import FunctionTool, ParseDelta, ToolParser
from llmserve.tool_parsers.json_call import JsonCallReader
from llmserve.tool_parsers.text import BlankHold, partial_suffix

START, END = "<tool_call>", "</tool_call>"


class HermesToolParser(ToolParser):
    name = "hermes"

    def __init__(self) -> None:
        self._buffer = ""
        self._call: JsonCallReader | None = None
        self._num_calls = 0
        self._text = BlankHold()

    def feed(self, text: str) -> ParseDelta:
        self._buffer += text
        out = ParseDelta()
        while self._buffer:
            if self._call is None:
                at = self._buffer.find(START)
                if at < 0:  # text, perhaps ending with the start of a tag: that part waits
                    keep = partial_suffix(self._buffer, START)
                    cut = len(self._buffer) - keep
                    out.content += self._text.take(self._buffer[:cut], self._num_calls > 0)
                    self._buffer = self._buffer[cut:]
                    break
                out.content += self._text.take(self._buffer[:at], self._num_calls > 0, before_call=True)
                self._buffer = self._buffer[at + len(START):]
                self._call = JsonCallReader(self._num_calls)
            if not self._read_call(out):
                break
        return out

    def _read_call(self, out: ParseDelta) -> bool:
        """Advance the open call; False when it needs more text."""
        call = self._call
        assert call is not None
        if call.end is None:
            out.tool_calls += call.feed(self._buffer)
            self._buffer = "" if call.end is None else call.text[call.end:]
            if call.end is None:
                return False
        rest = self._buffer.lstrip()
        if not rest or (END.startswith(rest) and rest != END):
            self._buffer = rest
            return False  # the end tag may still be coming
        self._buffer = rest[len(END):] if rest.startswith(END) else rest
        self._close_call(out)
        return True

    def _close_call(self, out: ParseDelta) -> None:
        call, self._call = self._call, None
        assert call is not None
        if call.has_header:
            self._num_calls += 1
        else:  # not a call after all: the text stays the answer's
            out.content += START + call.text[: call.end]

    def finish(self) -> ParseDelta:
        out = ParseDelta()
        if self._call is not None and not self._call.has_header:
            out.content += START + self._call.text
        elif self._call is None:
            out.content += self._text.take(self._buffer, self._num_calls > 0) + self._text.flush(self._num_calls > 0)
        self._buffer = ""
        self._call = None
        return out

    @classmethod
    def detect(cls, chat_template: str) -> bool:
        return START in chat_template

    @classmethod
    def forced_format(cls, tools: list[FunctionTool], parallel: bool) -> dict[str, Any]:
        # No newlines around the JSON: JSON output is kept free of raw control bytes (see
        # llmserve/structured/compiler.py), and the parser reads both spellings.
        tags = [{"type": "tag", "begin": f'{START}{{"name": "{tool.name}", "arguments": ',
                 "content": {"type": "json_schema", "json_schema": tool.parameters_schema, "max_whitespace_cnt": 1},
                 "end": "}" + END} for tool in tools]
        return {"type": "tags_with_separator", "tags": tags, "separator": "", "at_least_one": True,
                "stop_after_first": not parallel}
