"""The reasoning-parser interface: one answer's text split into reasoning and content as it streams."""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import ClassVar


@dataclass
class ReasoningDelta:
    """What one `feed`/`finish` produced."""

    reasoning: str = ""
    content: str = ""


class ReasoningParser(abc.ABC):
    """Splits one answer into reasoning and content, incrementally. One instance per choice.

    `prompt` is the rendered prompt: a template that opens the reasoning itself (DeepSeek-R1 ends
    the prompt with `<think>`) makes the answer start inside it.
    """

    name: ClassVar[str]
    # Special tokens the format is written with, written into the text for it (see ToolParser).
    special_tokens: ClassVar[tuple[str, ...]] = ()

    def __init__(self, prompt: str) -> None:
        self.prompt = prompt

    @abc.abstractmethod
    def feed(self, text: str) -> ReasoningDelta:
        """Take the next piece of the answer; return what is now certain."""

    @abc.abstractmethod
    def finish(self) -> ReasoningDelta:
        """The answer ended: flush what was held back."""

    @classmethod
    @abc.abstractmethod
    def detect(cls, chat_template: str) -> bool:
        """Whether a chat template is that of a model writing this format."""
