"""gpt-oss harmony tool calls: a message on the commentary channel addressed to a function,

    <|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>{"city": "Paris"}<|call|>

is a call (its body the arguments, streamed as they arrive); final-channel and recipient-less
commentary (preamble) messages are content, analysis messages are the reasoning parser's (not
content). Messages are read by `harmony_messages.py` with `openai-harmony`.
"""

from __future__ import annotations

from typing import Any, ClassVar

from llmserve.tool_parsers.base import FunctionTool, ParseDelta, ToolCallDelta, ToolParser, new_call_id
from llmserve.tool_parsers.harmony_messages import MARKERS, HarmonyMessages, Piece

FUNCTIONS = "functions."


class HarmonyToolParser(ToolParser):
    name = "harmony"
    special_tokens: ClassVar[tuple[str, ...]] = MARKERS

    def __init__(self) -> None:
        self._messages = HarmonyMessages()
        self._mode = "content"  # the open message's part of the answer: content | call | hidden
        self._num_calls = 0

    def feed(self, text: str) -> ParseDelta:
        return self._take(self._messages.feed(text))

    def finish(self) -> ParseDelta:
        return self._take(self._messages.finish())

    def _take(self, pieces: list[Piece]) -> ParseDelta:
        out = ParseDelta()
        for piece in pieces:
            if piece.header:
                self._mode = self._open(piece, out)
            elif piece.end:
                self._num_calls += self._mode == "call"
                self._mode = "content"
            elif self._mode == "call":
                out.tool_calls.append(ToolCallDelta(self._num_calls, piece.text))
            elif self._mode == "content":
                out.content += piece.text
        return out

    def _open(self, header: Piece, out: ParseDelta) -> str:
        if header.recipient is not None and header.recipient.startswith(FUNCTIONS):
            out.tool_calls.append(ToolCallDelta(self._num_calls, "", new_call_id(), header.recipient[len(FUNCTIONS):]))
            return "call"
        return "hidden" if header.channel == "analysis" else "content"

    @classmethod
    def detect(cls, chat_template: str) -> bool:
        return "<|channel|>" in chat_template

    @classmethod
    def forced_format(cls, tools: list[FunctionTool], parallel: bool) -> dict[str, Any]:
        # Forced as text (a grammar works on ordinary tokens); the parser reads it either way.
        tags = [{"type": "tag", "begin": f"<|channel|>commentary to={FUNCTIONS}{tool.name} <|constrain|>json<|message|>",
                 "content": {"type": "json_schema", "json_schema": tool.parameters_schema, "max_whitespace_cnt": 1},
                 "end": "<|call|>"} for tool in tools]
        return {"type": "tags_with_separator", "tags": tags, "separator": "<|start|>assistant", "at_least_one": True,
                "stop_after_first": not parallel}
