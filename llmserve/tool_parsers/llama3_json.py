"""Llama 3.1-3.3 JSON tool calls: the whole answer is one or more objects separated by `;`,

    {"name": "get_weather", "parameters": {"city": "Paris"}}

optionally after `<|python_tag|>`. An answer that does not start with `{` is plain content.
"""

from __future__ import annotations

from typing import Any

from llmserve.tool_parsers.base import FunctionTool, ParseDelta, ToolParser
from llmserve.tool_parsers.json_call import JsonCallReader

PYTHON_TAG = "<|python_tag|>"


class Llama3JsonToolParser(ToolParser):
    name = "llama3_json"

    def __init__(self) -> None:
        self._buffer = ""
        self._mode = "start"  # start -> calls | content
        self._call: JsonCallReader | None = None
        self._num_calls = 0

    def feed(self, text: str) -> ParseDelta:
        self._buffer += text
        out = ParseDelta()
        if self._mode == "start":
            head = self._buffer.lstrip()
            if head.startswith(PYTHON_TAG):
                head = head[len(PYTHON_TAG):].lstrip()
            if not head or PYTHON_TAG.startswith(head):
                return out
            self._mode = "calls" if head.startswith("{") else "content"
            if self._mode == "calls":
                self._buffer = head
        if self._mode == "content":
            out.content, self._buffer = self._buffer, ""
            return out
        while self._buffer:
            if self._call is None:
                rest = self._buffer.lstrip().lstrip(";").lstrip()
                if not rest:
                    self._buffer = ""
                    break
                if not rest.startswith("{"):  # text after the calls: content
                    self._mode = "content"
                    out.content, self._buffer = rest, ""
                    break
                self._buffer = rest
                self._call = JsonCallReader(self._num_calls)
            call = self._call
            out.tool_calls += call.feed(self._buffer)
            if call.end is None:
                self._buffer = ""
                break
            self._buffer = call.text[call.end:]
            self._num_calls += call.has_header
            self._call = None
        return out

    def finish(self) -> ParseDelta:
        out = ParseDelta()
        if self._mode == "start":
            out.content = self._buffer
        elif self._call is not None and not self._call.has_header and self._num_calls == 0:
            out.content = self._call.text
        self._buffer = ""
        return out

    @classmethod
    def detect(cls, chat_template: str) -> bool:
        return PYTHON_TAG in chat_template or '"parameters"' in chat_template

    @classmethod
    def forced_format(cls, tools: list[FunctionTool], parallel: bool) -> dict[str, Any]:
        tags = [{"type": "tag", "begin": f'{{"name": "{tool.name}", "parameters": ',
                 "content": {"type": "json_schema", "json_schema": tool.parameters_schema, "max_whitespace_cnt": 1},
                 "end": "}"} for tool in tools]
        return {"type": "tags_with_separator", "tags": tags, "separator": "; ", "at_least_one": True,
                "stop_after_first": not parallel}
