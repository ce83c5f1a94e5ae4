"""One JSON tool call, `{"name": "...", "arguments": {...}}`, read as it streams.

The name is sent as soon as its string is complete; the arguments' raw text is sent as it arrives
(only what surely belongs to the value: a scanner follows strings, escapes and nesting), so a
client sees the arguments grow. An object in another key order, or arguments given as a JSON
string, is read whole when it closes.
"""

from __future__ import annotations

import json
import re

from llmserve.tool_parsers.base import ToolCallDelta, new_call_id

_NAME = re.compile(r'\s*\{\s*"name"\s*:\s*"((?:[^"\\]|\\.)*)"')
_ARGS = re.compile(r'\s*,\s*"(?:arguments|parameters)"\s*:\s*')


class _Scanner:
    """Follows JSON nesting and strings one character at a time."""

    def __init__(self) -> None:
        self.depth = 0
        self.in_string = False
        self.escaped = False
        self.started = False

    def step(self, char: str) -> bool:
        """Take one character; True once the value that began at the first one has ended with it."""
        if self.in_string:
            if self.escaped:
                self.escaped = False
            elif char == "\\":
                self.escaped = True
            elif char == '"':
                self.in_string = False
                return self.depth == 0
            return False
        if char == '"':
            self.in_string = True
            self.started = True
        elif char in "{[":
            self.depth += 1
            self.started = True
        elif char in "}]":
            self.depth -= 1
            return self.depth == 0
        return False


class JsonCallReader:
    """Reads one tool call object; `feed` returns its parts, `end` is set once the object closed."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.text = ""
        self.end: int | None = None  # offset in `text` just past the closing brace
        self._outer = _Scanner()
        self._scanned = 0
        self._id = new_call_id()
        self._name: str | None = None
        self._args_start: int | None = None
        self._args = _Scanner()
        self._args_scanned = 0
        self._args_done = False
        self._streams_args = False

    @property
    def has_header(self) -> bool:
        return self._name is not None

    def feed(self, text: str) -> list[ToolCallDelta]:
        if self.end is not None:
            return []
        self.text += text
        self._scan_outer()
        limit = self.end if self.end is not None else len(self.text)
        deltas = self._stream_parts(limit)
        if self.end is not None:
            deltas += self._close()
        return deltas

    def _scan_outer(self) -> None:
        while self._scanned < len(self.text) and self.end is None:
            char = self.text[self._scanned]
            self._scanned += 1
            if not self._outer.started and char.isspace():
                continue
            if self._outer.step(char) and self._outer.started:
                self.end = self._scanned

    def _stream_parts(self, limit: int) -> list[ToolCallDelta]:
        deltas = []
        if self._name is None:
            match = _NAME.match(self.text, 0, limit)
            if match is None:
                return []
            try:
                self._name = json.loads(f'"{match.group(1)}"')
            except json.JSONDecodeError:
                return []
            deltas.append(ToolCallDelta(self.index, "", self._id, self._name))
            self._args_scanned = match.end()
        if self._args_start is None:
            match = _ARGS.match(self.text, self._args_scanned, limit)
            if match is None or match.end() == limit:  # the value's first character is not here yet
                return deltas
            self._args_start = self._args_scanned = match.end()
            self._streams_args = self.text[self._args_start] in "{["
        if self._streams_args and not self._args_done:
            start = self._args_scanned
            while self._args_scanned < limit and not self._args_done:
                self._args_done = self._args.step(self.text[self._args_scanned])
                self._args_scanned += 1
            if self._args_scanned > start:
                deltas.append(ToolCallDelta(self.index, self.text[start:self._args_scanned]))
        return deltas

    def _close(self) -> list[ToolCallDelta]:
        """The object closed: whatever could not be streamed is read from the whole object."""
        if self._name is not None and self._streams_args and self._args_done:
            return []
        try:
            whole = json.loads(self.text[: self.end])
        except json.JSONDecodeError:
            whole = None
        if not isinstance(whole, dict) or not isinstance(whole.get("name"), str):
            return []
        args = whole.get("arguments", whole.get("parameters", {}))
        text = args if isinstance(args, str) else json.dumps(args, ensure_ascii=False)
        deltas = [] if self._name is not None else [ToolCallDelta(self.index, "", self._id, whole["name"])]
        self._name = whole["name"]
        if self._streams_args:  # streamed part of a value that never closed: nothing sensible to add
            return deltas
        return deltas + [ToolCallDelta(self.index, text)]
