"""gpt-oss harmony reasoning: the analysis channel is the reasoning, the final channel (and
recipient-less commentary, the model's preambles) the content. A message addressed to a tool is
passed on as harmony text, for the harmony tool parser to read (`tool_parsers/harmony.py`)."""

from __future__ import annotations

from typing import ClassVar

from llmserve.reasoning.base import ReasoningDelta, ReasoningParser
from llmserve.tool_parsers.harmony_messages import MARKERS, HarmonyMessages, Piece


class HarmonyReasoningParser(ReasoningParser):
    name = "harmony"
    special_tokens: ClassVar[tuple[str, ...]] = MARKERS

    def __init__(self, prompt: str) -> None:
        super().__init__(prompt)
        self._messages = HarmonyMessages()
        self._mode = "content"  # the open message's part: reasoning | content | call

    def feed(self, text: str) -> ReasoningDelta:
        return self._take(self._messages.feed(text))

    def finish(self) -> ReasoningDelta:
        return self._take(self._messages.finish())

    def _take(self, pieces: list[Piece]) -> ReasoningDelta:
        out = ReasoningDelta()
        for piece in pieces:
            if piece.header:
                self._mode = "reasoning" if piece.channel == "analysis" else "content"
                if piece.recipient is not None:
                    self._mode = "call"
                    out.content += f"<|start|>assistant<|channel|>{piece.channel} to={piece.recipient}<|message|>"
            elif piece.end:
                out.content += "<|call|>" if self._mode == "call" else ""
                self._mode = "content"
            elif self._mode == "reasoning":
                out.reasoning += piece.text
            else:
                out.content += piece.text
        return out

    @classmethod
    def detect(cls, chat_template: str) -> bool:
        return "<|channel|>" in chat_template
