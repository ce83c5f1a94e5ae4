"""`<think>...</think>` reasoning (Qwen3, QwQ, DeepSeek-R1): the text between the tags is the
reasoning, the rest the content. The start tag may be the model's first output or the end of the
prompt (then the answer starts inside the reasoning); an answer without it is all content."""

from __future__ import annotations

from llmserve.reasoning.base import ReasoningDelta, ReasoningParser
from llmserve.tool_parsers.text import partial_suffix

START, END = "<think>", "</think>"


class ThinkReasoningParser(ReasoningParser):
    name = "think"

    def __init__(self, prompt: str) -> None:
        super().__init__(prompt)
        self._mode = "reasoning" if prompt.rstrip().endswith(START) else "start"
        self._buffer = ""
        self._strip_next = False  # the blank line after </think> is layout, not content

    def feed(self, text: str) -> ReasoningDelta:
        self._buffer += text
        out = ReasoningDelta()
        if self._mode == "start":
            head = self._buffer.lstrip()
            if not head or (START.startswith(head) and head != START):
                return out
            if head.startswith(START):
                self._mode, self._buffer = "reasoning", head[len(START):]
            else:
                self._mode = "content"
        if self._mode == "reasoning":
            at = self._buffer.find(END)
            if at < 0:
                cut = len(self._buffer) - partial_suffix(self._buffer, END)
                out.reasoning, self._buffer = self._buffer[:cut], self._buffer[cut:]
                return out
            out.reasoning = self._buffer[:at]
            self._buffer = self._buffer[at + len(END):]
            self._mode, self._strip_next = "content", True
        if self._strip_next:
            self._buffer = self._buffer.lstrip()
            if not self._buffer:
                return out
            self._strip_next = False
        out.content, self._buffer = out.content + self._buffer, ""
        return out

    def finish(self) -> ReasoningDelta:
        held, self._buffer = self._buffer, ""
        if self._mode == "reasoning":
            return ReasoningDelta(reasoning=held)
        return ReasoningDelta(content="" if self._strip_next else held)

    @classmethod
    def detect(cls, chat_template: str) -> bool:
        return START in chat_template and END in chat_template
