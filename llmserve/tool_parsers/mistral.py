"""Mistral tool calls, both spellings Mistral's tokenizers have used:

    [TOOL_CALLS] [{"name": "get_weather", "arguments": {"city": "Paris"}}, {...}]   (v3, v7)
    [TOOL_CALLS]get_weather[ARGS]{"city": "Paris"}[TOOL_CALLS]other[ARGS]{}          (v11 and later)

optionally after content, and in the newer spelling with `[CALL_ID]id` before `[ARGS]`. The
markers are special tokens in Mistral's tokenizers, which the detokenizer drops unless the parser
asks for them: `special_tokens` names the ones this format needs written into the text.
"""

from __future__ import annotations

import re
from typing import Any, ClassVar

from llmserve.tool_parsers.base import FunctionTool, ParseDelta, ToolCallDelta, ToolParser, new_call_id
from llmserve.tool_parsers.json_call import JsonCallReader, _Scanner
from llmserve.tool_parsers.text import BlankHold, partial_suffix

CALLS, ARGS, CALL_ID = "[TOOL_CALLS]", "[ARGS]", "[CALL_ID]"
_NAME = re.compile(r"[A-Za-z0-9_.\-]{1,64}")
_NAME_START = re.compile(r"[A-Za-z0-9_.\-]{0,64}\s*")  # what may still become `name[ARGS]`


