"""Reasoning parsers: one module per way models mark their thinking, chosen by name (worker
`reasoning_parser`) or from the chat template; the reasoning goes to `reasoning_content`."""

from __future__ import annotations

from llmserve.reasoning.base import ReasoningDelta, ReasoningParser
from llmserve.reasoning.harmony import HarmonyReasoningParser
from llmserve.reasoning.think import ThinkReasoningParser

REASONING_PARSERS: dict[str, type[ReasoningParser]] = {
    ThinkReasoningParser.name: ThinkReasoningParser,
    HarmonyReasoningParser.name: HarmonyReasoningParser,
}


def reasoning_parser_class(name: str, chat_template: str) -> type[ReasoningParser] | None:
    """The parser named `name`, else ("") the first the template matches, else None (no split)."""
    if name:
        return REASONING_PARSERS[name]
    return next((cls for cls in REASONING_PARSERS.values() if cls.detect(chat_template)), None)


__all__ = ["REASONING_PARSERS", "ReasoningDelta", "ReasoningParser", "reasoning_parser_class"]