class MistralToolParser(ToolParser):
    name = "mistral"
    special_tokens: ClassVar[tuple[str, ...]] = (CALLS, ARGS, CALL_ID)

    def __init__(self) -> None:
        self._buffer = ""
        self._mode = "content"  # content -> marker -> (array -> call)* | name -> args; back to content
        self._marker_text = ""  # everything since [TOOL_CALLS], given back as content if no call follows
        self._call: JsonCallReader | None = None
        self._args: _Scanner | None = None
        self._opened = False  # the v3 array's `[` has been read (or was missing)
        self._num_calls = 0
        self._text = BlankHold()

    def feed(self, text: str) -> ParseDelta:
        self._buffer += text
        out = ParseDelta()
        step = {"content": self._content, "marker": self._marker, "array": self._array, "name": self._name,
                "args": self._arguments}
        while self._buffer and step[self._mode](out):
            pass
        return out

    def _content(self, out: ParseDelta) -> bool:
        at = self._buffer.find(CALLS)
        if at < 0:  # text, perhaps ending with the start of the marker: that part waits
            cut = len(self._buffer) - partial_suffix(self._buffer, CALLS)
            out.content += self._text.take(self._buffer[:cut], self._num_calls > 0)
            self._buffer = self._buffer[cut:]
            return False
        out.content += self._text.take(self._buffer[:at], self._num_calls > 0, before_call=True)
        self._buffer = self._buffer[at + len(CALLS):]
        self._mode, self._marker_text, self._opened = "marker", CALLS, False
        return True

    def _marker(self, out: ParseDelta) -> bool:
        """Just after [TOOL_CALLS]: a JSON array (or object) of calls, or a function name."""
        rest = self._buffer.lstrip()
        if not rest:
            self._marker_text += self._buffer
            self._buffer = ""
            return False
        self._marker_text += self._buffer[: len(self._buffer) - len(rest)]
        self._buffer = rest
        self._mode = "array" if rest[0] in "[{" else "name"
        return True

    def _array(self, out: ParseDelta) -> bool:
        """v3: call objects in a JSON array (its `[` may be missing); `]` or text that is no call ends it."""
        if self._call is None:
            rest = self._buffer.lstrip()
            if not self._opened:
                self._opened = True
                if rest.startswith("["):
                    self._marker_text += self._buffer[: len(self._buffer) - len(rest) + 1]
                    rest = rest[1:]
            rest = rest.lstrip().lstrip(",").lstrip()
            if not rest:
                self._buffer = ""
                return False
            self._mode = "content"
            if rest.startswith("]"):
                self._buffer = rest[1:]
            elif rest.startswith("{"):
                self._mode, self._buffer = "array", rest
                self._call = JsonCallReader(self._num_calls)
            else:  # not a call: whatever the marker began is plain text
                out.content += self._text.take(self._marker_text, self._num_calls > 0)
                self._buffer = rest
            if self._call is None:
                self._marker_text = ""
                return True
        call = self._call
        out.tool_calls += call.feed(self._buffer)
        if call.end is None:
            self._buffer = ""
            return False
        self._buffer = call.text[call.end:]
        self._call = None
        if call.has_header:
            self._num_calls += 1
        else:  # not a call after all: the text stays the answer's
            out.content += self._text.take(self._marker_text + call.text[: call.end], self._num_calls > 0)
            self._mode = "content"
        self._marker_text = ""
        return True

    def _name(self, out: ParseDelta) -> bool:
        """v11: `name[ARGS]` or `name[CALL_ID]id[ARGS]`; the header goes out at [ARGS]."""
        at = self._buffer.find(ARGS)
        name, has_id, call_id = (self._buffer if at < 0 else self._buffer[:at]).partition(CALL_ID)
        if at < 0 and not has_id:  # the end may be the start of a marker
            name = name[: len(name) - max(partial_suffix(name, ARGS), partial_suffix(name, CALL_ID))]
        if not (_NAME if at >= 0 else _NAME_START).fullmatch(name.strip() if at >= 0 else name):
            # no function name here: the marker and what followed it are content
            out.content += self._text.take(self._marker_text, self._num_calls > 0)
            self._mode = "content"
            return True
        if at < 0:
            return False
        out.tool_calls.append(ToolCallDelta(self._num_calls, "", call_id.strip() or new_call_id(), name.strip()))
        self._buffer = self._buffer[at + len(ARGS):]
        self._mode, self._args = "args", _Scanner()
        return True

    def _arguments(self, out: ParseDelta) -> bool:
        """The arguments' JSON, streamed until its value closes."""
        scanner = self._args
        assert scanner is not None
        if not scanner.started:
            self._buffer = self._buffer.lstrip()
            if not self._buffer:
                return False
        taken, done = 0, False
        while taken < len(self._buffer) and not done:
            done = scanner.step(self._buffer[taken])
            taken += 1
        out.tool_calls.append(ToolCallDelta(self._num_calls, self._buffer[:taken]))
        self._buffer = self._buffer[taken:]
        if done:
            self._num_calls += 1
            self._mode, self._args = "content", None
        return done

    def finish(self) -> ParseDelta:
        out = ParseDelta()
        if self._mode == "content":
            out.content += self._text.take(self._buffer, self._num_calls > 0) + self._text.flush(self._num_calls > 0)
        elif self._mode in ("marker", "name") or (self._mode == "array" and self._num_calls == 0 and
                                                  (self._call is None or not self._call.has_header)):
            unread = self._call.text if self._call is not None else self._buffer
            out.content += self._text.take(self._marker_text + unread, False) + self._text.flush(False)
        self._buffer = ""
        self._call = None
        return out

    @classmethod
    def detect(cls, chat_template: str) -> bool:
        return CALLS in chat_template

    @classmethod
    def forced_format(cls, tools: list[FunctionTool], parallel: bool) -> dict[str, Any]:
        # The newer spelling: one marker per call, so parallel calls are tags in a row. It is
        # forced as text (a grammar works on ordinary tokens); the parser reads it either way.
        tags = [{"type": "tag", "begin": f"{CALLS}{tool.name}{ARGS}",
                 "content": {"type": "json_schema", "json_schema": tool.parameters_schema, "max_whitespace_cnt": 1},
                 "end": ""} for tool in tools]
        return {"type": "tags_with_separator", "tags": tags, "separator": "", "at_least_one": True,
                "stop_after_first": not parallel}
